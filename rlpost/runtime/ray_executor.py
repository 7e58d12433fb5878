"""`RayExecutor`: the loop's work on Ray actors (`cluster.runtime: ray`).

Actors (`actors.py`, placed by `placement.py`): rollout workers (one engine each), learner ranks
(one DeepSpeed group), reward workers (a process pool each). Each call of `wait`:

1. schedule: the weight sync (`transport.WeightSync`) brings idle engines up to the published
   version; an idle, up-to-date worker takes the oldest unit its version may generate
   (version >= unit.min_version);
2. start the queued optimizer step when the transport allows (the rows are sharded over the ranks;
   rank 0 publishes the new weights);
3. wait for whichever call finishes next and turn it into events: a generated unit goes to a
   reward worker and comes back as `Generated`; the ranks' outputs become `Trained`.

Faults: a dead worker's unit goes back to the front of the queue and is regenerated (same seed,
current weights); Ray restarts the worker, which loads the published weights before new work. A
sync past its deadline raises `WeightSyncError` naming the engine. A dead learner rank raises
`LearnerCrashed` naming the last complete checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rlpost.runtime.buffer import WorkUnit
from rlpost.runtime.executor import Executor, ExecutorInfo, Generated, LearnerRequest, Trained, busy_summary
from rlpost.runtime.rollout_pool import RolloutPool
from rlpost.runtime.transport import WeightSyncError
from rlpost.types import Prompt

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0


class LearnerCrashed(RuntimeError):
    """A learner rank died; the run stops (the last complete checkpoint is intact)."""


def shard_request(request: LearnerRequest, ranks: int) -> list[LearnerRequest]:
    """The request of each learner rank: an RL batch's rows split evenly; a blended step stays whole."""
    import torch

    from rlpost.learner.batch import PolicyTargets

    if ranks == 1:
        return [request]
    if request.blend is not None:
        raise ValueError("a blended step runs on one learner rank (cluster.learner_ranks: 1)")
    batch, targets = request.batch, request.targets
    if batch.size < ranks:
        raise ValueError(f"batch {request.batch_index} has {batch.size} sequences for {ranks} learner ranks (cluster.learner_ranks)")
    shards = []
    for rows in torch.arange(batch.size).tensor_split(ranks):
        shard_targets = PolicyTargets(
            advantages=targets.advantages[rows],
            token_weights=targets.token_weights[rows] if targets.token_weights is not None else None,
            metrics={},
        )
        shards.append(LearnerRequest(request.batch_index, batch.select(rows), shard_targets))
    return shards


