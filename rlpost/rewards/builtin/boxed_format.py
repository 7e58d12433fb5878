"""Built-in reward `boxed_format`: 1.0 when the completion boxes a non-blank answer."""

from __future__ import annotations

from typing import Any

from rlpost.rewards.registry import register_reward


@register_reward("boxed_format")
def boxed_format_reward(prompt: str, completion: str, **row_fields: Any) -> float:
    """1.0 when `completion` has a complete `\\boxed{...}` with non-blank content, else 0.0."""
    return 1.0 if any(content.strip() for content in boxed_contents(completion)) else 0.0


def boxed_contents(text: str) -> list[str]:
    """The contents of every complete `\\boxed{...}` in `text` (nested braces allowed; unclosed ones ignored)."""
    contents = []
    start = text.find("\\boxed{")
    while start != -1:
        opening = start + len("\\boxed{")
        depth, position = 1, opening
        while position < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            position += 1
        if depth == 0:
            contents.append(text[opening : position - 1])
        start = text.find("\\boxed{", opening)
    return contents
