"""RewardManager: weighted sums, components and correctness, and failures in worker processes
(exception, timeout, non-number, NaN, crash) that are scored, counted, logged, and never stall scoring."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rlpost.config.schema import RewardConfig, RewardFunctionConfig
from rlpost.rewards import (
    FAILURE_KINDS,
    RewardFunctionError,
    RewardManager,
    RewardWorkerError,
    register_reward,
)
from rlpost.rewards.worker import classify
from rlpost.types import Completion, Group, Prompt

REPO = Path(__file__).resolve().parents[2]
FAILURE_SCORE = -1.0

MISBEHAVING = """
import math, os, subprocess, time

def misbehave(prompt, completion, **row_fields):
    # The completion text says what to do; a plain number is returned as the score.
    if completion.startswith("spawn "):  # start a long child process, note its pid, then hang
        child = subprocess.Popen(["sleep", "600"])
        with open(completion.split(" ", 1)[1], "w") as handle:
            handle.write(str(child.pid))
        while True:
            time.sleep(60)
    if completion == "raise":
        raise ValueError("boom")
    if completion == "hang":
        while True:
            time.sleep(60)
    if completion == "crash":
        os._exit(3)
    if completion == "text":
        return "1.0"
    if completion == "none":
        return None
    if completion == "nan":
        return math.nan
    if completion == "inf":
        return -math.inf
    if completion == "true":
        return True
    if completion == "pid":
        return float(os.getpid())
    return float(completion)

def failing_warmup():
    raise RuntimeError("cannot load the judge model")

def needs_warmup(prompt, completion, **row_fields):
    return 1.0

needs_warmup.warmup = failing_warmup
"""


def groups_of(*texts: list[str], answer: str = "7") -> list[Group]:
    """One group per list of completion texts, each on its own prompt."""
    groups = []
    for index, completions in enumerate(texts):
        row = {"question": f"question {index}", "answer": answer, "level": 1}
        prompt = Prompt(prompt_id=f"p{index}", text=f"prompt {index}", token_ids=[index], row=row)
        groups.append(Group(prompt, [Completion([], text, [], "stop") for text in completions]))
    return groups


def config_for(spec: str, **settings) -> RewardConfig:
    settings = {"num_workers": 2, "timeout_seconds": 2.0, "failure_score": FAILURE_SCORE, **settings}
    return RewardConfig(functions=[RewardFunctionConfig(name=spec)], **settings)


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rewards") / "misbehaving.py"
    path.write_text(textwrap.dedent(MISBEHAVING))
    return path


@pytest.fixture(scope="module")
def manager(reward_file):
    with RewardManager(config_for(f"{reward_file}:misbehave")) as manager:
        yield manager


@pytest.mark.parametrize(
    ("bad", "kind"),
    [("raise", "exception"), ("text", "non_number"), ("none", "non_number"), ("nan", "nan"), ("inf", "nan"),
     ("hang", "timeout"), ("crash", "crash")],
)
def test_each_failure_scores_failure_score_and_is_counted(manager, bad, kind):
    groups = groups_of(["1", bad, "2"])
    metrics = manager.score(groups)
    assert groups[0].rewards == [1.0, FAILURE_SCORE, 2.0]
    assert groups[0].correct == [True, False, True]
    assert metrics["reward/failures"] == 1.0
    assert {k: metrics[f"reward/failures/{k}"] for k in FAILURE_KINDS} == {k: float(k == kind) for k in FAILURE_KINDS}
    assert metrics["reward/worker_restarts"] == float(kind in ("timeout", "crash"))
    # The manager keeps working after any failure.
    later = groups_of(["3", "4"])
    assert manager.score(later)["reward/failures"] == 0.0
    assert later[0].rewards == [3.0, 4.0]


def test_mixed_failures_across_groups_keep_their_places(manager):
    groups = groups_of(["1", "raise", "2", "hang"], ["crash", "3", "nan", "4", "text", "5"], ["true"])
    metrics = manager.score(groups)
    f = FAILURE_SCORE
    assert [group.rewards for group in groups] == [[1.0, f, 2.0, f], [f, 3.0, f, 4.0, f, 5.0], [1.0]]
    assert metrics["reward/failures"] == 5.0
    assert metrics["reward/failures/timeout"] == 1.0 and metrics["reward/failures/crash"] == 1.0
    assert metrics["reward/mean"] == pytest.approx(sum(sum(g.rewards) for g in groups) / 11)


def test_timeout_also_ends_processes_the_reward_started(manager, tmp_path):
    pid_file = tmp_path / "child.pid"
    groups = groups_of([f"spawn {pid_file}", "1"])
    metrics = manager.score(groups)
    assert groups[0].rewards == [FAILURE_SCORE, 1.0]
    assert metrics["reward/failures/timeout"] == 1.0
    child = int(pid_file.read_text())
    # SIGKILL was sent to the worker's whole process group; the kernel ends the child asynchronously,
    # so give it a moment (a generous bound, not a speed requirement).
    for _ in range(300):
        if not _running(child):
            break
        time.sleep(0.1)
    assert not _running(child)


def _running(pid: int) -> bool:
    """False once `pid` is gone or a zombie waiting to be reaped (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_empty_batch(manager):
    metrics = manager.score([])
    assert metrics["reward/mean"] == 0.0 and metrics["reward/failures"] == 0.0


def test_weighted_sum_components_and_correct(monkeypatch):
    monkeypatch.chdir(REPO)  # the example is given by a relative path, as in a config
    functions = [
        RewardFunctionConfig(name="math_verify"),
        RewardFunctionConfig(name="boxed_format", weight=0.5),
        RewardFunctionConfig(name="examples/custom_reward.py:length_penalised_correctness", weight=2.0,
                             kwargs={"target_chars": 1000}),
        RewardFunctionConfig(name="boxed_format", weight=0.0),
    ]
    groups = groups_of(["\\boxed{7}", "so it is 7", "\\boxed{8}"], ["8"])
    with RewardManager(RewardConfig(functions=functions, num_workers=2)) as manager:
        assert manager.names == ["math_verify", "boxed_format", functions[2].name, "boxed_format#2"]
        metrics = manager.score(groups)
    first, second = groups
    assert first.reward_components == {
        "math_verify": [1.0, 1.0, 0.0],
        "boxed_format": [1.0, 0.0, 1.0],
        functions[2].name: [1.0, 1.0, 0.0],
        "boxed_format#2": [1.0, 0.0, 1.0],
    }
    assert first.rewards == [1.0 + 0.5 + 2.0, 1.0 + 2.0, 0.5]
    assert first.correct == [True, True, False]  # the first function decides by default
    assert second.rewards == [0.0] and second.correct == [False]
    assert metrics["reward/mean"] == pytest.approx((3.5 + 3.0 + 0.5 + 0.0) / 4)
    assert metrics["reward/std"] == pytest.approx(np.std([3.5, 3.0, 0.5, 0.0]))
    assert metrics["reward/accuracy"] == 0.5
    assert metrics["reward/component/boxed_format"] == 0.5
    assert metrics["reward/component/math_verify"] == 0.5


def test_correct_reward_picks_the_function(reward_file):
    config = RewardConfig(
        functions=[RewardFunctionConfig(name=f"{reward_file}:misbehave"), RewardFunctionConfig(name="boxed_format")],
        correct_reward="boxed_format",
        num_workers=1,
    )
    groups = groups_of(["1", "\\boxed{0}"], answer="0")
    with RewardManager(config) as manager:
        manager.score(groups)
    assert groups[0].reward_components["boxed_format"] == [0.0, 1.0]
    assert groups[0].correct == [False, True]


def test_unknown_correct_reward():
    config = RewardConfig(functions=[RewardFunctionConfig(name="math_verify")], correct_reward="math-verify")
    with pytest.raises(RewardFunctionError, match=r"correct_reward = 'math-verify'.*did you mean 'math_verify'"):
        RewardManager(config)


def test_failures_are_logged_up_to_the_limit(reward_file, caplog):
    groups = groups_of(["raise", "text", "none"])
    with RewardManager(config_for(f"{reward_file}:misbehave", log_failures=2)) as manager:
        with caplog.at_level(logging.WARNING, logger="rlpost.rewards.manager"):
            metrics = manager.score(groups)
    assert metrics["reward/failures"] == 3.0
    records = [record.getMessage() for record in caplog.records if record.name == "rlpost.rewards.manager"]
    assert len(records) == 2
    assert "failed (exception) on prompt p0" in records[0]
    assert "ValueError: boom" in records[0] and "misbehaving.py" in records[0]
    assert "'question': 'question 0'" in records[0] and "completion: 'raise'" in records[0]
    assert "failed (non_number)" in records[1] and "returned str '1.0'" in records[1]
    assert "further reward failures are only counted" in records[1]


def test_workers_are_reused_then_stopped(reward_file):
    manager = RewardManager(config_for(f"{reward_file}:misbehave"))
    first, second = groups_of(["pid"] * 8), groups_of(["pid"] * 8)
    manager.score(first)
    manager.score(second)
    pids = {int(value) for value in first[0].rewards + second[0].rewards}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    manager.close()
    manager.close()  # idempotent
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="after close"):
        manager.score(first)


