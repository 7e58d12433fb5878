"""The built-in task: short arithmetic word problems with non-negative integer answers.

A problem of level L applies L operations (+, -, ×, exact ÷) to a count of one kind of object a
person owns: "Mia has 12 coins. She loses 4 coins. How many coins does Mia have now?" Level 1 is
deliberately easy (one operation, every number at most `max_operand`, 20 by default) because an
untrained 135M model must solve some of it for GRPO to see any reward variance.

Every row carries a worked `solution` (one equation per operation, ending with `\\boxed{answer}`)
for SFT demonstrations. Train and test use different seed streams, and the question space is
split by a hash of the question text, so no test question can ever appear in the train split
whatever the sizes are (and the train split does not depend on the test size).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from rlpost.data.errors import DatasetError

SPLITS = ("train", "test")
_TEST_BUCKETS = 8
"""One question in this many (by hash) belongs to the test split."""
_MAX_MISSES_IN_A_ROW = 5000
"""Draws in a row that were duplicates or of the other split: the question space is used up."""
_MAX_FACTOR = 5
"""Largest multiplier or divisor: keeps products small enough for a small model."""
_CAP_PER_OPERAND = 5
"""Running counts stay at most `_CAP_PER_OPERAND * max_operand` (100 by default)."""
_GROUPS_START_PROBABILITY = 0.15
"""Chance that a problem opens with "N bags with M items in each bag" (which counts as its first ×)."""

PEOPLE: tuple[tuple[str, str], ...] = (
    ("Tom", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"), ("Ben", "he"), ("Emma", "she"),
    ("Leo", "he"), ("Zoe", "she"), ("Max", "he"), ("Anna", "she"), ("Omar", "he"), ("Sara", "she"),
    ("Jack", "he"), ("Nora", "she"), ("Ravi", "he"), ("Lucy", "she"), ("Noah", "he"), ("Ella", "she"),
)
ITEMS: tuple[str, ...] = (
    "apples", "coins", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards",
    "balloons", "oranges",
)
CONTAINERS: tuple[tuple[str, str], ...] = (("bags", "bag"), ("boxes", "box"), ("baskets", "basket"))
_POSSESSIVE = {"he": "his", "she": "her"}

# Each operation has phrasings as (question clause, solution clause). Placeholders: k (operand),
# items, subj (he/she), poss (his/her).
PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "+": (
        ("buys {k} more {items}", "buys {k} more"),
        ("finds {k} more {items}", "finds {k} more"),
        ("gets {k} more {items} from a friend", "gets {k} more"),
        ("wins {k} more {items}", "wins {k} more"),
    ),
    "-": (
        ("gives {k} {items} to a friend", "gives away {k}"),
        ("loses {k} {items}", "loses {k}"),
        ("sells {k} {items}", "sells {k}"),
        ("gives away {k} of {poss} {items}", "gives away {k}"),
    ),
    "×": (
        ("ends up with {k} times as many {items} as before", "ends up with {k} times as many"),
        ("collects more {items} until {subj} has {k} times as many as before", "gets {k} times as many"),
    ),
    "÷": (
        ("splits {poss} {items} into {k} equal piles and keeps only one pile", "keeps one of {k} equal piles"),
        ("shares {poss} {items} equally among {k} boxes and keeps one box", "keeps one of {k} equal shares"),
    ),
}
OPERATION_WEIGHTS = {"+": 4, "-": 4, "×": 1, "÷": 1}
"""Addition and subtraction dominate: they are what an untrained small model can already do."""


@dataclass(frozen=True)
class _Step:
    symbol: str
    operand: int
    before: int
    after: int
    question: str
    explanation: str

    def equation(self) -> str:
        return f"{self.before} {self.symbol} {self.operand} = {self.after}"


@dataclass(frozen=True)
class _Story:
    """Who owns what: the fixed nouns of one problem."""

    name: str
    subj: str
    items: str

    @property
    def poss(self) -> str:
        return _POSSESSIVE[self.subj]

    def fill(self, template: str, k: int) -> str:
        return template.format(k=k, items=self.items, subj=self.subj, poss=self.poss)


def generate_arithmetic(
    levels: Sequence[int], size: int, seed: int = 0, max_operand: int = 20, split: str = "train"
) -> list[dict]:
    """`size` distinct problems of `split`, levels cycling through `levels`; the same arguments give the same rows.

    Rows: `{"id", "question", "answer", "solution", "level"}` with `answer` the integer as text.
    """
    if split not in SPLITS:
        raise DatasetError(f"arithmetic has splits {', '.join(SPLITS)}, not {split!r}")
    if any(level not in (1, 2, 3) for level in levels) or not levels:
        raise DatasetError(f"arithmetic levels must be in 1, 2, 3; got {list(levels)}")
    rng = random.Random(f"rlpost.arithmetic/{split}/{seed}")  # str seeds are stable across runs and platforms
    rows: list[dict] = []
    seen: set[str] = set()
    misses = 0
    while len(rows) < size:
        level = levels[len(rows) % len(levels)]
        row = _problem(rng, level, max_operand)
        if row["question"] in seen or _split_of(row["question"]) != split:
            misses += 1
            if misses == _MAX_MISSES_IN_A_ROW:
                raise DatasetError(
                    f"arithmetic: only {len(rows)} distinct {split} problems found for levels {list(levels)} and "
                    f"max_operand {max_operand}; raise max_operand, add levels or lower the size ({size})"
                )
            continue
        misses = 0
        seen.add(row["question"])
        rows.append(row)
    return rows


def _split_of(question: str) -> str:
    """The split a question belongs to, by a stable hash of its text."""
    bucket = hashlib.sha256(question.encode()).digest()[0] % _TEST_BUCKETS
    return "test" if bucket == 0 else "train"


def _problem(rng: random.Random, level: int, max_operand: int) -> dict:
    name, subj = rng.choice(PEOPLE)
    story = _Story(name=name, subj=subj, items=rng.choice(ITEMS))
    cap = _CAP_PER_OPERAND * max_operand
    if rng.random() < _GROUPS_START_PROBABILITY:
        opening, first_line, count = _groups_opening(rng, story, max_operand)
        operations = level - 1
    else:
        count = rng.randint(2, max_operand)
        opening = f"{story.name} has {count} {story.items}."
        first_line = f"{story.name} starts with {count} {story.items}."
        operations = level
    steps: list[_Step] = []
    for _ in range(operations):
        steps.append(_step(rng, story, count, max_operand, cap))
        count = steps[-1].after
    sentences = [opening]
    for index, step in enumerate(steps):
        # The first step names the subject with a capital pronoun, later ones chain with "Then".
        sentences.append(f"{subj.capitalize()} {step.question}." if index == 0 else f"Then {subj} {step.question}.")
    # "now" only makes sense after something happened; a lone groups opening asks for the total.
    sentences.append(f"How many {story.items} does {story.name} have {'now' if steps else 'in total'}?")
    question = " ".join(sentences)
    lines = [first_line] + [f"{subj.capitalize()} {step.explanation}: {step.equation()}." for step in steps]
    lines.append(f"The answer is \\boxed{{{count}}}.")
    return {
        "id": "arith-" + hashlib.sha1(question.encode()).hexdigest()[:12],
        "question": question,
        "answer": str(count),
        "solution": "\n".join(lines),
        "level": level,
    }


def _groups_opening(rng: random.Random, story: _Story, max_operand: int) -> tuple[str, str, int]:
    """'Tom has 3 bags with 4 apples in each bag.': a multiplication as the opening sentence."""
    largest = min(10, max_operand)
    containers, container = rng.choice(CONTAINERS)
    groups, per_group = rng.randint(2, largest), rng.randint(2, largest)
    count = groups * per_group
    opening = f"{story.name} has {groups} {containers} with {per_group} {story.items} in each {container}."
    line = f"{story.name} has {groups} {containers} with {per_group} each: {groups} × {per_group} = {count}."
    return opening, line, count


def _step(rng: random.Random, story: _Story, count: int, max_operand: int, cap: int) -> _Step:
    """One operation on `count`, keeping every count a non-negative integer at most `cap`."""
    options = _operand_options(count, max_operand, cap)
    symbols = [symbol for symbol in OPERATION_WEIGHTS if options[symbol]]
    symbol = rng.choices(symbols, weights=[OPERATION_WEIGHTS[s] for s in symbols])[0]
    operand = rng.choice(options[symbol])
    question, explanation = rng.choice(PHRASES[symbol])
    return _Step(
        symbol=symbol,
        operand=operand,
        before=count,
        after=_apply(symbol, count, operand),
        question=story.fill(question, operand),
        explanation=story.fill(explanation, operand),
    )


def _operand_options(count: int, max_operand: int, cap: int) -> dict[str, list[int]]:
    """Operands allowed for each operation on `count` (an empty list: the operation is not possible)."""
    factors = range(2, min(_MAX_FACTOR, max_operand) + 1)
    return {
        "+": [k for k in range(2, max_operand + 1) if count + k <= cap],
        "-": [k for k in range(2, min(max_operand, count) + 1)],
        "×": [k for k in factors if count >= 2 and count * k <= cap],
        "÷": [k for k in factors if count > k and count % k == 0],
    }


def _apply(symbol: str, count: int, operand: int) -> int:
    if symbol == "+":
        return count + operand
    if symbol == "-":
        return count - operand
    if symbol == "×":
        return count * operand
    return count // operand
