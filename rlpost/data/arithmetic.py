"""The built-in task: arithmetic word problems with non-negative integer answers, split by template.

A problem of level L applies L operations (+, -, ×, exact ÷) to counts of one kind of object:
"Mia has 12 coins. She loses 4 coins. How many coins does Mia have now?" Level 1 is deliberately
easy (one operation, every number at most `max_operand`, 20 by default) because an untrained 135M
model must solve some of it for GRPO to see any reward variance; addition and subtraction dominate
(weights 4:4:1:1 for + - × ÷).

Phrasings (rlpost/data/arithmetic_templates.py, 52 pieces in all): 24 one-operation step sentences,
10 whole one-operation problems (totals, "k more/fewer than", "how many more", equal sharing,
containers), 5 openings, 5 question forms, 4 distractor sentences and 4 multi-step frames
("Then ...", "N bags with M in each, then ...", "First ..., then ..., and finally ...", "a second
person has k more, then ..."). A quarter of the rows have a distractor sentence with an irrelevant
number, and a fifth write the numbers of the question (up to twenty) as words.

**The split is by template.** Every piece belongs to `train` or to `test` (a fixed assignment in
arithmetic_templates.py, about one piece in four is `test`), and a problem of a split is built only
from pieces of that split, so no `test` problem shares a step sentence, whole-problem template,
opening, question form, distractor or multi-step frame with any `train` problem: the test split
measures whether arithmetic learned on some phrasings holds on phrasings never trained on.

Every row carries a worked `solution` (one equation per operation, ending with `\\boxed{answer}`)
for SFT demonstrations, and the fields `level`, `operation` (`add`, `subtract`, `multiply`,
`divide`, or `multi-step` for levels 2 and 3), `template` (the step sentence or whole-problem
template of a one-operation row, the frame of a multi-step row), `distractor` and `number_words`
(booleans). The generator is deterministic: the same arguments give the same rows, on any platform.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlpost.data.arithmetic_templates import (
    DISTRACTORS,
    FRAMES,
    NUMBER_WORDS,
    OPENINGS,
    OPERATIONS,
    QUESTIONS,
    STEPS,
    WHOLES,
    Step,
    Whole,
    of_split,
)
from rlpost.data.errors import DatasetError

SPLITS = ("train", "test")
_MAX_MISSES_IN_A_ROW = 5000
"""Draws in a row that were duplicates: the question space is used up."""
_MAX_FACTOR = 5
"""Largest multiplier or divisor of a step: keeps products small enough for a small model."""
_CAP_PER_OPERAND = 5
"""Running counts stay at most `_CAP_PER_OPERAND * max_operand` (100 by default)."""
_WHOLE_SHARE = 0.4
"""Chance that a level-1 problem uses a whole-problem template rather than opening + step + question."""
DISTRACTOR_RATE = 0.25
NUMBER_WORD_RATE = 0.2

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
OPERATION_WEIGHTS = {"+": 4, "-": 4, "×": 1, "÷": 1}
"""Addition and subtraction dominate: they are what an untrained small model can already do."""


@dataclass(frozen=True)
class _Story:
    """Who owns what: the fixed nouns of one problem."""

    name: str
    subj: str
    other: str
    osubj: str
    items: str
    containers: str
    container: str

    def words(self, **numbers: int) -> dict:
        return {"name": self.name, "subj": self.subj, "poss": _POSSESSIVE[self.subj], "other": self.other,
                "osubj": self.osubj, "items": self.items, "containers": self.containers,
                "container": self.container, **numbers}

    def about_other(self) -> _Story:
        """The same story told about the second person (their steps, their question)."""
        return _Story(self.other, self.osubj, self.name, self.subj, self.items, self.containers, self.container)


@dataclass
class _Draft:
    """A problem being assembled: question sentences, solution lines and the running count."""

    story: _Story
    count: int
    sentences: list[str]
    lines: list[str]
    clauses: list[tuple[str, str]] = field(default_factory=list)
    """(question clause, solution line) of each step, joined by the frame."""


def generate_arithmetic(
    levels: Sequence[int], size: int, seed: int = 0, max_operand: int = 20, split: str = "train"
) -> list[dict]:
    """`size` distinct problems of `split`, levels cycling through `levels`; the same arguments give the same rows.

    Rows: `{"id", "question", "answer", "solution", "level", "operation", "template", "distractor",
    "number_words"}` with `answer` the integer as text.
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
        row = _problem(rng, level, max_operand, split)
        if row["question"] in seen:
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


