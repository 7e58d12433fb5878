"""User reward functions: loading from files and modules, every loading error, and how arguments are passed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rlpost.config.schema import RewardConfig, RewardFunctionConfig
from rlpost.rewards import RewardFunctionError, RewardManager, bind_reward, get_reward_fn

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_reward.py"


def write(folder: Path, source: str, name: str = "my_reward.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def test_load_from_file_and_module(tmp_path):
    path = write(tmp_path, """
        def shout(prompt, completion, **row_fields):
            return float(completion.isupper())
    """)
    fn = get_reward_fn(f"{path}:shout")
    assert fn("p", "YES") == 1.0 and fn("p", "no") == 0.0
    assert get_reward_fn("rlpost.rewards.builtin:boxed_format_reward")("p", "\\boxed{1}") == 1.0


def test_a_file_that_registers_a_reward_can_be_loaded_twice(tmp_path):
    """Two entries of reward.functions in one file run the file twice: its registration must not clash."""
    path = write(tmp_path, """
        from rlpost.rewards import register_reward

        @register_reward("test_twice_loaded")
        def half(prompt, completion, **row_fields):
            return 0.5
    """, name="registers.py")
    first = get_reward_fn(f"{path}:half")
    second = get_reward_fn(f"{path}:half")
    assert first is not second, "the file ran twice"
    assert get_reward_fn("test_twice_loaded") is first
    assert second("p", "c") == 0.5


def test_file_can_import_a_helper_next_to_it(tmp_path):
    write(tmp_path, "BONUS = 0.25\n", name="reward_helpers.py")
    path = write(tmp_path, """
        from reward_helpers import BONUS

        def bonus(prompt, completion, **row_fields):
            return BONUS
    """)
    assert get_reward_fn(f"{path}:bonus")("p", "c") == 0.25


GOOD = """
def reward(prompt, completion, **row_fields):
    return 1.0

SCALE = 3

def one_argument(completion):
    return 1.0

def named_fields(prompt, completion, answer):
    return 1.0

async def asynchronous(prompt, completion, **row_fields):
    return 1.0
"""


@pytest.mark.parametrize(
    ("source", "function", "kwargs", "expected"),
    [
        (None, "reward", {}, r"file .*missing\.py does not exist"),
        ("def reward(prompt, completion:\n    return 1\n", "reward", {}, r"importing .* failed: line 1: SyntaxError"),
        ("x = 1\nraise RuntimeError('no config')\n", "reward", {}, r"failed: line 2: RuntimeError: no config"),
        ("import not_a_module_xyz\n", "reward", {}, r"line 1: ModuleNotFoundError: No module named 'not_a_module_xyz'"),
        (GOOD, "rewrad", {}, r"has no function 'rewrad' \(did you mean 'reward'\?\); functions: reward, one_argument"),
        (GOOD, "SCALE", {}, r"SCALE is not callable \(it is a int\)"),
        (GOOD, "one_argument", {},
         r"one_argument\(completion\) does not match fn\(prompt: str, completion: str, \*\*row_fields\)"),
        (GOOD, "named_fields", {"scale": 2},
         r"kwargs has 'scale', which named_fields\(prompt, completion, answer\) does not accept"),
        (GOOD, "asynchronous", {}, r"async functions are not supported"),
    ],
)
def test_user_file_errors_name_the_spec(tmp_path, source, function, kwargs, expected):
    path = tmp_path / "missing.py" if source is None else write(tmp_path, source)
    spec = f"{path}:{function}"
    config = RewardConfig(functions=[RewardFunctionConfig(name=spec, kwargs=kwargs)])
    with pytest.raises(RewardFunctionError) as error:
        RewardManager(config)  # fails while loading, before any worker process starts
    assert f"reward {spec!r}" in str(error.value)
    assert error.match(expected)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_package_xyz.rewards:fn", r"importing module no_such_package_xyz\.rewards failed: ModuleNotFound"),
        ("rlpost.rewards.builtin:boxed_formatt",
         r"no function 'boxed_formatt' \(did you mean 'boxed_format_reward'\?\)"),
        (":fn", r"expected path/to/file\.py:function or package\.module:function"),
    ],
)
def test_module_spec_errors(spec, expected):
    with pytest.raises(RewardFunctionError, match=expected):
        get_reward_fn(spec)


def test_only_declared_fields_are_passed():
    seen = {}

    def named(prompt, completion, answer, bonus=0.0):
        seen.update(prompt=prompt, completion=completion, answer=answer, bonus=bonus)
        return 1.0

    bound = bind_reward(named, "named", {"bonus": 0.5})
    assert bound("the prompt", "the completion", {"question": "q", "answer": "4", "level": 2}) == 1.0
    assert seen == {"prompt": "the prompt", "completion": "the completion", "answer": "4", "bonus": 0.5}


def test_every_field_and_kwarg_reaches_var_keyword():
    def everything(text, output, **row_fields):
        return row_fields

    bound = bind_reward(everything, "everything", {"level": 9, "scale": 2})
    row = {"question": "q", "answer": "4", "level": 2, "prompt": "a prompt column", "text": "a text column"}
    # Config kwargs win over row fields; columns named like the first two parameters are not passed twice.
    assert bound("p", "c", row) == {"question": "q", "answer": "4", "level": 9, "scale": 2, "prompt": "a prompt column"}


def test_example_custom_reward():
    fn = get_reward_fn(f"{EXAMPLE}:length_penalised_correctness")
    bound = bind_reward(fn, "example", {"target_chars": 20, "penalty": 0.5})
    row = {"question": "What is 3 + 4?", "answer": "7"}
    assert bound("p", "\\boxed{7}", row) == 1.0
    assert bound("p", "\\boxed{8}", row) == 0.0
    # 30 characters: 10 past the target of 20, so half the penalty.
    assert bound("p", "So the final answer: \\boxed{7}", row) == pytest.approx(1.0 - 0.5 * 10 / 20)
    assert bound("p", "x" * 100 + "\\boxed{8}", row) == pytest.approx(-0.5)
    assert callable(fn.warmup)
