"""A run interrupted at any moment and resumed with `train.resume=auto` ends exactly as an uninterrupted run.

Each case starts a real `rlpost train` process (HF engine, fixed seed), interrupts it at one moment with a
real signal or an injected failure (faults.py), checks what it left on disk (checkpoint folders are
complete or ignored), resumes it in a new process and compares every metric record with the uninterrupted
run's: a step trained twice or skipped, or any state not restored (weights, optimizer, sampler, data
order, RNG), would change them.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlpost.io.checkpoint import checkpoint_name, latest_checkpoint, verify_checkpoint
from rlpost.io.metrics import read_metrics
from tests.reliability.faults import Fault
from tests.reliability.runs import STEPS, comparable, rlpost, tiny_run, train

pytestmark = pytest.mark.slow

KILLED = -signal.SIGKILL


@dataclass(frozen=True)
class Interruption:
    fault: Fault
    returncode: int
    """Exit status of the interrupted process (negative: killed by that signal)."""
    finished_steps: int
    """Steps the interrupted process trained and logged in metrics.jsonl."""
    newest_checkpoint: int
    """Steps done by the newest complete checkpoint left behind (0: none); the resumed run starts there."""
    partial: str | None = None
    """The one unfinished `.tmp` checkpoint folder left behind, if any."""
    message: str = ""
    """A regular expression that the interrupted process's stderr must match."""


# A 4-step run checkpoints after steps 2 and 4. Call N of a per-step function happens in step N.
SIGNALS = {
    "sigkill-during-rollout": Interruption(Fault("rlpost.rollout.hf:HFEngine.generate", 3, "kill"), KILLED, 2, 2),
    "sigkill-during-reward-scoring-before-any-checkpoint": Interruption(
        Fault("rlpost.rewards.manager:RewardManager.score", 2, "kill"), KILLED, 1, 0),
    "sigkill-during-optimizer-step": Interruption(
        Fault("rlpost.learner.learner:Learner._optimizer_step", 4, "kill"), KILLED, 3, 2),
    # Every file and the manifest of ckpt 4 written and fsynced is not enough: it was not renamed yet.
    "sigkill-while-writing-checkpoint": Interruption(
        Fault("rlpost.io.checkpoint:_fsync_tree", 2, "kill"), KILLED, 4, 2, partial="ckpt-00000004.tmp"),
    # ckpt 2 renamed into place, step 3 not begun.
    "sigkill-between-checkpoint-and-next-step": Interruption(
        Fault("rlpost.loop.run:prune_checkpoints", 1, "kill"), KILLED, 2, 2),
    # SIGTERM in step 3: the step finishes, is checkpointed, and the process exits 0.
    "sigterm-during-step": Interruption(Fault("rlpost.rewards.manager:RewardManager.score", 3, "term"), 0, 3, 3),
}

# Failures that stop the run and leave the regular checkpoint of step 2, which the cases above resume from.
FAILURES = {
    # The engine raising stops the run with a traceback: a bug or out of memory, which retrying would hide.
    "rollout-engine-crash": Interruption(
        Fault("rlpost.rollout.hf:HFEngine.generate", 4, "raise"), 1, 3, 2, message="InjectedCrash: injected crash"),
    # Disk full writing ckpt 4: one line naming the checkpoint to resume from; the partial folder is removed
    # (its space is what the next attempt needs) and ckpt 2 stays intact.
    "disk-full-while-checkpointing": Interruption(
        Fault("rlpost.loop.run:save_rng", 2, "enospc"), 2, 4, 2,
        message=r"error: cannot write checkpoint ckpt-00000004 in \S+: No space left on device; "
                r"train.resume=auto continues from ckpt-00000002 once the cause is fixed\n",
    ),
}
INTERRUPTIONS = {**SIGNALS, **FAILURES}


@pytest.fixture(scope="module")
def uninterrupted(tiny_chat_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = train(tiny_run(tiny_chat_model_path, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(run_dir)
    assert [record["step"] for record in records] == list(range(1, STEPS + 1))
    return records


def assert_complete_or_ignored(root: Path, newest: int, partial: str | None) -> None:
    """Each folder with a checkpoint's final name verifies against its manifest; the rest are `.tmp` leftovers."""
    folders = sorted(root.iterdir()) if root.is_dir() else []
    final = [folder for folder in folders if not folder.name.endswith(".tmp")]
    for folder in final:
        verify_checkpoint(folder)
    assert [folder.name for folder in folders if folder not in final] == ([partial] if partial else [])
    latest = latest_checkpoint(root)
    assert (latest.name if latest else None) == (checkpoint_name(newest) if newest else None)


def resumed_from(stderr: str) -> list[int]:
    return [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", stderr)]


def interrupt(case: Interruption, overrides: list[str], run_dir: Path) -> None:
    """Run with the fault and check what the interrupted process left: exit status, message, checkpoints."""
    interrupted = train(overrides, fault=case.fault)
    assert interrupted.returncode == case.returncode, interrupted.stderr[-3000:]
    assert re.search(case.message, interrupted.stderr)
    assert [record["step"] for record in read_metrics(run_dir)] == list(range(1, case.finished_steps + 1))
    assert_complete_or_ignored(run_dir / "checkpoints", case.newest_checkpoint, case.partial)
    if case.newest_checkpoint:
        newest = run_dir / "checkpoints" / checkpoint_name(case.newest_checkpoint)
        verified = rlpost("checkpoint", "verify", str(newest))
        assert verified.returncode == 0 and verified.stdout.startswith(f"ok: step {case.newest_checkpoint},")
    assert not (run_dir / "final").exists(), "only a finished run exports its final model"


@pytest.mark.parametrize("name", SIGNALS)
def test_interrupted_run_resumes_exactly(name: str, tiny_chat_model_path: str, uninterrupted: list[dict], tmp_path: Path):
    case = SIGNALS[name]
    overrides = tiny_run(tiny_chat_model_path, tmp_path)
    interrupt(case, overrides, tmp_path)

    resumed = train(overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed_from(resumed.stderr) == ([case.newest_checkpoint] if case.newest_checkpoint else [])
    assert comparable(read_metrics(tmp_path)) == comparable(uninterrupted)
    last = tmp_path / "checkpoints" / checkpoint_name(STEPS)
    assert json.loads((last / "learner" / "learner.json").read_text())["steps_taken"] == STEPS
    assert (tmp_path / "final" / "config.json").is_file()


@pytest.mark.parametrize("name", FAILURES)
def test_failure_stops_the_run_with_a_resumable_state(name: str, tiny_chat_model_path: str, tmp_path: Path):
    case = FAILURES[name]
    interrupt(case, tiny_run(tiny_chat_model_path, tmp_path), tmp_path)
