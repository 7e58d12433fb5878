"""Reward functions written for TRL (batched, lists in and out) and verl (`compute_score`) run unchanged:
detected or declared, their arguments mapped from the row, scored in worker processes with the same
timeouts and failure counting as rlpost's own functions."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from rlpost.config.schema import RewardConfig, RewardFunctionConfig
from rlpost.rewards import FAILURE_KINDS, RewardFunctionError, RewardManager, bind_reward, check_call, get_reward_fn
from rlpost.types import Completion, Group, Prompt

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRL = f"{EXAMPLES / 'trl_style_reward.py'}"
VERL = f"{EXAMPLES / 'verl_style_reward.py'}"
FAILURE_SCORE = -1.0

MISBEHAVING = """
import os, time

def trl_batch(completions, prompts, **columns):
    # One completion of the group says what the whole call does; otherwise each text is its score.
    if "raise" in completions:
        raise ValueError("boom")
    if "hang" in completions:
        while True:
            time.sleep(60)
    if "crash" in completions:
        os._exit(3)
    if "short" in completions:
        return [1.0]
    if "text" in completions:
        return "1.0"
    if "nan" in completions:
        return [float("nan")] * len(completions)
    return [None if text == "none" else 0.0 if text.startswith("verl") else float(text) for text in completions]

def verl_score(data_source, solution_str, ground_truth, extra_info=None):
    # Misbehaves only on texts that start with "verl", so that the TRL tests count only TRL failures.
    if solution_str == "verl raise":
        raise ValueError("boom")
    if solution_str == "verl no score":
        return {"acc": True}
    if solution_str == "verl hang":
        while True:
            time.sleep(60)
    return {"score": 0.5, "acc": True}

def plain(prompt, completion):
    return 1.0
