"""Built-in reward `boxed_format`: 1.0 when the completion ends with one boxed, non-blank answer.

One box, at the end: a bonus for *any* box was hacked within 30 GRPO steps on the built-in task
(SmolLM2-135M answered every question with a column of `\\boxed{12}` lines, no arithmetic: boxed
rate 1.0, held-out pass@1 0.127 -> 0.023; docs/results/quickstart_recipe.md). The final answer
boxed once is the format the system prompt asks for, and the one rule that cannot be met by boxing
more.
"""

from __future__ import annotations

from typing import Any

from rlpost.rewards.registry import register_reward

CLOSING_MARKS = set(".$)]}\\*")
"""What may follow the box: the sentence's full stop, closing math delimiters (`$`, `\\]`), bold marks."""


@register_reward("boxed_format")
def boxed_format_reward(prompt: str, completion: str, **row_fields: Any) -> float:
    """1.0 when `completion` holds exactly one complete `\\boxed{...}`, non-blank, followed by nothing
    but whitespace and closing marks (`CLOSING_MARKS`); else 0.0."""
    boxes = boxed_spans(completion)
    if len(boxes) != 1:
        return 0.0
    content, end = boxes[0]
    tail = completion[end:]
    return 1.0 if content.strip() and all(c.isspace() or c in CLOSING_MARKS for c in tail) else 0.0


def boxed_spans(text: str) -> list[tuple[str, int]]:
    """(content, end offset) of every complete `\\boxed{...}` in `text` (nested braces allowed; unclosed ones ignored)."""
    spans = []
    start = text.find("\\boxed{")
    while start != -1:
        opening = start + len("\\boxed{")
        depth, position = 1, opening
        while position < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            position += 1
        if depth == 0:
            spans.append((text[opening : position - 1], position))
        start = text.find("\\boxed{", opening)
    return spans


def boxed_contents(text: str) -> list[str]:
    """The contents of every complete `\\boxed{...}` in `text` (nested braces allowed; unclosed ones ignored)."""
    return [content for content, _ in boxed_spans(text)]
