"""The built-in arithmetic task: determinism, levels, split disjointness, and answers checked from the solutions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpost.data import DatasetError, generate_arithmetic

EQUATION = re.compile(r"(\d+) ([+\-×÷]) (\d+) = (\d+)")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b, "÷": lambda a, b: a / b}


def check_row(row: dict, max_operand: int) -> None:
    """Recompute the answer from the worked solution and check it against the question and the answer."""
    equations = EQUATION.findall(row["solution"])
    assert len(equations) == row["level"], row["solution"]
    previous = None
    for left, symbol, right, result in equations:
        left, right, result = int(left), int(right), int(result)
        assert APPLY[symbol](left, right) == result, f"wrong arithmetic in {row['solution']!r}"
        assert result >= 0
        if previous is not None:
            assert left == previous, "each step continues from the previous result"
        previous = result
    assert row["answer"] == str(previous)
    assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}.")
    numbers_in_question = [int(n) for n in re.findall(r"\d+", row["question"])]
    assert max(numbers_in_question) <= max_operand
    first_left, _, first_right, _ = equations[0]
    # Every operand of the worked solution comes from the question (the first left operand too,
    # unless it is the product of a "N bags with M items" opening, whose factors are both there).
    for _, _, right, _ in equations:
        assert int(right) in numbers_in_question
    assert int(first_left) in numbers_in_question


def test_deterministic_for_a_seed():
    assert generate_arithmetic([1, 2], 50, seed=3) == generate_arithmetic([1, 2], 50, seed=3)
    assert generate_arithmetic([1, 2], 50, seed=3) != generate_arithmetic([1, 2], 50, seed=4)


def test_levels_cycle_and_row_fields():
    rows = generate_arithmetic([1, 3], 40, seed=0)
    assert [row["level"] for row in rows] == [1, 3] * 20
    assert all(set(row) == {"id", "question", "answer", "solution", "level"} for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_answers_recomputed_from_solutions(level):
    for row in generate_arithmetic([level], 300, seed=1, max_operand=20):
        check_row(row, max_operand=20)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    max_operand=st.integers(5, 40),
    levels=st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=3, unique=True),
)
def test_answers_correct_for_any_settings(seed, max_operand, levels):
    for row in generate_arithmetic(levels, 30, seed=seed, max_operand=max_operand):
        check_row(row, max_operand)


def test_level_one_is_one_small_operation():
    rows = generate_arithmetic([1], 500, seed=0, max_operand=20)
    for row in rows:
        assert len(EQUATION.findall(row["solution"])) == 1
        assert all(int(n) <= 20 for n in re.findall(r"\d+", row["question"]))
    # Mostly addition and subtraction, which an untrained small model can sometimes do.
    symbols = [EQUATION.search(row["solution"]).group(2) for row in rows]
    assert sum(symbol in "+-" for symbol in symbols) > len(rows) / 2
    assert set(symbols) == {"+", "-", "×", "÷"}


def test_test_split_disjoint_from_train():
    train = generate_arithmetic([1], 4000, seed=0, split="train")
    test = generate_arithmetic([1], 500, seed=0, split="test")
    train_questions = {row["question"] for row in train}
    test_questions = {row["question"] for row in test}
    assert len(train_questions) == 4000 and len(test_questions) == 500  # no duplicates inside a split
    assert not train_questions & test_questions
    # The train split does not depend on how big the test split is.
    assert generate_arithmetic([1], 100, seed=0, split="train") == train[:100]


def test_unknown_split_and_level():
    with pytest.raises(DatasetError, match="splits train, test"):
        generate_arithmetic([1], 10, split="validation")
    with pytest.raises(DatasetError, match="levels"):
        generate_arithmetic([4], 10)


def test_too_many_problems_for_the_space():
    with pytest.raises(DatasetError, match=r"only \d+ distinct train problems"):
        generate_arithmetic([1], 20_000, seed=0, max_operand=3)
