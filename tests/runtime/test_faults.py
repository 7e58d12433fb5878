"""Faults and slow workers, with real engines: a slow engine never breaks the staleness bound, a worker
killed mid-generation is restarted and its groups regenerated, a stuck weight sync fails naming the engine."""

from __future__ import annotations

import os
import signal
import threading

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from rlpost.io.metrics import read_metrics
from rlpost.loop import RunHooks, TrainingRun
from rlpost.runtime import WeightSyncError
from tests.runtime.helpers import SlowEngineFactory, StuckSyncFactory, runtime_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.deepspeed]

MAX_STALENESS = 1
STEPS = 3
SLOW_SECONDS = 2.0


class KillSlowWorkerOnce(RunHooks):
    """SIGKILLs worker 0 half a second into its first request (it sleeps SLOW_SECONDS before generating),
    and records the policy versions of every batch the learner trains on."""

    def __init__(self) -> None:
        self.dispatches = 0
        self.killed_pid: int | None = None
        self.trained: list[tuple[int, list[int]]] = []

    def on_dispatch(self, executor, worker: int, unit) -> None:
        if worker != 0 or unit.kind != "train":
            return
        self.dispatches += 1
        if self.dispatches == 1 and self.killed_pid is None:
            self.killed_pid = executor.workers[0].info["pid"]
            threading.Timer(0.5, os.kill, args=(self.killed_pid, signal.SIGKILL)).start()

    def on_train_start(self, trainer: TrainingRun, step: int) -> None:
        self.trained.append((step, trainer.training.batch.policy_version.tolist()))

    def on_step(self, trainer: TrainingRun, step: int, metrics: dict[str, float]) -> None:
        self.workers = [(slot.alive, slot.info["pid"], slot.restarts) for slot in trainer.executor.workers]


@pytest.fixture(scope="module")
def faulty_run(model_path, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("faults")
    config = runtime_config(
        model_path, output_dir, "rollout.engine=hf", f"train.steps={STEPS}", "cluster.num_rollout_workers=2",
        f"cluster.max_staleness={MAX_STALENESS}", "rollout.dtype=bfloat16",
        # Evaluation requests share the workers: before training, after step 2 (queued) and at the end.
        "data.test=arithmetic", "data.arithmetic.test_size=8", "eval.num_problems=2", "eval.max_new_tokens=8",
        "eval.at_start=true", "eval.every_steps=2",
    )
    hooks = KillSlowWorkerOnce()
    trainer = TrainingRun(config, engine_factory=SlowEngineFactory({0: SLOW_SECONDS}), hooks=hooks)
    summary = trainer.fit()
    return hooks, summary, read_metrics(output_dir)


def test_slow_engine_never_exceeds_the_staleness_bound(faulty_run) -> None:
    hooks, summary, records = faulty_run
    assert [step for step, _ in hooks.trained] == list(range(STEPS))
    for step, versions in hooks.trained:
        assert versions, f"batch {step} is empty"
        assert max(step - v for v in versions) <= MAX_STALENESS, f"batch {step} trained on versions {versions}"
    assert all(r["async/staleness_max"] <= MAX_STALENESS for r in records if r["step"] > 0)
    assert summary["run/dropped_groups"] == 0


def test_killed_worker_is_restarted_and_its_groups_regenerated(faulty_run) -> None:
    hooks, summary, records = faulty_run
    assert hooks.killed_pid is not None
    assert [r["step"] for r in records if r["step"] > 0] == list(range(1, STEPS + 1))
    # Every step trained on the full batch: the lost request was regenerated, not silently missing.
    assert all(r["rollout/groups"] == 2 for r in records if r["step"] > 0)
    assert summary["run/worker_restarts"] >= 1
    assert summary["run/regenerated_units"] >= 1
    # Worker 0 came back as a new process and kept working.
    alive, pid, restarts = hooks.workers[0]
    assert alive and pid != hooks.killed_pid and restarts >= 1


def test_evaluation_runs_on_the_workers_between_training_requests(faulty_run) -> None:
    _, _, records = faulty_run
    evaluated = {r["step"]: r for r in read_metrics_with_eval(records)}
    assert 0 in evaluated and STEPS in evaluated, f"evaluations at steps {sorted(evaluated)}"
    assert evaluated[0]["eval/policy_version"] == 0
    assert evaluated[STEPS]["eval/policy_version"] == STEPS, "the final evaluation uses the final weights"
    assert all(0 <= r["eval/accuracy"] <= 1 for r in evaluated.values())


def read_metrics_with_eval(records: list[dict]) -> list[dict]:
    return [r for r in records if "eval/accuracy" in r]


def test_stuck_weight_sync_fails_with_an_error_naming_the_engine(model_path, tmp_path) -> None:
    # Colocated placement (one bundle holding the learner rank and the worker) trains the first step.
    config = runtime_config(model_path, tmp_path, "rollout.engine=hf", "train.steps=2", "cluster.sync_timeout_seconds=3",
                            "cluster.placement=colocated")
    trainer = TrainingRun(config, engine_factory=StuckSyncFactory(stuck=0, seconds=30))
    with pytest.raises(WeightSyncError, match=r"version 1 to rollout worker 0 \(HFEngine, pid \d+"):
        trainer.fit()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