class RayExecutor(RolloutPool, Executor):
    """Runs generation, scoring, optimizer steps and weight syncs on Ray actors."""

    def __init__(self, config: Any, model_path: str, engine_factory=None, hooks=None):
        super().__init__(config, hooks)
        self.model_path = model_path
        self.engine_factory = engine_factory
        self.ranks: list[Any] = []
        self.rank_info: list[dict] = []
        self.rewards: list[Any] = []
        self.layout = None
        self.device = "cpu"
        self.queued: LearnerRequest | None = None
        self.training: dict | None = None
        """The running optimizer step: refs, batch index, request."""
        self.published_version: int | None = None
        self.scoring: dict[Any, tuple[WorkUnit, dict]] = {}
        self.stash: list[Generated | Trained] = []
        self.eval_results: list[dict[str, float]] = []
        self.times = ExecutorInfo()
        self.times_since = time.perf_counter()
        self.run_rollout = self.run_learner = 0.0
        self._reward_turn = 0
        self._started_ray = False
        self.sync = self._transport()

    def _transport(self):
        if self.cluster.sync_transport == "nccl":
            from rlpost.runtime.sync_broadcast import BroadcastSync

            return BroadcastSync(self)
        if self.cluster.sync_transport == "ipc":
            from rlpost.runtime.sync_ipc import IpcSync

            return IpcSync(self)
        from rlpost.runtime.sync_object_store import ObjectStoreSync

        return ObjectStoreSync(self)

    # ---- start-up

    def start(self, needs_gradient_access: bool) -> None:
        """Connect to Ray and start every actor."""
        import ray

        from rlpost.runtime.actors import RewardWorker
        from rlpost.runtime.placement import check_device_settings, connect, make_layout, resolve_device

        self._started_ray = connect(self.cluster)
        self.device = resolve_device(self.cluster)
        rollout = self.config.rollout
        tp = rollout.vllm.tensor_parallel_size if rollout.engine == "vllm" else 1
        check_device_settings(self.cluster, tp, self.device)
        self.layout = make_layout(self.cluster, tp, self.device)
        started = time.perf_counter()
        if self.sleeps:
            # The engines take their GPU memory and free it again before the learner allocates its own.
            self.start_workers(self.layout, self.model_path, self.device, self.engine_factory)
            self.await_worker_info()
            ray.get([slot.actor.release_memory.remote() for slot in self.workers])
            setup = self._start_learner(needs_gradient_access)
        else:
            setup = self._start_learner(needs_gradient_access)
            self.start_workers(self.layout, self.model_path, self.device, self.engine_factory)
        reward_cls = ray.remote(RewardWorker)
        self.rewards = [
            reward_cls.options(num_cpus=self.cluster.reward_cpus, max_restarts=self.cluster.max_worker_restarts,
                               max_task_retries=2).remote(self.config.reward)
            for _ in range(self.cluster.num_reward_workers)
        ]
        self.await_worker_info()
        ray.get(setup)
        if self.sleeps:
            ray.get([slot.actor.restore_memory.remote() for slot in self.workers])
        self.sync.start()
        log.info("actors ready in %.1f s: %d rollout workers, %d learner ranks, %d reward workers (%s)",
                 time.perf_counter() - started, len(self.workers), len(self.ranks), len(self.rewards), self.device)

    def _start_learner(self, needs_gradient_access: bool) -> list:
        import ray

        from rlpost.runtime.actors import LearnerRank
        from rlpost.runtime.placement import actor_options, actor_threads

        cluster = self.cluster
        learner_cls = ray.remote(LearnerRank)
        self.ranks = [
            learner_cls.options(**actor_options(group, bundle, cluster.learner_cpus, self.layout.learner_gpus, max_restarts=0)).remote(
                rank, cluster.learner_ranks, self.config, self.model_path,
                actor_threads(cluster, cluster.learner_cpus), self.device, cluster.bind_host,
            )
            for rank, (group, bundle) in enumerate(self.layout.learner_groups)
        ]
        self.rank_info = ray.get([rank.info.remote() for rank in self.ranks])
        self.check_loopback("learner ranks", {info["node_ip"] for info in self.rank_info})
        master = ray.get(self.ranks[0].rendezvous.remote())
        return [rank.setup.remote(*master, needs_gradient_access) for rank in self.ranks]

    def check_loopback(self, what: str, node_ips: set[str]) -> None:
        """Loopback rendezvous works across Ray nodes of one machine (same IP), not across machines."""
        from rlpost.config.errors import ConfigError
        from rlpost.learner.distributed import is_loopback

        if len(node_ips) > 1 and is_loopback(self.cluster.bind_host):
            raise ConfigError(
                f"the {what} are on {len(node_ips)} machines, which cannot meet on cluster.bind_host={self.cluster.bind_host}: "
                "set cluster.bind_host: auto (each node's Ray IP) or a reachable address"
            )

    @property
    def sleeps(self) -> bool:
        """Colocated engines on GPUs sleep (vLLM sleep mode) while the learner trains."""
        return self.cluster.placement == "colocated" and self.device == "cuda"

    # ---- the executor interface

    @property
    def engines(self) -> int:
        return max(1, sum(slot.alive for slot in self.workers))

    def submit(self, unit: WorkUnit) -> None:
        self.pending.append(unit)

    def train(self, request: LearnerRequest) -> None:
        """Queue the step and start it now if the transport allows; idle engines behind the published
        version are asked to sync first (an actor runs its calls in order)."""
        self.queued = request
        self._schedule()
        self._maybe_start_training()

    def wait(self) -> list[Generated | Trained]:
        if self.stash:
            events, self.stash = self.stash, []
            return events
        self._schedule()
        self._maybe_start_training()
        return self._wait_once(watch_training=True)

    def evaluate(self, prompts: list[Prompt], max_new_tokens: int) -> dict[str, float]:
        """Evaluate the current version on the first free worker; other events meanwhile are kept for `wait`."""
        version = self.published_version or 0
        self.pending.appendleft(WorkUnit(
            unit_id=-1, batch_index=-1, round_index=0, position=0, prompts=list(prompts), n_per_prompt=[],
            seed=0, kind="eval", min_version=version, max_new_tokens=max_new_tokens,
        ))
        while not self.eval_results:
            self._schedule()
            self.stash.extend(self._wait_once(watch_training=False))
        return self.eval_results.pop()

    def _schedule(self) -> None:
        self.poll_restarts()
        self.sync.schedule()
        newest = self.published_version
        for slot in self.workers:
            if slot.alive and slot.task is None and (newest is None or slot.version >= newest):
                unit = self.unit_for(slot)
                if unit is not None:
                    self.dispatch(slot, unit, self.config.reward.num_workers)

    # ---- the optimizer step

    def _maybe_start_training(self) -> None:
        import ray

        if self.queued is None or self.training is not None or self.sync.blocks_training():
            return
        request, self.queued = self.queued, None
        if self.sleeps:
            ray.get([slot.actor.release_memory.remote() for slot in self.workers if slot.alive])
        publish = self.sync.publish_with_step(request.batch_index + 1)
        shards = shard_request(request, len(self.ranks))
        refs = [rank.train.remote(shard, publish) for rank, shard in zip(self.ranks, shards, strict=True)]
        self.training = {"refs": refs, "batch_index": request.batch_index}

    def _finish_training(self) -> Trained:
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError

        training, self.training = self.training, None
        try:
            outputs = ray.get(training["refs"])
        except (RayActorError, OutOfMemoryError) as exc:
            raise self._learner_crashed(exc, training["batch_index"]) from exc
        version = training["batch_index"] + 1
        train_seconds = max(out["seconds"] for out in outputs)
        publish_seconds = self.sync.on_trained(outputs)
        self.published_version = version
        self.times.learner += train_seconds + publish_seconds
        self.times.extra["perf/publish_seconds"] = publish_seconds
        self.run_learner += train_seconds + publish_seconds
        if self.sleeps:
            ray.get([slot.actor.restore_memory.remote() for slot in self.workers if slot.alive])
        # The ranks reduced their metrics and gathered their IS statistics: rank 0's stand for the step.
        return Trained(training["batch_index"], outputs[0]["result"], train_seconds)

    def _learner_crashed(self, exc: Exception, batch_index: int | None = None) -> LearnerCrashed:
        from rlpost.io.checkpoint import latest_checkpoint

        step = (batch_index if batch_index is not None else self.published_version or 0) + 1
        last = latest_checkpoint(Path(self.config.train.output_dir) / "checkpoints")
        return LearnerCrashed(
            f"a learner rank died during step {step}: {exc}. Last complete checkpoint: "
            f"{last or 'none'}; run again with train.resume: auto to continue from it"
        )

    # ---- waiting

    def _watched(self, watch_training: bool) -> dict[Any, tuple[str, Any]]:
        watched: dict[Any, tuple[str, Any]] = {}
        for slot in self.workers:
            if slot.ref is not None and slot.task not in (None, "down"):
                watched[slot.ref] = ("worker", slot)
        for ref in self.scoring:
            watched[ref] = ("score", None)
        if self.training is not None and watch_training:
            for ref in self.training["refs"]:
                watched[ref] = ("train", None)
        return watched

    def _wait_once(self, watch_training: bool) -> list[Generated | Trained]:
        import ray

        watched = self._watched(watch_training)
        if not watched:
            if any(slot.alive and slot.task == "down" for slot in self.workers):
                time.sleep(self.wait_timeout(POLL_SECONDS))  # only restarts to wait for
                return []
            stuck = "no rollout worker is alive" if not any(s.alive for s in self.workers) else "nothing is running"
            raise RuntimeError(f"the Ray runtime cannot make progress at version {self.published_version}: {stuck}")
        ready, _ = ray.wait(list(watched), num_returns=1, timeout=self.wait_timeout(POLL_SECONDS))
        events: list[Generated | Trained] = []
        for ref in ready:
            kind, slot = watched[ref]
            if kind == "worker":
                self._worker_done(slot)
            elif kind == "score":
                events.append(self._score_done(ref))
            elif self.training is not None:
                _, unfinished = ray.wait(self.training["refs"], num_returns=len(self.training["refs"]), timeout=0)
                if not unfinished:
                    events.append(self._finish_training())
                else:
                    self._check_rank(ref)
        self.check_sync_deadlines()
        return events

    def _check_rank(self, ref: Any) -> None:
        """A rank finished before the others: surface its failure now rather than waiting on the rest."""
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError

        try:
            ray.get(ref)
        except (RayActorError, OutOfMemoryError) as exc:
            raise self._learner_crashed(exc) from exc

    def _worker_done(self, slot) -> None:
        out, task, unit = self.collect(slot, self._learner_crashed)
        if out is None:
            return
        if task == "sync":
            self.times.sync += out["seconds"]
        elif unit is not None and unit.kind == "eval":
            self.eval_results.append(out)
        elif task == "generate":
            self.times.rollout += out["seconds"]
            self.run_rollout += out["seconds"]
            reward = self.rewards[self._reward_turn % len(self.rewards)]
            self._reward_turn += 1
            self.scoring[reward.score.remote(out["groups"])] = (unit, out)

    def _score_done(self, ref: Any) -> Generated:
        import ray

        unit, generated = self.scoring.pop(ref)
        scored = ray.get(ref)
        self.times.reward += scored["seconds"]
        return Generated(unit, scored["groups"], scored["metrics"], generated["version"], generated["seconds"],
                         scored["seconds"])

    def await_sync(self, refs: list, slots: list, version: int) -> None:
        """Wait for a collective sync call of the learner ranks and `slots`; errors name the engine."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        timeout = self.cluster.sync_timeout_seconds
        ranks = len(self.ranks)
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            late = [slots[refs.index(ref) - ranks].describe() for ref in pending if refs.index(ref) >= ranks]
            raise WeightSyncError(
                f"weight sync of version {version} to {', '.join(late) or 'learner rank 0'} did not finish within "
                f"{timeout:.0f} s (cluster.sync_timeout_seconds)"
            )
        for position, ref in enumerate(refs):
            try:
                ray.get(ref)
            except (RayTaskError, RayActorError) as exc:
                who = slots[position - ranks].describe() if position >= ranks else f"learner rank {position}"
                raise WeightSyncError(f"weight sync of version {version} to {who} failed: {exc}") from exc

    # ---- learner state

    def load_learner(self, folder: Path, learner_objective: dict[str, Any], version: int) -> None:
        import ray

        ray.get([rank.load_state.remote(str(folder)) for rank in self.ranks])
        ray.get([rank.load_objective_state.remote(learner_objective) for rank in self.ranks])
        self.sync.on_resume(version)
        self.published_version = version

    def save_learner(self, folder: Path, with_reference: bool) -> dict[str, Any]:
        import ray

        ray.get([rank.save_state.remote(str(folder), with_reference) for rank in self.ranks])
        return ray.get(self.ranks[0].objective_state.remote())

    def export_hf(self, folder: Path) -> None:
        import ray

        ray.get([rank.export_hf.remote(str(folder)) for rank in self.ranks])

    # ---- figures

    def take_times(self) -> ExecutorInfo:
        now = time.perf_counter()
        elapsed, self.times_since = max(now - self.times_since, 1e-9), now
        times, self.times = self.times, ExecutorInfo()
        times.extra.update({
            "perf/rollout_busy_frac": min(1.0, times.rollout / (self.engines * elapsed)),
            "perf/learner_busy_frac": min(1.0, times.learner / elapsed),
            "rollout/worker_restarts": float(self.restarts_total),
            "rollout/regenerated_units": float(self.regenerated_units),
        })
        return times

    def summary(self, wall_seconds: float) -> dict[str, float]:
        return {
            **busy_summary(self.run_rollout, self.run_learner, self.engines, wall_seconds),
            "run/worker_restarts": float(self.restarts_total),
            "run/regenerated_units": float(self.regenerated_units),
        }

    def reset_run_figures(self) -> None:
        self.run_rollout = self.run_learner = 0.0

    def probe(self, worker: int, prompts: list, n: int, seed: int) -> tuple[list, int]:
        """(groups, engine version): generate on one worker right now, outside the schedule (tests, tools).

        Blocks; if the worker is busy the call runs after its current request.
        """
        import ray

        unit = WorkUnit(unit_id=0, batch_index=-1, round_index=0, position=0, prompts=list(prompts),
                        n_per_prompt=[n] * len(prompts), seed=seed, kind="probe")
        out = ray.get(self.workers[worker].actor.generate.remote(unit))
        return out["groups"], out["version"]

    def close(self) -> None:
        import ray

        from rlpost.runtime.placement import remove_layout

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

