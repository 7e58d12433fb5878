"""`RayTrainer`: the training loop of `cluster.runtime: ray`, one event loop for sync and async.

The driver (this process) owns the sampler, the advantage computation, the buffer, versions,
metrics and checkpoints; the actors own the heavy state (engines, learner shards, reward
processes). Each turn of the loop:

1. plan: create generation requests (units) for every batch b <= learner version + max_staleness;
2. schedule: an idle worker first loads the newest published weights, then takes the oldest unit
   its version may generate (version >= b - max_staleness);
3. train: when batch `version` is complete, drop groups staler than max_staleness, compute
   advantages, shard the rows over the learner ranks, train; rank 0 publishes the new weights;
4. wait for whichever call finishes next (generation, scoring, sync, training) and handle it:
   a dead worker's request goes back to the queue and is regenerated; a sync past its deadline
   raises `WeightSyncError` naming the engine; a dead learner raises `LearnerCrashed` pointing at
   the last complete checkpoint (`train.resume: auto` continues from it).

With max_staleness 0 this is synchronous training: batch b is planned only once the learner has
reached version b, so generation and training never overlap.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlpost.config.loader import dump_config
from rlpost.config.schema import RLPostConfig
from rlpost.runtime.buffer import (
    BatchState,
    RolloutBuffer,
    UnitResult,
    WorkUnit,
    may_generate,
    merge_reward_metrics,
    plannable,
)
from rlpost.runtime.transport import WeightSyncError

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
RESTART_POLL_SECONDS = 2.0


class LearnerCrashed(RuntimeError):
    """A learner rank died; the run stops (the last complete checkpoint is intact)."""


class RuntimeHooks:
    """Callbacks for tests and tools (no-ops by default)."""

    def on_dispatch(self, trainer: RayTrainer, worker: int, unit: WorkUnit) -> None:
        """A unit was sent to rollout worker `worker`."""

    def on_start(self, trainer: RayTrainer) -> None:
        """Actors are up (and a checkpoint loaded); the loop starts next."""

    def on_train_start(self, trainer: RayTrainer, step: int) -> None:
        """The learner ranks were sent batch `step` (0-based)."""

    def on_step(self, trainer: RayTrainer, step: int, metrics: dict[str, float]) -> None:
        """Step `step` (1-based: the learner version reached) was logged."""


@dataclass
class WorkerSlot:
    index: int
    actor: Any
    version: int = 0
    task: str | None = None
    """None (idle), `generate`, `sync`, `restart` (asking a restarted actor for its state), `down` (waiting for Ray to restart it)."""
    ref: Any = None
    unit: WorkUnit | None = None
    started: float = 0.0
    target_version: int = 0
    restarts: int = 0
    alive: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    down_since: float | None = None
    retry_at: float = 0.0

    def describe(self) -> str:
        where = f"pid {self.info.get('pid', '?')} on node {self.info.get('node_ip', '?')}"
        return f"rollout worker {self.index} ({self.info.get('engine', 'engine')}, {where})"


@dataclass
class Training:
    refs: list[Any]
    batch_index: int
    num_groups: int
    batch: Any
    targets: Any
    metrics: dict[str, float]
    started: float


@dataclass
class Clock:
    """Busy time of the rollout workers and the learner since the last step (and over the run)."""

    rollout: float = 0.0
    reward: float = 0.0
    learner: float = 0.0
    sync: float = 0.0
    run_rollout: float = 0.0
    run_learner: float = 0.0

    def add(self, kind: str, seconds: float) -> None:
        setattr(self, kind, getattr(self, kind) + seconds)
        if kind in ("rollout", "learner"):
            setattr(self, f"run_{kind}", getattr(self, f"run_{kind}") + seconds)

    def reset_step(self) -> None:
        self.rollout = self.reward = self.learner = self.sync = 0.0


class RayTrainer:
    """One run of `cluster.runtime: ray`. `fit()` trains to `train.steps` and returns the last metrics."""

    def __init__(self, config: RLPostConfig, engine_factory=None, hooks: RuntimeHooks | None = None):
        from transformers import AutoTokenizer

        from rlpost.data import build_prompts, load_rows
        from rlpost.models import resolve_model
        from rlpost.objectives.registry import get_objective
        from rlpost.samplers import build_sampler
        from rlpost.trainer import _seed_everything, config_digest

        check_config(config)
        self.config = config
        self.cluster = config.cluster
        self.k = config.cluster.max_staleness
        self.total_steps = config.train.steps
        self.output_dir = Path(config.train.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(config.train.seed)
        self.model_path = resolve_model(config.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.train_prompts = build_prompts(
            load_rows(config.data.train, config.data.split, data_config=config.data), self.tokenizer, config.data
        ).prompts
        if not self.train_prompts:
            raise ValueError(f"no training prompts left from {config.data.train!r} (all skipped as too long?)")
        self.test_prompts = []
        if config.data.test:
            rows = load_rows(config.data.test, config.data.test_split, data_config=config.data)
            self.test_prompts = build_prompts(rows, self.tokenizer, config.data).prompts
        self.sampler = build_sampler(
            config.sampler, self.train_prompts, prompts_per_step=config.train.prompts_per_step,
            default_n=config.rollout.n, seed=config.train.seed,
        )
        # The driver's objective computes advantages (and filters groups); each learner rank holds its own for the loss.
        self.objective = get_objective(config.objective.name)(config.objective, config.rollout.max_new_tokens)
        self.is_mode = config.cluster.is_mode(config.objective.name)
        self.digest = config_digest(config)
        self.engine_factory = engine_factory
        self.hooks = hooks or RuntimeHooks()
        if self.is_mode != "none" and config.rollout.temperature not in (0.0, 1.0):
            log.warning(
                "cluster.is_correction=%s with rollout.temperature=%s: engines report log-probs before temperature "
                "and the learner after it, so the importance weights carry that gap too", self.is_mode,
                config.rollout.temperature,
            )

        # run state
        self.version = 0
        self.start_step = 0
        self.next_plan = 0
        self.unit_ids = 0
        self.pending: collections.deque[WorkUnit] = collections.deque()
        self.batches: dict[int, BatchState] = {}
        self.scoring: dict[Any, UnitResult] = {}
        self.sampler_snapshots: dict[int, dict] = {}
        self.buffer = RolloutBuffer(self.k)
        self.training: Training | None = None
        self.published = None
        self.published_version: int | None = None
        self.clock = Clock()
        self.restarts_total = 0
        self.regenerated_units = 0
        self.eval_results: list[dict[str, float]] = []
        self.step_times: list[float] = []
        self.workers: list[WorkerSlot] = []
        self.ranks: list[Any] = []
        self.rewards: list[Any] = []
        self.layout = None
        self.metrics_logger = None
        self._reward_turn = 0
        self._broadcast_members: tuple | None = None
        self._broadcast_epoch = 0
        self._weight_meta = None
        self._stop_requested = False
        self._started_ray = False
        self._last_checkpoint: int | None = None

    # ================================================================== start-up

    def start(self) -> None:
        """Connect to Ray and start every actor (`fit` calls this)."""
        import ray

        from rlpost.rollout.common import derive_seed
        from rlpost.runtime.actors import LearnerRank, RewardWorker, RolloutWorker
        from rlpost.runtime.placement import actor_options, actor_threads, connect, make_layout, resolve_device

        cluster = self.cluster
        self._started_ray = connect(cluster)
        self.device = resolve_device(cluster)
        rollout = self.config.rollout
        tp = rollout.vllm.tensor_parallel_size if rollout.engine == "vllm" else 1
        self.layout = make_layout(cluster, tp, self.device)
        started = time.perf_counter()

        learner_cls = ray.remote(LearnerRank)
        self.ranks = [
            learner_cls.options(**actor_options(group, bundle, cluster.learner_cpus, self.layout.learner_gpus, max_restarts=0)).remote(
                rank, cluster.learner_ranks, self.config, self.model_path,
                actor_threads(cluster, cluster.learner_cpus), self.device, cluster.bind_host,
            )
            for rank, (group, bundle) in enumerate(self.layout.learner_groups)
        ]
        self.rank_info = ray.get([rank.info.remote() for rank in self.ranks])
        self._check_loopback("learner ranks", {info["node_ip"] for info in self.rank_info})
        master = ray.get(self.ranks[0].rendezvous.remote())
        setup = [rank.setup.remote(*master) for rank in self.ranks]

        worker_cls = ray.remote(RolloutWorker)
        for index, (group, bundle) in enumerate(self.layout.rollout_groups):
            options = actor_options(
                group, bundle, cluster.rollout_cpus, self.layout.rollout_gpus,
                max_restarts=cluster.max_worker_restarts, max_task_retries=0,
            )
            actor = worker_cls.options(**options).remote(
                index, self.config, self.model_path, derive_seed(self.config.train.seed, index),
                actor_threads(cluster, cluster.rollout_cpus), self.device, self.engine_factory,
            )
            self.workers.append(WorkerSlot(index=index, actor=actor))

        reward_cls = ray.remote(RewardWorker)
        self.rewards = [
            reward_cls.options(num_cpus=cluster.reward_cpus, max_restarts=cluster.max_worker_restarts, max_task_retries=2).remote(
                self.config.reward
            )
            for _ in range(cluster.num_reward_workers)
        ]
        infos = ray.get([slot.actor.info.remote() for slot in self.workers])
        for slot, info in zip(self.workers, infos, strict=True):
            slot.info, slot.version = info, info["version"]
        ray.get(setup)
        if cluster.sync_transport == "nccl":
            nodes = {slot.info["node_ip"] for slot in self.workers} | {self.rank_info[0]["node_ip"]}
            self._check_loopback("learner rank 0 and the engines (sync_transport: nccl)", nodes)
            self._weight_meta = ray.get([rank.weight_meta.remote() for rank in self.ranks])[0]
        log.info("actors ready in %.1f s: %d rollout workers, %d learner ranks, %d reward workers (%s)",
                 time.perf_counter() - started, len(self.workers), len(self.ranks), len(self.rewards), self.device)

    def _check_loopback(self, what: str, node_ips: set[str]) -> None:
        """Loopback rendezvous works across Ray nodes of one machine (same IP), not across machines."""
        from rlpost.config.errors import ConfigError
        from rlpost.learner.distributed import is_loopback

        nodes = node_ips
        if len(nodes) > 1 and is_loopback(self.cluster.bind_host):
            raise ConfigError(
                f"the {what} are on {len(nodes)} machines, which cannot meet on cluster.bind_host={self.cluster.bind_host}: "
                "set cluster.bind_host: auto (each node's Ray IP) or a reachable address"
            )

    # ================================================================== resume and checkpoints

    def _maybe_resume(self) -> int:
        import ray

        from rlpost.io.checkpoint import resume_checkpoint
        from rlpost.trainer import _load_rng

        folder = resume_checkpoint(self.output_dir / "checkpoints", self.config.train.resume, self.digest)
        if folder is None:
            return 0
        ray.get([rank.load_state.remote(str(folder / "learner")) for rank in self.ranks])
        state = json.loads((folder / "trainer.json").read_text())
        self.sampler.load_state_dict(state["sampler"])
        self.objective.load_state_dict(state["objective"])
        if "learner_objective" in state:
            ray.get([rank.load_objective_state.remote(state["learner_objective"]) for rank in self.ranks])
        _load_rng(folder, state["rng"])
        step = state["step"]
        self.version = self.next_plan = step
        self._last_checkpoint = step
        self._publish_initial(step)
        log.info("resumed from %s at step %d", folder, step)
        return step

    def _publish_initial(self, version: int) -> None:
        """Make the learner's current weights the published version (after a resume)."""
        import ray

        if self.cluster.sync_transport == "object_store":
            self.published = ray.get([rank.publish.remote(version) for rank in self.ranks])[0]
        self.published_version = version

    def save_checkpoint(self, steps_done: int) -> Path:
        import ray

        from rlpost.io.checkpoint import prune_checkpoints, write_checkpoint
        from rlpost.trainer import _save_rng

        # The sampler as it was before batch `steps_done` was drawn: a resumed run redraws the batches in flight.
        sampler_state = self.sampler_snapshots.get(steps_done, self.sampler.state_dict())
        learner_objective = ray.get(self.ranks[0].objective_state.remote())

        def write(folder: Path) -> None:
            ray.get([rank.save_state.remote(str(folder / "learner")) for rank in self.ranks])
            rng = _save_rng(folder)
            state = {
                "step": steps_done,
                "sampler": sampler_state,
                "objective": self.objective.state_dict(),
                "learner_objective": learner_objective,
                "rng": rng,
                "runtime": {"max_staleness": self.k, "dropped_groups_total": self.buffer.dropped_total},
            }
            (folder / "trainer.json").write_text(json.dumps(state))

        root = self.output_dir / "checkpoints"
        folder = write_checkpoint(root, steps_done, write, self.digest)
        prune_checkpoints(root, self.config.checkpoint.keep_last)
        self._last_checkpoint = steps_done
        return folder

    # ================================================================== the loop

    def fit(self) -> dict[str, float]:
        from rlpost.io.metrics import MetricsLogger

        last: dict[str, float] = {}
        previous = None
        try:
            self.start()
            # After start(): ray.init installs its own SIGTERM handler.
            previous = signal.signal(signal.SIGTERM, self._request_stop)
            self.start_step = self._maybe_resume()
            self.metrics_logger = MetricsLogger(
                self.output_dir, self.config.logging, self.config.model_dump(mode="json"), self.start_step
            )
            (self.output_dir / "config.yaml").write_text(dump_config(self.config))
            if self.start_step == 0 and self.config.eval.at_start and self.test_prompts:
                self.metrics_logger.log(0, self._evaluate_now())
            self.hooks.on_start(self)
            self._step_started = time.perf_counter()
            self._run_started = self._step_started
            while self.version < self.total_steps:
                if self._stop_requested and self.training is None:
                    if self._last_checkpoint != self.version:
                        self.save_checkpoint(self.version)
                    break
                last = self._turn() or last
            if self.version >= self.total_steps and self.config.checkpoint.export_final:
                self._export_final()
            last.update(self.run_summary())
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.close()
        return last

    def _request_stop(self, signum, frame) -> None:
        del frame
        log.warning("signal %d: finishing the current step, then checkpointing", signum)
        self._stop_requested = True

    def _turn(self) -> dict[str, float] | None:
        """One scheduling round and one wait; returns a step's metrics when a step finished."""
        self._plan()
        self._schedule_workers()
        self._maybe_start_training()
        return self._wait_and_handle()

    # ---- planning

    def _plan(self) -> None:
        while plannable(self.next_plan, self.version, self.k, self.total_steps):
            index = self.next_plan
            self.sampler_snapshots[index] = copy.deepcopy(self.sampler.state_dict())
            batch = BatchState(index, group_filter=self.objective.group_filter(self.config.train.prompts_per_step))
            self.batches[index] = batch
            self._plan_round(batch)
            self.next_plan += 1

    def _plan_round(self, batch: BatchState) -> None:
        from rlpost.rollout.common import derive_seed
        from rlpost.trainer import step_seed

        round_index = len(batch.rounds)
        minimum = batch.group_filter.round_size if batch.group_filter is not None else 1
        requests: list = []
        while len(requests) < minimum:
            requests.extend(self.sampler.next_batch(batch.batch_index))
        round_seed = step_seed(self.config.train.seed, batch.batch_index) + 7919 * round_index
        alive = max(1, sum(slot.alive for slot in self.workers))
        per_unit = self.cluster.prompts_per_unit or math.ceil(len(requests) / alive)
        chunks = [requests[start : start + per_unit] for start in range(0, len(requests), per_unit)]
        batch.rounds.append({})
        for position, chunk in enumerate(chunks):
            unit = WorkUnit(
                unit_id=self._next_unit_id(), batch_index=batch.batch_index, round_index=round_index, position=position,
                prompts=[prompt for prompt, _ in chunk], n_per_prompt=[n for _, n in chunk],
                seed=round_seed if len(chunks) == 1 else derive_seed(round_seed, position),
                min_version=batch.batch_index - self.k,
            )
            batch.rounds[-1][position] = None
            self.pending.append(unit)

    def _next_unit_id(self) -> int:
        self.unit_ids += 1
        return self.unit_ids

    # ---- scheduling workers

    def _newest_version(self) -> int | None:
        return self.published_version

    def _schedule_workers(self) -> None:
        self._poll_restarts()
        if self.cluster.sync_transport == "nccl":
            self._maybe_broadcast()
        newest = self._newest_version()
        for slot in self.workers:
            if not slot.alive or slot.task is not None:
                continue
            if newest is not None and slot.version < newest:
                if self.cluster.sync_transport == "object_store" and self.published is not None:
                    self._start_sync(slot)
                continue  # the broadcast transport syncs every engine together, below
            unit = self._unit_for(slot)
            if unit is not None:
                self._dispatch(slot, unit)

    def _unit_for(self, slot: WorkerSlot) -> WorkUnit | None:
        for unit in self.pending:
            allowed = slot.version >= unit.min_version if unit.kind == "eval" else may_generate(unit.batch_index, slot.version, self.k)
            if allowed:
                self.pending.remove(unit)
                return unit
        return None

    def _dispatch(self, slot: WorkerSlot, unit: WorkUnit) -> None:
        slot.task, slot.unit, slot.started = "generate", unit, time.monotonic()
        if unit.kind == "eval":
            slot.ref = slot.actor.evaluate.remote(unit.prompts, unit.max_new_tokens, self.config.reward.num_workers)
        else:
            slot.ref = slot.actor.generate.remote(unit)
        self.hooks.on_dispatch(self, slot.index, unit)

    def _start_sync(self, slot: WorkerSlot) -> None:
        slot.task, slot.unit, slot.started = "sync", None, time.monotonic()
        slot.target_version = self.published.version
        slot.ref = slot.actor.update_weights.remote(self.published, self.cluster.sync_timeout_seconds)

    # ---- the broadcast transport: all engines together

    def _maybe_broadcast(self) -> None:
        import ray

        newest = self._newest_version()
        alive = [slot for slot in self.workers if slot.alive]
        if newest is None or self.training is not None or all(slot.version >= newest for slot in alive):
            return
        if any(slot.task is not None for slot in alive):
            return  # wait until every engine is idle (and restarted ones are back)
        self._ensure_broadcast_group(alive)
        started = time.perf_counter()
        refs = [rank.broadcast_weights.remote() for rank in self.ranks]
        worker_refs = [slot.actor.receive_broadcast.remote(self._weight_meta, newest) for slot in alive]
        self._await_sync(refs + worker_refs, alive, newest)
        for slot in alive:
            slot.version = newest
        elapsed = time.perf_counter() - started
        self.clock.add("sync", elapsed * len(alive))
        self.clock.add("learner", elapsed)
        ray.get(refs)

    def _await_sync(self, refs: list, slots: list[WorkerSlot], version: int) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        timeout = self.cluster.sync_timeout_seconds
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            late = [slots[refs.index(ref) - len(self.ranks)].describe() for ref in pending if refs.index(ref) >= len(self.ranks)]
            names = ", ".join(late) or "learner rank 0"
            raise WeightSyncError(
                f"weight sync of version {version} to {names} did not finish within {timeout:.0f} s "
                "(cluster.sync_timeout_seconds)"
            )
        for position, ref in enumerate(refs):
            try:
                ray.get(ref)
            except (RayTaskError, RayActorError) as exc:
                who = slots[position - len(self.ranks)].describe() if position >= len(self.ranks) else f"learner rank {position}"
                raise WeightSyncError(f"weight sync of version {version} to {who} failed: {exc}") from exc

    def _ensure_broadcast_group(self, alive: list[WorkerSlot]) -> None:
        import ray

        members = tuple((slot.index, slot.restarts) for slot in alive)
        if members == self._broadcast_members:
            return
        self._broadcast_epoch += 1
        backend = "nccl" if self.device == "cuda" else "gloo"
        host, port = ray.get(self.ranks[0].broadcast_rendezvous.remote())
        world = len(alive) + 1
        timeout = self.cluster.sync_timeout_seconds
        tag = str(self._broadcast_epoch)
        refs = [rank.join_broadcast.remote(host, port, world, backend, timeout, tag) for rank in self.ranks]
        refs += [slot.actor.join_broadcast.remote(host, port, i + 1, world, backend, timeout, tag) for i, slot in enumerate(alive)]
        self._await_sync(refs, alive, -1)
        self._broadcast_members = members

    # ---- training

    def _maybe_start_training(self) -> None:
        import ray
        import torch

        from rlpost.learner.batch import PolicyTargets, build_train_batch, prepare_update

        if self.training is not None or self.version >= self.total_steps or self._stop_requested:
            return
        batch_state = self.batches.get(self.version)
        if batch_state is None or not batch_state.complete:
            return
        if self.cluster.sync_transport == "nccl" and self._broadcast_due():
            return  # rank 0 serves the pending broadcast first
        groups, metrics = self.buffer.take(batch_state.groups, self.version)
        if not groups:
            raise RuntimeError(f"every group of batch {self.version} is staler than max_staleness {self.k}")
        batch = build_train_batch(groups, self.pad_token_id)
        targets = prepare_update(self.objective, batch)
        ranks = len(self.ranks)
        if batch.size < ranks:
            raise ValueError(f"batch {self.version} has {batch.size} sequences for {ranks} learner ranks (cluster.learner_ranks)")
        if self.cluster.placement == "colocated" and self.device == "cuda":
            ray.get([slot.actor.release_memory.remote() for slot in self.workers if slot.alive])
        publish = self.version + 1 if self.cluster.sync_transport == "object_store" else None
        refs = []
        for rank, rows in zip(self.ranks, torch.arange(batch.size).tensor_split(ranks), strict=True):
            shard_targets = PolicyTargets(
                advantages=targets.advantages[rows],
                token_weights=targets.token_weights[rows] if targets.token_weights is not None else None,
                metrics={},
            )
            refs.append(rank.train.remote(batch.select(rows), shard_targets, publish))
        metrics.update(merge_reward_metrics(batch_state.reward_metrics))
        for sampler_metrics in batch_state.sampler_metrics:
            metrics.update(sampler_metrics)
        metrics.update(batch_state.filter_metrics)
        metrics.update(targets.metrics)
        self.training = Training(refs, self.version, len(groups), batch, targets, metrics, time.perf_counter())
        del self.batches[self.version]
        self.hooks.on_train_start(self, self.version)

    def _broadcast_due(self) -> bool:
        newest = self._newest_version()
        return newest is not None and any(slot.alive and slot.version < newest for slot in self.workers)

    def _finish_training(self) -> dict[str, float] | None:
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError

        from rlpost.runtime.correction import combine_stats

        training, self.training = self.training, None
        try:
            outputs = ray.get(training.refs)
        except (RayActorError, OutOfMemoryError) as exc:
            raise self._learner_crashed(exc, training.batch_index) from exc
        self.version = training.batch_index + 1
        train_seconds = max(out["seconds"] for out in outputs)
        publish_seconds = 0.0
        if self.cluster.sync_transport == "object_store":
            self.published = outputs[0]["handle"]
            publish_seconds = self.published.seconds
        self.published_version = self.version
        self.clock.add("learner", train_seconds + publish_seconds)
        if self.cluster.placement == "colocated" and self.device == "cuda":
            ray.get([slot.actor.restore_memory.remote() for slot in self.workers if slot.alive])
        for index in [b for b in self.sampler_snapshots if b < self.version]:
            del self.sampler_snapshots[index]

        metrics = dict(training.metrics)
        # The ranks reduced their metrics and gathered their IS statistics: rank 0's stand for the step.
        metrics.update(outputs[0]["metrics"])
        if outputs[0]["is_stats"] is not None:
            metrics.update(combine_stats(outputs[0]["is_stats"], self.is_mode))
        batch = training.batch
        lengths = batch.response_lengths.float()
        now = time.perf_counter()
        step_seconds = now - self._step_started
        self._step_started = now
        self.step_times.append(step_seconds)
        alive = max(1, sum(slot.alive for slot in self.workers))
        metrics.update({
            "train/accuracy": float(batch.correct.float().mean()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/clip_ratio": float(batch.truncated.float().mean()),
            "perf/step_seconds": step_seconds,
            "perf/tokens_per_second": float(lengths.sum()) / max(step_seconds, 1e-9),
            "perf/train_seconds": train_seconds,
            "perf/publish_seconds": publish_seconds,
            "perf/sync_seconds": self.clock.sync,
            "perf/reward_seconds": self.clock.reward,
            "perf/rollout_busy_frac": min(1.0, self.clock.rollout / (alive * step_seconds)),
            "perf/learner_busy_frac": min(1.0, self.clock.learner / step_seconds),
            "policy/version": float(self.version),
            "rollout/worker_restarts": float(self.restarts_total),
            "rollout/regenerated_units": float(self.regenerated_units),
            "rollout/groups": float(training.num_groups),
        })
        self.clock.reset_step()

        steps_done = self.version
        final = steps_done == self.config.train.steps
        every_eval = self.config.eval.every_steps
        for result in self.eval_results:  # evaluations queued earlier that have finished
            metrics.update(result)
        self.eval_results.clear()
        if self.test_prompts and (final or (every_eval and steps_done % every_eval == 0)):
            if final:
                metrics.update(self._evaluate_now())
            else:
                self._queue_eval()
        every = self.config.checkpoint.every_steps
        if final or self._stop_requested or (every and steps_done % every == 0):
            self.save_checkpoint(steps_done)
        self.metrics_logger.log(steps_done, metrics)
        self.hooks.on_step(self, steps_done, metrics)
        return metrics

    # ---- evaluation

    def _queue_eval(self, version: int | None = None) -> WorkUnit:
        unit = WorkUnit(
            unit_id=self._next_unit_id(), batch_index=-1, round_index=0, position=0,
            prompts=self.test_prompts[: self.config.eval.num_problems], n_per_prompt=[],
            seed=0, kind="eval", min_version=self.version if version is None else version,
            max_new_tokens=self.config.eval.max_new_tokens or self.config.rollout.max_new_tokens,
        )
        self.pending.appendleft(unit)
        return unit

    def _evaluate_now(self) -> dict[str, float]:
        """Evaluate the current version on the first free worker, driving the loop until it is done."""
        if not self.test_prompts:
            return {}
        before = len(self.eval_results)
        self._queue_eval()
        while len(self.eval_results) == before:
            self._schedule_workers()
            self._wait_and_handle(allow_training=False)
        return self.eval_results.pop()

    # ---- waiting

    def _wait_and_handle(self, allow_training: bool = True) -> dict[str, float] | None:
        import ray

        watched: dict[Any, tuple[str, Any]] = {}
        for slot in self.workers:
            if slot.ref is not None and slot.task not in (None, "down"):
                watched[slot.ref] = ("worker", slot)
        for ref, result in self.scoring.items():
            watched[ref] = ("score", result)
        if self.training is not None and allow_training:
            for ref in self.training.refs:
                watched[ref] = ("train", None)
        if not watched and any(slot.alive and slot.task == "down" for slot in self.workers):
            time.sleep(self._wait_timeout())  # only restarts to wait for
            return None
        if not watched:
            if self.pending or self.version < self.total_steps:
                stuck = "no rollout worker is alive" if not any(s.alive for s in self.workers) else "nothing is running"
                raise RuntimeError(f"the runtime cannot make progress at version {self.version}: {stuck}")
            return None
        ready, _ = ray.wait(list(watched), num_returns=1, timeout=self._wait_timeout())
        result = None
        for ref in ready:
            kind, payload = watched[ref]
            if kind == "worker":
                self._worker_done(payload)
            elif kind == "score":
                self._score_done(ref, self.scoring.pop(ref))
            elif self.training is not None:
                _, unfinished = ray.wait(self.training.refs, num_returns=len(self.training.refs), timeout=0)
                if not unfinished:
                    result = self._finish_training()
                else:
                    self._check_rank(ref)
        self._check_sync_deadlines()
        return result

    def _learner_crashed(self, exc: Exception, batch_index: int | None = None) -> LearnerCrashed:
        from rlpost.io.checkpoint import latest_checkpoint

        step = (batch_index if batch_index is not None else self.version) + 1
        last = latest_checkpoint(self.output_dir / "checkpoints")
        return LearnerCrashed(
            f"a learner rank died during step {step}: {exc}. Last complete checkpoint: "
            f"{last or 'none'}; run again with train.resume: auto to continue from it"
        )

    def _check_rank(self, ref: Any) -> None:
        """A rank finished before the others: surface its failure now rather than waiting on the rest."""
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError

        try:
            ray.get(ref)
        except (RayActorError, OutOfMemoryError) as exc:
            raise self._learner_crashed(exc) from exc

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [slot.started + self.cluster.sync_timeout_seconds - now for slot in self.workers if slot.task == "sync"]
        deadlines += [slot.retry_at - now for slot in self.workers if slot.alive and slot.task == "down"]
        return max(0.05, min([POLL_SECONDS, *deadlines]))

    def _check_sync_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.workers:
            if slot.task == "sync" and now - slot.started > self.cluster.sync_timeout_seconds:
                raise WeightSyncError(
                    f"weight sync of version {slot.target_version} to {slot.describe()} did not finish within "
                    f"{self.cluster.sync_timeout_seconds:.0f} s (cluster.sync_timeout_seconds)"
                )

    def _worker_done(self, slot: WorkerSlot) -> None:
        import ray
        from ray.exceptions import (
            ActorDiedError,
            ActorUnavailableError,
            OutOfMemoryError,
            OwnerDiedError,
            RayActorError,
            RayTaskError,
        )

        task, ref, unit = slot.task, slot.ref, slot.unit
        slot.task, slot.ref, slot.unit = None, None, None
        try:
            out = ray.get(ref)
        except ActorUnavailableError as exc:
            # Restarting (or unreachable for a moment): the call did not run; try again shortly.
            self._requeue(unit, count_attempt=False, slot=slot, exc=exc)
            self._worker_down(slot)
            return
        except (ActorDiedError, RayActorError, OutOfMemoryError) as exc:  # OOM: Ray's memory monitor killed it
            if task == "restart":
                self._worker_lost(slot, f"Ray could not restart it ({exc})")
                return
            log.warning("%s died during %s (%s)", slot.describe(), task, type(exc).__name__)
            self._requeue(unit, count_attempt=True, slot=slot, exc=exc)
            self._worker_down(slot)  # Ray restarts it (max_restarts) or reports it dead for good
            return
        except RayTaskError as exc:
            if task == "sync":
                if isinstance(exc, OwnerDiedError):  # the published weights belong to learner rank 0
                    raise self._learner_crashed(exc) from exc
                raise WeightSyncError(f"weight sync of version {slot.target_version} to {slot.describe()} failed: {exc}") from exc
            raise
        if task == "restart":
            if out["pid"] != slot.info.get("pid"):
                slot.restarts += 1
                self.restarts_total += 1
            slot.info = out
            slot.version = out["version"]
            slot.down_since = None
            log.warning("%s is back (restart %d), at version %d", slot.describe(), slot.restarts, slot.version)
        elif task == "sync":
            slot.version = out["version"]
            self.clock.add("sync", out["seconds"])
        elif unit is not None and unit.kind == "eval":
            self.eval_results.append(out)
        else:
            self.clock.add("rollout", out["seconds"])
            result = UnitResult(unit=unit, groups=[], engine_version=out["version"], worker=slot.index,
                                generate_seconds=out["seconds"])
            reward = self.rewards[self._reward_turn % len(self.rewards)]
            self._reward_turn += 1
            self.scoring[reward.score.remote(out["groups"])] = result

    def _requeue(self, unit: WorkUnit | None, count_attempt: bool, slot: WorkerSlot, exc: Exception) -> None:
        """Put a lost request back at the front of the queue (it is regenerated by whichever worker is free)."""
        if unit is None:
            return
        if count_attempt:
            unit.attempts += 1
            if unit.attempts >= self.cluster.max_unit_attempts:
                raise RuntimeError(
                    f"generation request {unit.unit_id} (batch {unit.batch_index}) failed {unit.attempts} times "
                    f"(cluster.max_unit_attempts); last failure on {slot.describe()}: {exc}"
                ) from exc
        self.pending.appendleft(unit)
        self.regenerated_units += 1

    def _worker_down(self, slot: WorkerSlot) -> None:
        """Wait for Ray to restart the actor (polled), then it loads the published weights before new work."""
        slot.version = -1
        slot.task = "down"
        if slot.down_since is None:
            slot.down_since = time.monotonic()
        slot.retry_at = time.monotonic() + RESTART_POLL_SECONDS

    def _worker_lost(self, slot: WorkerSlot, why: str) -> None:
        slot.alive = False
        slot.task = None
        log.error("%s is gone (%s); continuing without it", slot.describe(), why)
        if not any(s.alive for s in self.workers):
            raise RuntimeError(f"every rollout worker is gone; the last: {slot.describe()} ({why})")

    def _poll_restarts(self) -> None:
        now = time.monotonic()
        for slot in self.workers:
            if not slot.alive or slot.task != "down" or now < slot.retry_at:
                continue
            if now - slot.down_since > self.cluster.worker_restart_timeout_seconds:
                self._worker_lost(slot, f"not back within {self.cluster.worker_restart_timeout_seconds:.0f} s "
                                        "(cluster.worker_restart_timeout_seconds)")
                continue
            slot.task, slot.started = "restart", now
            slot.ref = slot.actor.info.remote()

    def _score_done(self, ref: Any, result: UnitResult) -> None:
        import ray

        out = ray.get(ref)
        self.clock.add("reward", out["seconds"])
        result.groups = out["groups"]
        result.reward_metrics = out["metrics"]
        unit = result.unit
        batch = self.batches[unit.batch_index]
        batch.rounds[unit.round_index][unit.position] = result
        if unit.round_index == len(batch.rounds) - 1 and batch.round_done():
            self._finish_round(batch)

    def _finish_round(self, batch: BatchState) -> None:
        results = batch.round_results()
        groups = [group for result in results for group in result.groups]
        batch.sampler_metrics.append(self.sampler.update(groups))
        batch.reward_metrics.extend((result.unit.num_completions, result.reward_metrics) for result in results)
        if batch.group_filter is None:
            batch.groups = groups
            batch.complete = True
            return
        batch.group_filter.add_groups(groups)
        if batch.group_filter.ready:
            batch.groups, batch.filter_metrics = batch.group_filter.take()
            batch.complete = True
        else:
            self._plan_round(batch)

    # ================================================================== tools

    def run_segment(self, steps: int, max_staleness: int) -> dict[str, float]:
        """Train `steps` more steps with `max_staleness` on the running actors; returns the segment's
        `run_summary` (benchmarks interleave sync and async segments on one set of actors).

        Call `start()` (and set up `metrics_logger`) first; segments must fit within `train.steps`.
        Between segments nothing is planned ahead, so the staleness bound can change.
        """
        if self.training is not None or self.pending or self.next_plan != self.version:
            raise RuntimeError("run_segment needs a drained pipeline (call it between segments only)")
        if self.version + steps > self.config.train.steps:
            raise ValueError(f"segment ends past train.steps ({self.config.train.steps})")
        self.k = max_staleness
        self.buffer = RolloutBuffer(max_staleness)
        self.total_steps = self.version + steps
        self.clock = Clock()
        self.step_times = []
        self._step_started = time.perf_counter()
        while self.version < self.total_steps:
            self._turn()
        return self.run_summary()

    def probe(self, worker: int, prompts: list, n: int, seed: int) -> tuple[list, int]:
        """(groups, engine version): generate on one worker right now, outside the schedule (tests, tools).

        Blocks the driver; if the worker is busy the call runs after its current request.
        """
        import ray

        unit = WorkUnit(unit_id=0, batch_index=-1, round_index=0, position=0, prompts=list(prompts),
                        n_per_prompt=[n] * len(prompts), seed=seed, kind="probe")
        out = ray.get(self.workers[worker].actor.generate.remote(unit))
        return out["groups"], out["version"]

    # ================================================================== the end

    def _export_final(self) -> None:
        import ray

        ray.get([rank.export_hf.remote(str(self.output_dir / "final")) for rank in self.ranks])

    def run_summary(self) -> dict[str, float]:
        """Whole-run figures: seconds per step (first step excluded when there are several), busy fractions."""
        times = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        wall = sum(self.step_times) or 1e-9
        alive = max(1, sum(slot.alive for slot in self.workers))
        summary = {
            "run/seconds_per_step": sum(times) / max(len(times), 1),
            "run/rollout_busy_frac": min(1.0, self.clock.run_rollout / (alive * wall)),
            "run/learner_busy_frac": min(1.0, self.clock.run_learner / wall),
            "run/dropped_groups": float(self.buffer.dropped_total),
            "run/worker_restarts": float(self.restarts_total),
            "run/regenerated_units": float(self.regenerated_units),
        }
        for stale, count in self.buffer.histogram().items():
            summary[f"run/staleness/{stale}"] = float(count)
        return summary

    def close(self) -> None:
        import ray

        from rlpost.runtime.placement import remove_layout

        if self.metrics_logger is not None:
            self.metrics_logger.close()
            self.metrics_logger = None
        if ray.is_initialized():
            # Idle actors close their engines and process pools; a busy (possibly stuck) one is just killed.
            idle_workers = [slot.actor for slot in self.workers if slot.alive and slot.task is None]
            busy = self.training is not None
            closing = [actor.close.remote() for actor in idle_workers + self.rewards + ([] if busy else self.ranks)]
            ray.wait(closing, num_returns=len(closing), timeout=30)
            for actor in [slot.actor for slot in self.workers] + self.rewards + self.ranks:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001, S110 - already dead
                    pass
            remove_layout(self.layout)
            self.layout = None
            self.workers, self.rewards, self.ranks = [], [], []
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False


def check_config(config: RLPostConfig) -> None:
    """Cross-section settings the Ray runtime needs (the messages name the keys)."""
    from rlpost.config.errors import ConfigError

    cluster = config.cluster
    if cluster.learner_ranks > 1 and config.learner.backend != "deepspeed":
        raise ConfigError("cluster.learner_ranks > 1 needs learner.backend: deepspeed")
    if cluster.learner_ranks > config.train.prompts_per_step * config.rollout.n:
        raise ConfigError("cluster.learner_ranks exceeds the sequences per step (train.prompts_per_step x rollout.n)")
