"""`TrainingRun`: one run, on whichever runtime `cluster.runtime` names.

The run owns everything about a step: set-up, seeding, the config digest, resume, the batches
(rounds, group filtering, sampler updates), advantages, blending, step metrics, the evaluation and
checkpoint schedules and the final export. Where the work runs is the executor's business
(`rlpost.runtime.executor`): generation, scoring, the optimizer step, weight sync, evaluation.

The loop, for both runtimes: plan every batch b <= version + max_staleness (its units go to the
executor); when batch `version` is complete, drop groups staler than max_staleness, compute
advantages (and the blend) and start the optimizer step; wait for the executor's next events. With
max_staleness 0 nothing is planned before the weights it needs exist: synchronous training.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlpost.config.loader import dump_config
from rlpost.config.schema import RLPostConfig
from rlpost.io.checkpoint import latest_checkpoint, prune_checkpoints, resume_checkpoint, write_checkpoint
from rlpost.learner.batch import TrainBatch, build_train_batch, prepare_update
from rlpost.loop.batches import BatchPlanner
from rlpost.loop.parts import RunParts, build_parts
from rlpost.loop.progress import ProgressBar
from rlpost.loop.setup import config_digest, load_rng, save_rng, seed_everything
from rlpost.preflight import preflight
from rlpost.runtime.buffer import RolloutBuffer, merge_reward_metrics
from rlpost.runtime.executor import Executor, Generated, LearnerRequest, Trained

log = logging.getLogger(__name__)


class RunHooks:
    """Callbacks for tests and tools (no-ops by default)."""

    def on_dispatch(self, executor: Any, worker: int, unit: Any) -> None:
        """A unit was sent to rollout worker `worker` (Ray runtime)."""

    def on_start(self, run: TrainingRun) -> None:
        """The executor started (and a checkpoint was loaded); the loop starts next."""

    def on_train_start(self, run: TrainingRun, step: int) -> None:
        """The optimizer step of batch `step` (0-based) was started."""

    def on_step(self, run: TrainingRun, step: int, metrics: dict[str, float]) -> None:
        """Step `step` (1-based: the learner version reached) was logged."""


@dataclass
class PendingStep:
    """A batch whose optimizer step is running."""

    batch_index: int
    batch: TrainBatch | None
    """The RL batch; None for an SFT warm-up step (no rollouts)."""
    metrics: dict[str, float]
    num_groups: int


class TrainingRun:
    """One run of `config`. `fit()` trains to `train.steps` and returns the last step's metrics."""

    def __init__(self, config: RLPostConfig, executor: Executor | None = None, hooks: RunHooks | None = None,
                 engine_factory=None):
        preflight(config)
        self.config = config
        self.output_dir = Path(config.train.output_dir)
        self.digest = config_digest(config)
        # Found (and a checkpoint of another config refused) before any model loads: a mistake fails in seconds.
        self.resume_folder = resume_checkpoint(self.output_dir / "checkpoints", config.train.resume, self.digest)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        seed_everything(config.train.seed)
        self.parts: RunParts = build_parts(config)
        self.hooks = hooks or RunHooks()
        self.executor = executor or self._default_executor(engine_factory)
        self.max_staleness = config.cluster.max_staleness
        self.is_mode = config.cluster.is_mode(config.objective.name)
        self.planner = BatchPlanner(self.parts.sampler, self.parts.objective, config.train.prompts_per_step,
                                    config.train.seed, config.cluster.prompts_per_unit)
        self.buffer = RolloutBuffer(self.max_staleness)
        self.version = self.start_step = 0
        self.training: PendingStep | None = None
        self.last_checkpoint: int | None = None
        self.stop_requested = False
        self.metrics = None
        self.step_started = 0.0
        self.step_times: list[float] = []

    def _default_executor(self, engine_factory) -> Executor:
        parts = self.parts
        if self.config.cluster.runtime == "ray":
            from rlpost.runtime.ray_executor import RayExecutor

            return RayExecutor(self.config, parts.model_path, engine_factory, self.hooks)
        from rlpost.runtime.local import LocalExecutor

        return LocalExecutor(self.config, parts.model_path, parts.tokenizer)

    # ---- convenience views used by tools and tests
    @property
    def sampler(self):
        return self.parts.sampler

    @property
    def objective(self):
        return self.parts.objective

    @property
    def train_prompts(self):
        return self.parts.train_prompts

    @property
    def total_steps(self) -> int:
        return self.config.train.steps

    @property
    def warmup_steps(self) -> int:
        """Steps before the first RL batch: the SFT warm-up's (`blending.sft.warmup_steps`)."""
        return self.parts.warmup.steps if self.parts.warmup is not None else 0

    # ---- the loop

    def fit(self) -> dict[str, float]:
        """Train to `train.steps`; returns the last step's metrics (with the final evaluation)."""
        last: dict[str, float] = {}
        previous = None
        try:
            self.start()
            # After start(): ray.init installs its own SIGTERM handler.
            previous = signal.signal(signal.SIGTERM, self._request_stop)
            with ProgressBar(self.config, self.start_step) as progress:
                while self.version < self.total_steps:
                    if self.stop_requested and self.training is None and self.version not in self.planner.batches:
                        if self.last_checkpoint != self.version:
                            self.save_checkpoint(self.version)
                        break
                    last = self._turn(self.total_steps, progress) or last
            if self.version >= self.total_steps and self.config.checkpoint.export_final:
                self.executor.export_hf(self.output_dir / "final")
            last.update(self.run_summary())
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.close()
        return last

    def start(self) -> None:
        """Start the executor, resume, open the run folder's logs (`fit` calls it)."""
        from rlpost.io.metrics import MetricsLogger

        blender = self.parts.blender
        self.executor.start(needs_gradient_access=blender is not None and blender.combines_gradients)
        self.start_step = self._resume()
        self.version = self.start_step
        self.planner.start_at(max(self.start_step, self.warmup_steps))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLogger(self.output_dir, self.config.logging, self.config.model_dump(mode="json"),
                                     self.start_step)
        (self.output_dir / "config.yaml").write_text(dump_config(self.config))
        if self.start_step == 0 and self.config.eval.at_start and self.parts.test_prompts:
            self.metrics.log(0, self.evaluate())
        self.hooks.on_start(self)
        self.step_started = time.perf_counter()

    def _request_stop(self, signum, frame) -> None:
        del frame
        log.warning("signal %d: finishing the current step, then checkpointing", signum)
        self.stop_requested = True

    def run_segment(self, steps: int, max_staleness: int) -> dict[str, float]:
        """Train `steps` more steps with `max_staleness` on the started run; the segment's `run_summary`
        (benchmarks interleave sync and async segments on one set of actors). Call `start()` first.

        Between segments nothing is planned ahead, so the staleness bound can change.
        """
        if self.training is not None or self.planner.batches:
            raise RuntimeError("run_segment needs a drained pipeline (call it between segments only)")
        if self.version + steps > self.total_steps:
            raise ValueError(f"segment ends past train.steps ({self.total_steps})")
        self.max_staleness = max_staleness
        self.buffer = RolloutBuffer(max_staleness)
        self.step_times = []
        self.executor.reset_run_figures()
        self.step_started = time.perf_counter()
        end = self.version + steps
        while self.version < end:
            self._turn(end, None)
        return self.run_summary()

    def _turn(self, end: int, progress: ProgressBar | None) -> dict[str, float] | None:
        """Plan batches before `end`, start the optimizer step when its batch is ready, handle the
        executor's next events."""
        engines = self.executor.engines
        # After SIGTERM the batch in flight still trains (and is checkpointed); no new batch starts.
        planned = [] if self.stop_requested else self.planner.plan(self.version, self.max_staleness, end, engines)
        for unit in planned:
            self.executor.submit(unit)
        self._maybe_train()
        finished = None
        for event in self.executor.wait():
            if isinstance(event, Generated):
                for unit in self.planner.on_generated(event, self.max_staleness, engines):
                    self.executor.submit(unit)
            else:
                finished = self._finish_step(event)
                if progress is not None:
                    progress.show(finished)
        return finished

    # ---- the optimizer step

    def _maybe_train(self) -> None:
        if self.training is not None or self.version >= self.total_steps:
            return
        if self.version < self.warmup_steps:
            self._start_warmup_step()
            return
        state = self.planner.take(self.version)
        if state is None:
            return
        groups, metrics = self.buffer.take(state.groups, self.version)
        if not groups:
            raise RuntimeError(f"every group of batch {self.version} is staler than max_staleness {self.max_staleness}")
        batch = build_train_batch(groups, self.parts.pad_token_id)
        targets = prepare_update(self.parts.objective, batch)
        metrics.update(merge_reward_metrics(state.reward_metrics))
        for sampler_metrics in state.sampler_metrics:
            metrics.update(sampler_metrics)
        metrics.update(state.filter_metrics)
        metrics.update(targets.metrics)
        request = LearnerRequest(self.version, batch, targets)
        if self.parts.blender is not None:
            request, plan_metrics = self.parts.blend_request(self.version, groups, batch, targets)
            metrics.update(plan_metrics)
        self.training = PendingStep(self.version, batch, metrics, len(groups))
        self.executor.train(request)
        self.hooks.on_train_start(self, self.version)

    def _start_warmup_step(self) -> None:
        """SFT on worked solutions, nothing generated (the engines may already generate the first RL batch)."""
        request, metrics = self.parts.warmup.request(self.version)
        self.training = PendingStep(self.version, None, metrics, 0)
        self.executor.train(request)
        self.hooks.on_train_start(self, self.version)

    def _finish_step(self, event: Trained) -> dict[str, float]:
        from rlpost.objectives.offpolicy import combine_stats

        training, self.training = self.training, None
        self.version = event.batch_index + 1
        result = event.result
        metrics = {**training.metrics, **result.metrics}
        if result.is_stats is not None:
            metrics.update(combine_stats(result.is_stats, self.is_mode))
        if result.controller is not None:
            self.parts.blender = result.controller  # it ran `decide` (a copy, when in another process)
            metrics.update(self.parts.blender.observe(result.probe))
        metrics.update(self._step_figures(training, event))
        steps_done = self.version
        final = steps_done == self.total_steps
        every_eval = self.config.eval.every_steps
        if self.parts.test_prompts and (final or (every_eval and steps_done % every_eval == 0)):
            metrics.update(self.evaluate())
        # Logged before the checkpoint: a run killed in between resumes from the previous checkpoint
        # and rewrites this record, while the other order would lose it for good.
        self.metrics.log(steps_done, metrics)
        if self._checkpoint_due(steps_done):
            self.save_checkpoint(steps_done)
        self.hooks.on_step(self, steps_done, metrics)
        return metrics

    def _checkpoint_due(self, steps_done: int) -> bool:
        every = self.config.checkpoint.every_steps
        final = steps_done == self.total_steps and self.config.checkpoint.at_end
        return final or self.stop_requested or bool(every and steps_done % every == 0)

    def _step_figures(self, training: PendingStep, event: Trained) -> dict[str, float]:
        now = time.perf_counter()
        seconds, self.step_started = now - self.step_started, now
        self.step_times.append(seconds)
        times = self.executor.take_times()
        figures = {
            "policy/version": float(self.version),
            "perf/step_seconds": seconds,
            "perf/rollout_seconds": times.rollout,
            "perf/reward_seconds": times.reward,
            "perf/train_seconds": event.train_seconds,
            "perf/sync_seconds": times.sync,
            **times.extra,
        }
        if training.batch is None:  # an SFT warm-up step: no rollouts to describe
            return figures
        lengths = training.batch.response_lengths.float()
        return {
            **figures,
            "train/accuracy": float(training.batch.correct.float().mean()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/clip_ratio": float(training.batch.truncated.float().mean()),
            "rollout/groups": float(training.num_groups),
            "perf/tokens_per_second": float(lengths.sum()) / max(seconds, 1e-9),
        }

    def evaluate(self) -> dict[str, float]:
        prompts = self.parts.test_prompts[: self.config.eval.num_problems]
        if not prompts:
            return {}
        max_new_tokens = self.config.eval.max_new_tokens or self.config.rollout.max_new_tokens
        return self.executor.evaluate(prompts, max_new_tokens)

    # ---- checkpoints

    def _resume(self) -> int:
        folder = self.resume_folder
        if folder is None:
            return 0
        state = json.loads((folder / "trainer.json").read_text())
        step = state["step"]
        self.parts.load_state_dict(state)
        load_rng(folder, state["rng"])
        self.executor.load_learner(folder, state.get("learner_objective", {}), step)
        self.last_checkpoint = step
        log.info("resumed from %s at step %d", folder, step)
        return step

    def save_checkpoint(self, steps_done: int) -> Path:
        # During the warm-up the first RL batch may be drawn already: resuming redraws it.
        sampler_state = self.planner.sampler_state(max(steps_done, self.warmup_steps))
        blender = self.parts.blender

        def write(folder: Path) -> None:
            with_reference = blender is not None and blender.reference_was_reset
            learner_objective = self.executor.save_learner(folder, with_reference)
            state = {
                **self.parts.state_dict(),
                "step": steps_done,
                "sampler": sampler_state,
                "learner_objective": learner_objective,
                "rng": save_rng(folder),
                "runtime": {"max_staleness": self.max_staleness, "dropped_groups_total": self.buffer.dropped_total},
            }
            (folder / "trainer.json").write_text(json.dumps(state))

        root = self.output_dir / "checkpoints"
        folder = write_checkpoint(root, steps_done, write, self.digest)
        prune_checkpoints(root, self.config.checkpoint.keep_last)
        self.last_checkpoint = steps_done
        return folder

    def last_complete_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.output_dir / "checkpoints")

    # ---- the end

    def run_summary(self) -> dict[str, float]:
        """Whole-run figures: seconds per step (the first excluded when there are several) and the executor's."""
        times = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        summary = {"run/seconds_per_step": sum(times) / max(len(times), 1),
                   "run/dropped_groups": float(self.buffer.dropped_total)}
        for stale, count in self.buffer.histogram().items():
            summary[f"run/staleness/{stale}"] = float(count)
        return {**summary, **self.executor.summary(wall_seconds=sum(self.step_times))}

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.executor.close()
