"""The phrasings of the built-in arithmetic task, each assigned to the `train` or the `test` split.

A problem is assembled from pieces: an opening that gives the first count, one-operation step
sentences, an optional distractor sentence, and a question form; or, for a one-operation problem, a
whole-problem template (two people compared, a total, equal sharing, ...). Every piece has a fixed
split, so a `test` problem is built only from pieces that no `train` problem ever uses: the test
split measures arithmetic in phrasings the model has never been trained on, not memorised wording.

Placeholders: {name}/{subj}/{poss} (the person, he/she, his/her), {other}/{osubj} (a second person),
{items}, {containers}/{container} (plural/singular), {k} (a step's operand), {a} {b} {c} (the
numbers of a whole-problem template; {c} its result), {d} (a distractor number), {thing} (a
distractor's object).
"""

from __future__ import annotations

from dataclasses import dataclass

OPERATIONS = {"+": "add", "-": "subtract", "×": "multiply", "÷": "divide"}
"""Equation symbol -> the `operation` field of a one-operation row (multi-operation rows: `multi-step`)."""


@dataclass(frozen=True)
class Step:
    """One operation on the running count: a question clause and the worked solution's clause."""

    template: str
    symbol: str
    question: str
    explanation: str
    split: str


@dataclass(frozen=True)
class Whole:
    """A one-operation problem of its own shape. `kind` picks how its numbers are drawn (see arithmetic.py)."""

    template: str
    symbol: str
    kind: str
    question: str
    line: str
    split: str


@dataclass(frozen=True)
class Piece:
    """An opening, question form, distractor or multi-step frame."""

    template: str
    text: str
    split: str


STEPS: tuple[Step, ...] = (
    Step("add.buys", "+", "buys {k} more {items}", "buys {k} more", "train"),
    Step("add.finds", "+", "finds {k} more {items}", "finds {k} more", "train"),
    Step("add.gift_from_friend", "+", "gets {k} more {items} from a friend", "gets {k} more", "train"),
    Step("add.wins", "+", "wins {k} more {items}", "wins {k} more", "train"),
    Step("add.is_given", "+", "is given {k} more {items}", "is given {k} more", "train"),
    Step("add.picks_up", "+", "picks up another {k} {items}", "picks up {k} more", "train"),
    Step("add.receives_gift", "+", "receives {k} {items} as a birthday gift", "receives {k}", "test"),
    Step("add.collects_additional", "+", "collects {k} additional {items}", "collects {k} more", "test"),
    Step("subtract.gives_friend", "-", "gives {k} {items} to a friend", "gives away {k}", "train"),
    Step("subtract.loses", "-", "loses {k} {items}", "loses {k}", "train"),
    Step("subtract.sells", "-", "sells {k} {items}", "sells {k}", "train"),
    Step("subtract.gives_away", "-", "gives away {k} of {poss} {items}", "gives away {k}", "train"),
    Step("subtract.uses", "-", "uses {k} of {poss} {items}", "uses {k}", "train"),
    Step("subtract.drops", "-", "drops {k} {items} and cannot find them", "drops {k}", "train"),
    Step("subtract.throws_out", "-", "throws out {k} damaged {items}", "throws out {k}", "test"),
    Step("subtract.trades_away", "-", "trades away {k} of the {items}", "trades away {k}", "test"),
    Step("multiply.times_as_many", "×", "ends up with {k} times as many {items} as before", "gets {k} times as many",
         "train"),
    Step("multiply.collects_until", "×", "collects more {items} until {subj} has {k} times as many as before",
         "gets {k} times as many", "train"),
    Step("multiply.grows", "×", "makes {poss} collection of {items} {k} times as big", "makes it {k} times as big",
         "train"),
    Step("multiply.multiplies", "×", "multiplies the number of {items} {subj} owns by {k}", "multiplies by {k}",
         "test"),
    Step("divide.piles", "÷", "splits {poss} {items} into {k} equal piles and keeps only one pile",
         "keeps one of {k} equal piles", "train"),
    Step("divide.boxes", "÷", "shares {poss} {items} equally among {k} boxes and keeps one box",
         "keeps one of {k} equal shares", "train"),
    Step("divide.groups", "÷", "puts {poss} {items} into {k} equal groups and keeps one group",
         "keeps one of {k} equal groups", "train"),
    Step("divide.jars", "÷", "divides the {items} evenly into {k} jars and takes home a single jar",
         "takes one of {k} equal jars", "test"),
)

