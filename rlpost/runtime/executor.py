"""The interface between the training loop and where its work runs.

The loop (`rlpost.loop`) decides everything about a step: which prompts, how many rounds, which
groups train, the advantages, the blend, the metrics, when to evaluate and checkpoint. An executor
only carries out five kinds of work and reports when each is done:

- generate + score a `WorkUnit` (queued with `submit`; an engine at a version the unit allows runs it),
- train one batch (`train`; the new weights are then synced to the engines, versioned),
- evaluate the current policy (`evaluate`, blocking),
- save / load / export the learner's state.

`LocalExecutor` runs everything in this process, one thing at a time; `RayExecutor` runs it on Ray
actors, with its own scheduling, weight-sync transports and fault handling. Both return the same
events, so the loop is one program and synchronous training is `max_staleness: 0` of the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlpost.runtime.buffer import WorkUnit
from rlpost.types import Group, Prompt


@dataclass
class LearnerRequest:
    """One optimizer step: an RL batch, or a blended step planned by a blending controller."""

    batch_index: int
    batch: Any
    """The step's `TrainBatch` (the RL side; None when a blended plan trains SFT only)."""
    targets: Any
    """Its `PolicyTargets` (advantages, token weights)."""
    blend: Any = None
    """A `rlpost.blending.runner.BlendUpdate` (plan, SFT and validation batches, controller), or None."""


@dataclass
class LearnerResult:
    """What an optimizer step reports back."""

    metrics: dict[str, float]
    """The learner's step metrics, reduced over every rank."""
    is_stats: list[dict[str, float]] | None = None
    """Every rank's importance-weight accumulators (`rlpost.objectives.offpolicy.combine_stats`), or None."""
    probe: Any = None
    """A blended step's `BlendProbe`."""
    controller: Any = None
    """A blended step's controller after `decide` (a copy when the step ran in another process)."""


@dataclass
class Generated:
    """A work unit generated and scored."""

    unit: WorkUnit
    groups: list[Group]
    reward_metrics: dict[str, float]
    engine_version: int
    rollout_seconds: float
    reward_seconds: float


@dataclass
class Trained:
    """An optimizer step finished; the learner is at version `batch_index + 1`."""

    batch_index: int
    result: LearnerResult
    train_seconds: float


@dataclass
class ExecutorInfo:
    """Busy time of the executor's parts since the last `take_times` (for step metrics)."""

    rollout: float = 0.0
    reward: float = 0.0
    learner: float = 0.0
    sync: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def busy_summary(rollout_seconds: float, learner_seconds: float, engines: int, wall_seconds: float) -> dict[str, float]:
    """Whole-run busy fractions: rollout over every engine's time, learner over the wall time."""
    wall = wall_seconds or 1e-9
    return {
        "run/rollout_busy_frac": min(1.0, rollout_seconds / (max(engines, 1) * wall)),
        "run/learner_busy_frac": min(1.0, learner_seconds / wall),
    }


class Executor:
    """Runs the loop's work. Subclasses implement every method."""

    def start(self, needs_gradient_access: bool) -> None:
        """Start engines, learner and reward workers. `needs_gradient_access`: the run rewrites gradients
        between backward passes (a weight-deferring blend), checked here before any step."""
        raise NotImplementedError

    def submit(self, unit: WorkUnit) -> None:
        """Queue a generation request; it runs on an engine whose version the unit allows."""
        raise NotImplementedError

    def train(self, request: LearnerRequest) -> None:
        """Start the optimizer step of batch `request.batch_index` (the learner is at that version)."""
        raise NotImplementedError

    def wait(self) -> list[Generated | Trained]:
        """Block until at least one submitted unit or the training step finished; those events."""
        raise NotImplementedError

    def evaluate(self, prompts: list[Prompt], max_new_tokens: int) -> dict[str, float]:
        """Evaluate the current policy on `prompts` (greedy, eval rewards); blocks."""
        raise NotImplementedError

    def load_learner(self, folder: Path, learner_objective: dict[str, Any], version: int) -> None:
        """Load a checkpoint's learner state, make it version `version` and sync it to the engines."""
        raise NotImplementedError

    def save_learner(self, folder: Path, with_reference: bool) -> dict[str, Any]:
        """Write the learner's state (and the KL reference when asked) into `folder`; returns the
        learner-side objective state for `trainer.json`."""
        raise NotImplementedError

    def export_hf(self, folder: Path) -> None:
        """Write a Hugging Face folder of the current policy."""
        raise NotImplementedError

    def take_times(self) -> ExecutorInfo:
        """Busy times since the previous call."""
        raise NotImplementedError

    @property
    def engines(self) -> int:
        """Rollout engines alive: a generation round is split into this many units."""
        return 1

    def summary(self, wall_seconds: float) -> dict[str, float]:
        """Whole-run figures of the executor (`run/...`) over `wall_seconds` of training."""
        del wall_seconds
        return {}

    def reset_run_figures(self) -> None:
        """Start the whole-run figures of `summary` afresh (benchmarks measure segments of a run)."""

    def close(self) -> None:
        raise NotImplementedError
