"""Built-in rewards (real math-verify) and the registry."""

from __future__ import annotations

import pickle

import pytest

from rlpost.rewards import (
    REWARDS,
    RewardFunctionError,
    bind_reward,
    boxed_format_reward,
    get_reward_fn,
    math_verify_reward,
    register_reward,
    reward_names,
)
from rlpost.rewards.builtin import boxed_contents


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("3 + 4 = 7. The answer is \\boxed{7}.", "7", 1.0),  # boxed, correct
        ("3 + 4 = 7, so Tom has 7 apples.", "7", 1.0),  # unboxed, correct
        ("The answer is \\boxed{8}.", "7", 0.0),  # boxed, wrong
        ("Tom has 8 apples.", "7", 0.0),  # unboxed, wrong
        ("\\boxed{12.0}", "12", 1.0),  # same number written differently
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("so it is \\boxed{\\sqrt{2}}", "\\sqrt{2}", 1.0),  # a bare LaTeX gold answer
        ("\\boxed{1024}", "2^{10}", 1.0),
        ("\\boxed{1000}", "1,000", 1.0),
        ("\\boxed{-3}", "-3", 1.0),
        ("\\boxed{5}", "$5$", 1.0),  # gold already in LaTeX delimiters
        ("", "7", 0.0),
        ("\\boxed{}", "7", 0.0),
    ],
)
def test_math_verify(completion, answer, expected):
    assert math_verify_reward("prompt", completion, answer=answer, question="q") == expected


def test_math_verify_takes_the_last_boxed_answer_over_earlier_numbers():
    assert math_verify_reward("p", "First 3 + 4 = 8? No: \\boxed{7}", answer="7") == 1.0


def test_math_verify_unparseable_gold_raises():
    with pytest.raises(ValueError, match="cannot parse the gold answer"):
        math_verify_reward("p", "\\boxed{1}", answer="")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("The answer is \\boxed{7}.", 1.0),
        ("\\boxed{\\frac{1}{2}}", 1.0),  # nested braces
        ("\\boxed{ x }", 1.0),
        ("The answer is 7.", 0.0),
        ("\\boxed{}", 0.0),
        ("\\boxed{   }", 0.0),
        ("\\boxed{7", 0.0),  # never closed (cut off by the token limit)
        ("\\boxed{} then \\boxed{3}", 0.0),  # one box, not two
        ("\\boxed{12}\n\n\\boxed{12}\n\n\\boxed{12}", 0.0),  # the column of boxes GRPO learned for the old bonus
        ("\\boxed{7} apples, because 3 + 4 = 7", 0.0),  # the box must end the answer
        ("So $\\boxed{7}$.", 1.0),
        ("\\[ \\boxed{7} \\]\n", 1.0),
        ("**\\boxed{7}**", 1.0),
    ],
)
def test_boxed_format(completion, expected):
    assert boxed_format_reward("prompt", completion, answer="7") == expected


def test_boxed_contents():
    assert boxed_contents("a \\boxed{1} b \\boxed{\\frac{2}{3}} c \\boxed{4") == ["1", "\\frac{2}{3}"]


def test_registry_built_ins_and_unknown_names():
    assert {"math_verify", "boxed_format"} <= set(reward_names())
    assert get_reward_fn("math_verify") is math_verify_reward
    assert get_reward_fn("boxed_format") is boxed_format_reward
    assert sorted(BUILT_IN) == ["boxed_format", "math_verify"]
    with pytest.raises(RewardFunctionError, match=r"unknown reward 'math_verfy' \(did you mean 'math_verify'\?\)"):
        get_reward_fn("math_verfy")


BUILT_IN = [e.name for e in REWARDS.entries() if e.target.__module__.startswith("rlpost.rewards.builtin.")]


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_reward_can_run_in_a_worker(name):
    """Workers get a registered function by reference, bind it to the row fields, and call it."""
    fn = get_reward_fn(name)
    assert pickle.loads(pickle.dumps(fn)) is fn
    bound = bind_reward(fn, name)
    assert bound("p", "so \\boxed{7}", {"question": "3 + 4?", "answer": "7"}) == 1.0
    assert bound("p", "no answer", {"question": "3 + 4?", "answer": "7"}) == 0.0


def exact_answer(prompt: str, completion: str, *, answer: str, **row_fields) -> float:
    return float(completion.strip() == answer)


def other_function(prompt: str, completion: str, **row_fields) -> float:
    return 0.0


def test_register_reward():
    assert register_reward("test_exact_answer")(exact_answer) is exact_answer
    assert get_reward_fn("test_exact_answer") is exact_answer
    assert register_reward("test_exact_answer")(exact_answer) is exact_answer  # re-registering the same is fine
    with pytest.raises(ValueError, match="two rewards are registered as 'test_exact_answer'"):
        register_reward("test_exact_answer")(other_function)
    with pytest.raises(ValueError, match="may not contain ':'"):
        register_reward("a:b")