WHOLES: tuple[Whole, ...] = (
    Whole("add.together", "+", "any",
          "{name} has {a} {items} and {other} has {b} {items}. How many {items} do they have together?",
          "Together they have {a} + {b} = {c}.", "train"),
    Whole("add.more_than", "+", "any",
          "{name} has {a} {items}. {other} has {b} more {items} than {name}. How many {items} does {other} have?",
          "{other} has {b} more than {name}: {a} + {b} = {c}.", "train"),
    Whole("add.altogether", "+", "any",
          "In one box there are {a} {items}, and in another box there are {b} {items}. What is the total number "
          "of {items} in the two boxes?", "The two boxes hold {a} + {b} = {c}.", "test"),
    Whole("subtract.fewer_than", "-", "smaller",
          "{name} has {a} {items}. {other} has {b} fewer {items} than {name}. How many {items} does {other} have?",
          "{other} has {b} fewer than {name}: {a} - {b} = {c}.", "train"),
    Whole("subtract.left_after_eating", "-", "smaller",
          "There were {a} {items} on the table. {name} took {b} of them. How many {items} are still on the table?",
          "{a} - {b} = {c} are still on the table.", "train"),
    Whole("subtract.how_many_more", "-", "smaller",
          "{name} has {a} {items} and {other} has {b}. How many more {items} does {name} have than {other}?",
          "The difference is {a} - {b} = {c}.", "test"),
    Whole("multiply.containers", "×", "factors",
          "{name} fills {a} {containers} with {b} {items} in each {container}. How many {items} does {name} "
          "put in the {containers}?", "{a} {containers} of {b}: {a} × {b} = {c}.", "train"),
    Whole("multiply.each_holds", "×", "factors",
          "Each {container} holds {b} {items}. How many {items} are there in {a} full {containers}?",
          "{a} {containers} of {b}: {a} × {b} = {c}.", "test"),
    Whole("divide.share_friends", "÷", "divisible",
          "{name} shares {a} {items} equally among {b} friends. How many {items} does each friend get?",
          "Each friend gets {a} ÷ {b} = {c}.", "train"),
    Whole("divide.pack", "÷", "divisible",
          "There are {a} {items} to pack, {b} in each {container}. How many {containers} are needed?",
          "{a} ÷ {b} = {c} {containers}.", "test"),
)

OPENINGS: tuple[Piece, ...] = (
    Piece("has", "{name} has {n} {items}.", "train"),
    Piece("starts_with", "{name} starts with {n} {items}.", "train"),
    Piece("bag", "There are {n} {items} in {name}'s bag.", "train"),
    Piece("owns", "{name} owns {n} {items}.", "test"),
    Piece("at_first", "At first, {name} has {n} {items}.", "test"),
)

QUESTIONS: tuple[Piece, ...] = (
    Piece("now", "How many {items} does {name} have now?", "train"),
    Piece("at_the_end", "How many {items} does {name} have at the end?", "train"),
    Piece("number_now", "What is the number of {items} {name} has now?", "train"),
    Piece("end_up", "How many {items} does {name} end up with?", "test"),
    Piece("after_all", "After all this, how many {items} does {name} have?", "test"),
)

DISTRACTORS: tuple[Piece, ...] = (
    Piece("age", "{name} is {d} years old.", "train"),
    Piece("friend_has", "{other} has {d} {thing}.", "train"),
    Piece("weather", "It is {d} degrees warmer than yesterday.", "test"),
    Piece("sibling_has", "{name}'s cousin keeps {d} {thing} at home.", "test"),
)

FRAMES: tuple[Piece, ...] = (
    Piece("multi.then", "opening, then one sentence per step chained with 'Then'", "train"),
    Piece("multi.groups", "'N containers with M items in each' (the first ×), then steps", "train"),
    Piece("multi.first_then", "opening, then the steps in one sentence: 'First ..., then ..., and finally ...'", "test"),
    Piece("multi.compare", "a second person has k more or fewer (the first step), then that person's steps", "test"),
)

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)


def of_split(pieces: tuple, split: str) -> list:
    """The pieces (steps, wholes, openings, ...) that belong to `split`."""
    return [piece for piece in pieces if piece.split == split]


def template_ids(split: str) -> set[str]:
    """Every template id a row of `split` can carry in its `template` field."""
    return {piece.template for group in (STEPS, WHOLES, FRAMES) for piece in of_split(group, split)}
