"""Final answers out of the common math-data formats, chosen by `data.answer_format`.

- `gsm8k`: the answer field is a worked solution ending in a `#### 42` line (GSM8K). The answer is
  the text after `####`, thousands separators removed (`1,200` -> `1200`); the reasoning before it,
  without the `<<48/2=24>>` calculator annotations and ending in `\\boxed{42}`, becomes the row's
  `solution` when the row has none.
- `boxed`: the answer field holds a solution with the final answer in `\\boxed{...}` (MATH; set
  `data.answer_field: solution`). The answer is the content of the last `\\boxed{...}` (nested braces
  allowed, `\\fbox` too); the whole text is the row's `solution` when the row has none.
- `plain`: the answer field is the answer itself (surrounding whitespace removed).
- `auto` (default): `gsm8k` when every row's answer has a `####` line, `boxed` when every one has a
  `\\boxed{`, `plain` when none has either; the choice is logged. A mix is an error that names a row
  of each kind, so a file of mixed formats is never half-parsed.

A row that the chosen format cannot parse (no `####`, nothing after it, no `\\boxed{`, unbalanced
braces, an empty box) is a `DatasetError` naming the row and the field.
"""

from __future__ import annotations

import logging
import re

from rlpost.data.errors import DatasetError

log = logging.getLogger(__name__)

ANSWER_FORMATS = ("auto", "gsm8k", "boxed", "plain")
_GSM8K_MARK = re.compile(r"^\s*####", re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def detect_answer_format(answers: list[str], wheres: list[str], field: str) -> str:
    """`gsm8k`, `boxed` or `plain` for these answers, or a DatasetError naming rows of two kinds."""
    kinds = ["gsm8k" if _GSM8K_MARK.search(a) else "boxed" if _BOXED.search(a) else "plain" for a in answers]
    found = sorted(set(kinds), key=kinds.index)
    if len(found) == 1:
        return found[0]
    first = {kind: wheres[kinds.index(kind)] for kind in found}
    described = "; ".join(f"{where}: {_DESCRIPTIONS[kind]}" for kind, where in first.items())
    raise DatasetError(
        f"data.answer_format auto: the {field!r} field mixes formats ({described}); set data.answer_format "
        "to gsm8k, boxed or plain (a row the format cannot parse is then reported)"
    )


_DESCRIPTIONS = {"gsm8k": "a '#### answer' line", "boxed": "a \\boxed{...} answer", "plain": "a plain answer"}


def extract_answer(row: dict, answer_format: str, where: str, field: str) -> dict:
    """`row` with `answer` reduced to the final answer by `answer_format` (and a `solution` where it had none)."""
    text = row["answer"]
    if answer_format == "plain":
        return {**row, "answer": text.strip()}
    if answer_format == "gsm8k":
        answer, reasoning = _gsm8k(text, where, field)
        solution = f"{reasoning}\nThe answer is \\boxed{{{answer}}}." if reasoning else f"\\boxed{{{answer}}}"
    else:
        answer, solution = _last_boxed(text, where, field), text
    return {**row, "answer": answer, "solution": row.get("solution", solution)}


def _gsm8k(text: str, where: str, field: str) -> tuple[str, str]:
    marks = list(_GSM8K_MARK.finditer(text))
    if not marks:
        raise DatasetError(f"{where}: answer_format gsm8k, but the {field!r} field has no '#### answer' line: "
                           f"{_clip(text)!r}")
    tail = text[marks[-1].end():].strip()
    answer = _THOUSANDS.sub("", tail.splitlines()[0].strip()) if tail else ""
    if not answer:
        raise DatasetError(f"{where}: answer_format gsm8k, but nothing follows '####' in the {field!r} field: "
                           f"{_clip(text)!r}")
    reasoning = _CALCULATOR.sub("", text[: marks[-1].start()]).strip()
    return answer, reasoning


def _last_boxed(text: str, where: str, field: str) -> str:
    starts = list(_BOXED.finditer(text))
    if not starts:
        raise DatasetError(f"{where}: answer_format boxed, but the {field!r} field has no \\boxed{{...}}: "
                           f"{_clip(text)!r}")
    depth, begin = 1, starts[-1].end()
    for index in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            answer = text[begin:index].strip()
            if not answer:
                raise DatasetError(f"{where}: answer_format boxed, but the last \\boxed{{}} of the {field!r} "
                                   "field is empty")
            return answer
    raise DatasetError(f"{where}: answer_format boxed, but the last \\boxed{{ of the {field!r} field is never "
                       f"closed (unbalanced braces): {_clip(text[starts[-1].start():])!r}")


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def apply_answer_format(rows: list[dict], wheres: list[str], source: str, answer_format: str, field: str) -> list[dict]:
    """Every row's final answer under `answer_format` (`auto` detects it and logs the choice)."""
    if answer_format == "auto":
        answer_format = detect_answer_format([row["answer"] for row in rows], wheres, field)
        log.info("%s: data.answer_format auto -> %s (the %r field of %d rows)", source, answer_format, field, len(rows))
    return [extract_answer(row, answer_format, where, field) for row, where in zip(rows, wheres, strict=True)]
