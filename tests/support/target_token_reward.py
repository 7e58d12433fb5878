"""A scripted reward for the learning test (tests/e2e/test_learning.py): no task, only a token preference.

`space_led_share` pays for emitting "space-led" tokens: SmolLM2's tokenizer has 31,985 of its 49,152
tokens starting with a space (`Ġ`), so a random model emits them about 65% of the time and a policy
that learns can push the share towards 1. The score is the number of spaces in the completion over
`max_tokens` (the generation budget), capped at 1: every space-led token adds one space, a token
with none adds nothing, and stopping early scores the missing tokens as 0.
"""

from __future__ import annotations


def space_led_share(prompt: str, completion: str, *, max_tokens: int = 16) -> float:
    return min(1.0, completion.count(" ") / max_tokens)