def _problem(rng: random.Random, level: int, max_operand: int, split: str) -> dict:
    story = _story(rng)
    if level == 1:
        draft, template, operation = _one_operation(rng, story, max_operand, split)
    else:
        draft, template = _multi_step(rng, story, level, max_operand, split)
        operation = "multi-step"
    distractor = rng.random() < DISTRACTOR_RATE
    if distractor:
        draft.sentences.insert(1, _distractor(rng, story, max_operand, split))
    number_words = rng.random() < NUMBER_WORD_RATE
    question = " ".join(draft.sentences)
    if number_words:
        question = re.sub(r"\b\d+\b", lambda m: _as_word(int(m.group())), question)
    draft.lines.append(f"The answer is \\boxed{{{draft.count}}}.")
    return {
        "id": "arith-" + hashlib.sha1(question.encode()).hexdigest()[:12],
        "question": question,
        "answer": str(draft.count),
        "solution": "\n".join(draft.lines),
        "level": level,
        "operation": operation,
        "template": template,
        "distractor": distractor,
        "number_words": number_words,
    }


def _story(rng: random.Random) -> _Story:
    (name, subj), (other, osubj) = rng.sample(PEOPLE, 2)
    containers, container = rng.choice(CONTAINERS)
    return _Story(name, subj, other, osubj, rng.choice(ITEMS), containers, container)


def _as_word(number: int) -> str:
    return NUMBER_WORDS[number] if number < len(NUMBER_WORDS) else str(number)


# ---------------------------------------------------------------- level 1


def _one_operation(rng: random.Random, story: _Story, max_operand: int, split: str) -> tuple[_Draft, str, str]:
    """Opening + one step + question form, or a whole-problem template; the symbol drawn by OPERATION_WEIGHTS."""
    count = rng.randint(2, max_operand)
    options = _operand_options(count, max_operand, _CAP_PER_OPERAND * max_operand)
    wholes = [whole for whole in of_split(WHOLES, split) if _feasible(whole.kind, max_operand)]
    symbols = [s for s in OPERATION_WEIGHTS if options[s] or any(w.symbol == s for w in wholes)]
    symbol = rng.choices(symbols, weights=[OPERATION_WEIGHTS[s] for s in symbols])[0]
    own_wholes = [whole for whole in wholes if whole.symbol == symbol]
    use_whole = own_wholes and (not options[symbol] or rng.random() < _WHOLE_SHARE)
    if use_whole:
        whole = rng.choice(own_wholes)
        return _whole_problem(rng, story, whole, max_operand), whole.template, OPERATIONS[symbol]
    draft = _opening(rng, story, count, split)
    step = _step(rng, draft, max_operand, split, symbol=symbol)
    _chain(draft, "then")
    draft.sentences.append(_fill(rng.choice(of_split(QUESTIONS, split)).text, story))
    return draft, step.template, OPERATIONS[symbol]


def _feasible(kind: str, max_operand: int) -> bool:
    return {"any": 2, "smaller": 3, "factors": 2, "divisible": 4}[kind] <= max_operand


