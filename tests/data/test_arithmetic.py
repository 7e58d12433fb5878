"""The built-in arithmetic task: determinism, levels, split disjointness, and answers checked from the solutions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpost.data import DatasetError, generate_arithmetic
from rlpost.data.arithmetic_templates import NUMBER_WORDS, template_ids

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
    numbers_in_question = question_numbers(row["question"])
    assert max(numbers_in_question) <= max_operand
    first_left, _, first_right, _ = equations[0]
    # Every operand of the worked solution comes from the question (the first left operand too,
    # unless it is the product of a "N bags with M items" opening, whose factors are both there).
    for _, _, right, _ in equations:
        assert int(right) in numbers_in_question
    assert int(first_left) in numbers_in_question


def question_numbers(question: str) -> list[int]:
    """The numbers of a question, written as digits or as words."""
    words = "|".join(NUMBER_WORDS)
    return [int(n) if n.isdigit() else NUMBER_WORDS.index(n.lower())
            for n in re.findall(rf"\b(\d+|{words})\b", question, flags=re.IGNORECASE)]


def test_deterministic_for_a_seed():
    assert generate_arithmetic([1, 2], 50, seed=3) == generate_arithmetic([1, 2], 50, seed=3)
    assert generate_arithmetic([1, 2], 50, seed=3) != generate_arithmetic([1, 2], 50, seed=4)


def test_levels_cycle_and_row_fields():
    rows = generate_arithmetic([1, 3], 40, seed=0)
    assert [row["level"] for row in rows] == [1, 3] * 20
    fields = {"id", "question", "answer", "solution", "level", "operation", "template", "distractor", "number_words"}
    assert all(set(row) == fields for row in rows)
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
        assert all(n <= 20 for n in question_numbers(row["question"]))
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


def test_too_many_problems_for_the_space(monkeypatch):
    # Names, objects, distractors and number words make the real space far larger than any size
    # asked for; with one pair of people, one object and small numbers it runs out.
    from rlpost.data import arithmetic

    monkeypatch.setattr(arithmetic, "PEOPLE", (("Tom", "he"), ("Mia", "she")))
    monkeypatch.setattr(arithmetic, "ITEMS", ("apples",))
    monkeypatch.setattr(arithmetic, "DISTRACTOR_RATE", 0.0)
    with pytest.raises(DatasetError, match=r"only \d+ distinct train problems"):
        generate_arithmetic([1], 5000, seed=0, max_operand=3)


# ---------------------------------------------------------------- the split by template


def test_test_split_uses_only_templates_never_in_train():
    train = generate_arithmetic([1, 2, 3], 3000, seed=0, split="train")
    test = generate_arithmetic([1, 2, 3], 600, seed=0, split="test")
    train_templates = {row["template"] for row in train}
    test_templates = {row["template"] for row in test}
    assert not train_templates & test_templates
    # Every template of a split shows up in a split of this size, and only that split's.
    assert train_templates == template_ids("train") and test_templates == template_ids("test")
    # The openings and question forms are split too: the test split's question endings never occur in train.
    ending = re.compile(r"[^.]*\?$")
    assert not {ending.search(r["question"]).group().strip() for r in test} & {
        ending.search(r["question"]).group().strip() for r in train}


def test_many_templates_and_every_kind_of_row():
    rows = generate_arithmetic([1, 2, 3], 3000, seed=0, split="train") + generate_arithmetic([1, 2, 3], 600, split="test")
    assert len(template_ids("train") | template_ids("test")) >= 30
    assert {row["operation"] for row in rows} == {"add", "subtract", "multiply", "divide", "multi-step"}
    assert {row["operation"] for row in rows if row["level"] > 1} == {"multi-step"}
    assert 0.15 < sum(row["distractor"] for row in rows) / len(rows) < 0.35
    assert 0.1 < sum(row["number_words"] for row in rows) / len(rows) < 0.3
    assert any(re.search(r"\b(seven|twelve|three)\b", row["question"]) for row in rows if row["number_words"])
    assert all(row["solution"].endswith(f"\\boxed{{{row['answer']}}}.") for row in rows)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_test_split_answers_recomputed_from_solutions(level):
    for row in generate_arithmetic([level], 200, seed=2, split="test"):
        check_row(row, max_operand=20)