def test_failing_warmup_is_a_worker_error(reward_file):
    with RewardManager(config_for(f"{reward_file}:needs_warmup", num_workers=1)) as manager:
        with pytest.raises(RewardWorkerError, match="cannot load the judge model"):
            manager.score(groups_of(["1"]))


def test_loading_errors_come_before_any_worker(tmp_path):
    with pytest.raises(RewardFunctionError, match="does not exist"):
        RewardManager(config_for(f"{tmp_path / 'nope.py'}:fn"))


@pytest.mark.parametrize(
    ("value", "kind", "score"),
    [
        (0.5, "ok", 0.5),
        (3, "ok", 3.0),
        (True, "ok", 1.0),  # a bool is an int: "correct or not" rewards work as written
        (np.float32(0.25), "ok", 0.25),
        (np.int64(2), "ok", 2.0),
        ("1.0", "non_number", None),
        (None, "non_number", None),
        ([1.0], "non_number", None),
        (1j, "non_number", None),
        (math.nan, "nan", None),
        (math.inf, "nan", None),
    ],
)
def test_classify(value, kind, score):
    outcome = classify(value)
    assert outcome.kind == kind
    if score is not None:
        assert outcome.value == score


def test_registered_function_must_be_importable_by_workers():
    def local_reward(prompt, completion, **row_fields):
        return 1.0

    register_reward("test_local_reward")(local_reward)
    with pytest.raises(RewardFunctionError, match="cannot be sent to worker processes"):
        RewardManager(RewardConfig(functions=[RewardFunctionConfig(name="test_local_reward")]))


def test_a_reward_worker_starts_without_the_config_schema_or_torch():
    """Worker processes import `rlpost.rewards.worker`; the manager's imports (the whole schema) stay out."""
    probe = "import sys; from rlpost.rewards.worker import main; print(sorted({'torch', 'rlpost.config'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