"""


def group(texts: list[str], answer: str = "7", prompt_id: str = "p0", **fields) -> Group:
    row = {"question": "What is 3 + 4?", "answer": answer, "level": 1, **fields}
    prompt = Prompt(prompt_id=prompt_id, text=f"prompt {prompt_id}", token_ids=[0], row=row)
    return Group(prompt, [Completion([], text, [], "stop") for text in texts])


def config_for(*functions: RewardFunctionConfig, **settings) -> RewardConfig:
    settings = {"num_workers": 2, "timeout_seconds": 1.0, "failure_score": FAILURE_SCORE, **settings}
    return RewardConfig(functions=list(functions), **settings)


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("foreign") / "misbehaving.py"
    path.write_text(textwrap.dedent(MISBEHAVING))
    return path


@pytest.mark.parametrize(
    ("spec", "style", "batched"),
    [
        (f"{TRL}:accuracy_reward", "trl", True),
        (f"{TRL}:format_reward", "trl", True),
        (f"{VERL}:compute_score", "verl", False),
        (f"{EXAMPLES / 'custom_reward.py'}:length_penalised_correctness", "rlpost", False),
    ],
)
def test_auto_detects_the_style_from_the_signature(spec, style, batched):
    bound = bind_reward(get_reward_fn(spec), spec)
    assert (bound.style, bound.batched) == (style, batched)
    assert bind_reward(get_reward_fn(spec), spec, style=style).style == style


def test_trl_gets_lists_of_completions_prompts_and_columns():
    spec = f"{TRL}:accuracy_reward"
    bound = bind_reward(get_reward_fn(spec), spec, {"scale": 2})
    row = {"question": "What is 3 + 4?", "answer": "7", "level": 1, "prompt": "a prompt column"}
    completions = ["\\boxed{7}", "it is 7", "\\boxed{8}"]
    args, keywords = bound.arguments("the prompt", completions, row)
    assert args == ()
    assert keywords == {
        "completions": completions,
        "prompts": ["the prompt"] * 3,
        "question": ["What is 3 + 4?"] * 3,
        "answer": ["7"] * 3,
        "level": [1] * 3,
        "scale": 2,  # config kwargs stay plain values
    }  # the `prompt` column is left out, as TRL leaves it out
    assert bound("the prompt", completions, row) == [1.0, 1.0, 0.0]  # math-verify, in the function itself
    assert bound("p", ["\\boxed{1}"], {**row, "answer": ""}) == [None]  # no gold answer: does not apply


def test_verl_gets_data_source_solution_ground_truth_and_extra_info():
    spec = f"{VERL}:compute_score"
    bound = bind_reward(get_reward_fn(spec), spec, {"format_score": 0.1}, data_source="openai/gsm8k")
    row = {"question": "q", "answer": "7", "level": 2}
    args, keywords = bound.arguments("the prompt", "#### 7", row)
    assert args == ()
    assert keywords == {"data_source": "openai/gsm8k", "solution_str": "#### 7", "ground_truth": "7",
                        "extra_info": row, "format_score": 0.1}
    # The dict's `score` is the score; the row's own data_source wins over the config's.
    assert bound("p", "#### 7", row) == 1.0 and bound("p", "#### 8", row) == 0.1
    assert bound("p", "\\boxed{7}", {**row, "data_source": "math"}) == 1.0
    assert bound("p", "\\boxed{7}", row) == 0.0  # gsm8k wants `#### 7`


def test_examples_score_like_the_builtin_in_workers():
    functions = [
        RewardFunctionConfig(name="math_verify"),
        RewardFunctionConfig(name=f"{TRL}:accuracy_reward"),
        RewardFunctionConfig(name=f"{TRL}:format_reward", weight=0.5, style="trl"),
        RewardFunctionConfig(name=f"{VERL}:compute_score", data_source="math"),
    ]
    groups = [group(["\\boxed{7}", "so it is 7", "\\boxed{8}"]),
              group(["#### 7", "\\boxed{7}"], prompt_id="p1", data_source="openai/gsm8k")]
    with RewardManager(config_for(*functions, timeout_seconds=30.0, correct_reward=functions[1].name)) as manager:
        metrics = manager.score(groups)
    math, trl, trl_format, verl = manager.names
    first, second = groups
    assert first.reward_components[math] == first.reward_components[trl] == [1.0, 1.0, 0.0]
    assert first.reward_components[verl] == [1.0, 1.0, 0.0]
    assert first.reward_components[trl_format] == [1.0, 0.0, 1.0]
    assert first.rewards == [3.5, 3.0, 0.5]
    assert first.correct == [True, True, False]  # correct_reward: the TRL accuracy
    assert second.reward_components[verl] == [1.0, 0.0]  # the row's data_source picks the GSM8K rule
    assert second.reward_components[trl] == [1.0, 1.0]  # math-verify reads the bare 7 too
    assert metrics["reward/failures"] == 0.0


@pytest.fixture(scope="module")
def trl_manager(reward_file):
    functions = [RewardFunctionConfig(name=f"{reward_file}:trl_batch"),
                 RewardFunctionConfig(name=f"{reward_file}:verl_score", style="verl")]
    with RewardManager(config_for(*functions, log_failures=1000)) as manager:
        yield manager


@pytest.mark.parametrize(
    ("bad", "kind"),
    [("raise", "exception"), ("short", "non_number"), ("text", "non_number"), ("nan", "nan"),
     ("hang", "timeout"), ("crash", "crash")],
)
def test_a_failed_trl_batch_fails_each_completion_of_its_group(trl_manager, bad, kind):
    groups = [group(["1", bad, "2"]), group(["3", "4"], prompt_id="p1")]
    metrics = trl_manager.score(groups)
    trl, verl = trl_manager.names
    assert groups[0].reward_components[trl] == [FAILURE_SCORE] * 3
    assert groups[1].reward_components[trl] == [3.0, 4.0]  # another group's call is unaffected
    assert groups[0].reward_components[verl] == [0.5] * 3
    assert {k: metrics[f"reward/failures/{k}"] for k in FAILURE_KINDS} == {k: 3.0 * (k == kind) for k in FAILURE_KINDS}
    assert metrics["reward/worker_restarts"] == float(kind in ("timeout", "crash"))
    later = [group(["5", "none"])]
    assert trl_manager.score(later)["reward/failures"] == 0.0
    assert later[0].reward_components[trl] == [5.0, 0.0]  # None: does not apply, scores 0, not a failure


def test_a_failed_trl_batch_is_logged_once(trl_manager, caplog):
    groups = [group(["1", "raise", "2"]), group(["raise", "3"], prompt_id="p1")]
    with caplog.at_level(logging.WARNING, logger="rlpost.rewards.manager"):
        metrics = trl_manager.score(groups)
    assert metrics["reward/failures/exception"] == 5.0  # each completion is counted
    logged = [record.getMessage() for record in caplog.records if "trl_batch' failed" in record.getMessage()]
    assert len(logged) == 2 and "on prompt p0" in logged[0] and "on prompt p1" in logged[1]
    assert all("ValueError: boom" in message for message in logged)


def test_verl_failures_are_scored_and_counted(trl_manager, caplog):
    groups = [group(["2", "verl no score", "verl hang", "verl raise"])]
    with caplog.at_level(logging.WARNING, logger="rlpost.rewards.manager"):
        metrics = trl_manager.score(groups)
    trl, verl = trl_manager.names
    assert groups[0].reward_components[verl] == [0.5, FAILURE_SCORE, FAILURE_SCORE, FAILURE_SCORE]
    assert groups[0].reward_components[trl] == [2.0, 0.0, 0.0, 0.0]
    expected = {"exception": 1.0, "timeout": 1.0, "non_number": 1.0}
    assert {k: metrics[f"reward/failures/{k}"] for k in FAILURE_KINDS} == {k: expected.get(k, 0.0) for k in FAILURE_KINDS}
    assert metrics["reward/worker_restarts"] == 1.0
    assert any("with no 'score' key" in record.getMessage() for record in caplog.records)


def test_a_trl_batch_has_the_timeout_of_its_completions(reward_file, tmp_path):
    """The limit of a batched call is timeout_seconds per completion it scores: a group of slow but
    finishing completions is not cut off because they are scored together."""
    slow = tmp_path / "slow.py"
    slow.write_text("import time\n\ndef slow(completions, **columns):\n"
                    "    time.sleep(0.5 * len(completions))\n    return [1.0] * len(completions)\n")
    config = config_for(RewardFunctionConfig(name=f"{slow}:slow"), num_workers=1)
    groups = [group(["a", "b", "c", "d"])]
    with RewardManager(config) as manager:
        metrics = manager.score(groups)
    assert metrics["reward/failures"] == 0.0 and groups[0].rewards == [1.0] * 4


@pytest.mark.parametrize(
    ("function", "settings", "expected"),
    [
        ("plain", {"style": "trl"}, r"style trl calls fn\(completions.* has no parameter 'completions'"),
        ("plain", {"style": "verl"}, r"style verl calls compute_score\(.* has no parameter 'solution_str'"),
        ("trl_batch", {"data_source": "gsm8k"}, r"data_source is set, but the function is called in the trl style"),
        ("trl_batch", {"kwargs": {"completions": []}}, r"kwargs has 'completions', which rlpost passes itself"),
        ("verl_score", {"kwargs": {"scale": 2}}, r"kwargs has 'scale', which verl_score\(.*\) does not accept"),
    ],
)
def test_style_errors_name_the_reward(reward_file, function, settings, expected):
    spec = f"{reward_file}:{function}"
    with pytest.raises(RewardFunctionError, match=expected) as error:
        RewardManager(config_for(RewardFunctionConfig(name=spec, **settings)))
    assert str(error.value).startswith(f"reward {spec!r}: ") and "\n" not in str(error.value)


def test_check_call_finds_a_column_the_rows_lack(tmp_path):
    path = tmp_path / "needs.py"
    path.write_text("def needs_solution(completions, solution):\n    return [0.0] * len(completions)\n")
    spec = f"{path}:needs_solution"
    bound = bind_reward(get_reward_fn(spec), spec)
    assert check_call(bound, spec, {"answer": "7", "solution": "4 + 3 = 7"}) is None
    with pytest.raises(RewardFunctionError, match=r"missing a required argument: 'solution'.*fields: answer"):
        check_call(bound, spec, {"answer": "7"})
