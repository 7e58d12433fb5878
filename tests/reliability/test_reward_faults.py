"""A training run survives every kind of reward failure: each is scored `failure_score`, counted, and the run
finishes all its steps with a complete checkpoint (the unit tests in tests/rewards/test_manager.py cover the
scoring of each kind; this is what a whole `rlpost train` run does with them)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rlpost.io.checkpoint import checkpoint_name, latest_checkpoint
from rlpost.io.metrics import read_metrics
from rlpost.rewards import FAILURE_KINDS
from tests.reliability.runs import STEPS, tiny_run, train

pytestmark = pytest.mark.slow

# Each failure happens exactly once in the run, whichever worker process gets the call: the first call to
# claim a flag file (created atomically) fails that way, later calls score the parity of the completion.
BREAKS_ONCE_EACH_WAY = """
import math, os, time

def _first(flags, kind):
    try:
        os.close(os.open(os.path.join(flags, kind), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True

def breaks_once_each_way(prompt, completion, *, flags):
    if _first(flags, "crash"):
        os._exit(1)  # the worker process dies
    if _first(flags, "timeout"):
        time.sleep(3600)  # hangs: the worker is killed at reward.timeout_seconds
    if _first(flags, "exception"):
        raise ValueError("a bug in the reward")
    if _first(flags, "non_number"):
        return "1.0"
    if _first(flags, "nan"):
        return math.nan
    return float(len(completion) % 2 == 0)
"""


def test_run_counts_every_reward_failure_and_finishes(tiny_chat_model_path: str, tmp_path: Path):
    reward_file = tmp_path / "breaks_once_each_way.py"
    reward_file.write_text(textwrap.dedent(BREAKS_ONCE_EACH_WAY))
    flags = tmp_path / "flags"
    flags.mkdir()
    run_dir = tmp_path / "run"
    result = train(tiny_run(
        tiny_chat_model_path, run_dir,
        f"reward.functions=[{{name: '{reward_file}:breaks_once_each_way', kwargs: {{flags: '{flags}'}}}}]",
        "reward.timeout_seconds=2", "reward.failure_score=-1",
    ))

    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(run_dir)
    assert [record["step"] for record in records] == list(range(1, STEPS + 1))
    assert {kind: sum(r[f"reward/failures/{kind}"] for r in records) for kind in FAILURE_KINDS} == dict.fromkeys(FAILURE_KINDS, 1.0)
    assert sum(r["reward/failures"] for r in records) == len(FAILURE_KINDS)
    assert sum(r["reward/worker_restarts"] for r in records) == 2, "the crashed and the hung worker were replaced"
    assert f"reward '{reward_file}:breaks_once_each_way' failed (crash)" in result.stderr  # logged, with the row
    assert latest_checkpoint(run_dir / "checkpoints").name == checkpoint_name(STEPS)
    assert (run_dir / "final" / "config.json").is_file()