def _whole_problem(rng: random.Random, story: _Story, whole: Whole, max_operand: int) -> _Draft:
    if whole.kind == "any":
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        c = a + b
    elif whole.kind == "smaller":
        a = rng.randint(3, max_operand)
        b = rng.randint(2, a - 1)
        c = a - b
    elif whole.kind == "factors":
        a, b = rng.randint(2, min(10, max_operand)), rng.randint(2, min(10, max_operand))
        c = a * b
    else:  # divisible: a = b × c with a at most max_operand
        b = rng.randint(2, min(_MAX_FACTOR, max_operand // 2))
        c = rng.randint(2, max_operand // b)
        a = b * c
    words = story.words(a=a, b=b, c=c)
    sentences = re.split(r"(?<=[.?]) ", whole.question.format(**words))  # a distractor can go after the first
    return _Draft(story, c, sentences, [whole.line.format(**words)])


# ---------------------------------------------------------------- levels 2 and 3


def _multi_step(rng: random.Random, story: _Story, level: int, max_operand: int, split: str) -> tuple[_Draft, str]:
    frame = rng.choice(of_split(FRAMES, split)).template
    if frame == "multi.groups":
        draft = _groups_opening(rng, story, max_operand)
    elif frame == "multi.compare":
        draft = _compare_opening(rng, story, max_operand)
    else:
        draft = _opening(rng, story, rng.randint(2, max_operand), split)
    steps = level - 1 if frame in ("multi.groups", "multi.compare") else level
    for _ in range(steps):
        _step(rng, draft, max_operand, split)
    _chain(draft, "first_then" if frame == "multi.first_then" else "then")
    draft.sentences.append(_fill(rng.choice(of_split(QUESTIONS, split)).text, draft.story))
    return draft, frame


def _opening(rng: random.Random, story: _Story, count: int, split: str) -> _Draft:
    opening = rng.choice(of_split(OPENINGS, split))
    sentence = opening.text.format(**story.words(n=count))
    return _Draft(story, count, [sentence], [f"{story.name} starts with {count} {story.items}."])


def _groups_opening(rng: random.Random, story: _Story, max_operand: int) -> _Draft:
    """'Tom has 3 bags with 4 apples in each bag.': a multiplication as the opening sentence."""
    largest = min(10, max_operand)
    groups, per_group = rng.randint(2, largest), rng.randint(2, largest)
    count = groups * per_group
    words = story.words(g=groups, m=per_group, n=count)
    sentence = "{name} has {g} {containers} with {m} {items} in each {container}.".format(**words)
    line = "{name} has {g} {containers} with {m} each: {g} × {m} = {n}.".format(**words)
    return _Draft(story, count, [sentence], [line])


def _compare_opening(rng: random.Random, story: _Story, max_operand: int) -> _Draft:
    """'Tom has 9 apples. Mia has 4 fewer apples than Tom.': the first step, about the second person."""
    first = rng.randint(3, max_operand)
    more = rng.random() < 0.5
    k = rng.randint(2, max_operand) if more else rng.randint(2, first - 1)
    count = first + k if more else first - k
    word, symbol = ("more", "+") if more else ("fewer", "-")
    words = story.words(a=first, k=k, word=word)
    sentences = ["{name} has {a} {items}.".format(**words), "{other} has {k} {word} {items} than {name}.".format(**words)]
    line = f"{story.other} has {k} {word} than {story.name}: {first} {symbol} {k} = {count}."
    return _Draft(story.about_other(), count, sentences, [line])


def _step(rng: random.Random, draft: _Draft, max_operand: int, split: str, symbol: str | None = None) -> Step:
    """One operation on the running count, keeping every count a non-negative integer at most the cap."""
    options = _operand_options(draft.count, max_operand, _CAP_PER_OPERAND * max_operand)
    if symbol is None:
        symbols = [s for s in OPERATION_WEIGHTS if options[s]]
        symbol = rng.choices(symbols, weights=[OPERATION_WEIGHTS[s] for s in symbols])[0]
    operand = rng.choice(options[symbol])
    step = rng.choice([step for step in of_split(STEPS, split) if step.symbol == symbol])
    after = _apply(symbol, draft.count, operand)
    words = draft.story.words(k=operand)
    explanation = step.explanation.format(**words)
    line = f"{draft.story.subj.capitalize()} {explanation}: {draft.count} {symbol} {operand} = {after}."
    draft.clauses.append((step.question.format(**words), line))
    draft.count = after
    return step


def _chain(draft: _Draft, style: str) -> None:
    """Turn the drafted step clauses into sentences: 'She X. Then she Y.' or 'First she X, then ..., and finally ...'."""
    subj = draft.story.subj
    clauses = [clause for clause, _ in draft.clauses]
    if style == "first_then":
        parts = [f"First {subj} {clauses[0]}"] + [f"then {subj} {clause}" for clause in clauses[1:]]
        if len(parts) > 2:
            parts[-1] = f"and finally {subj} {clauses[-1]}"
        draft.sentences.append(", ".join(parts) + ".")
    else:
        for index, clause in enumerate(clauses):
            opener = f"{subj.capitalize()}" if index == 0 and len(draft.sentences) == 1 else f"Then {subj}"
            draft.sentences.append(f"{opener} {clause}.")
    draft.lines.extend(line for _, line in draft.clauses)
    draft.clauses.clear()


def _fill(text: str, story: _Story) -> str:
    return text.format(**story.words())


def _distractor(rng: random.Random, story: _Story, max_operand: int, split: str) -> str:
    thing = rng.choice([item for item in ITEMS if item != story.items])
    piece = rng.choice(of_split(DISTRACTORS, split))
    return piece.text.format(**story.words(d=rng.randint(2, max_operand), thing=thing))


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
