"""Built-in reward `math_verify`: 1.0 when the completion's final answer equals the gold `answer`."""

from __future__ import annotations

import functools
import threading
from typing import Any

from rlpost.rewards.registry import register_reward

_MATH_VERIFY_TIMEOUT = 5
"""math-verify's own limit (seconds) on parsing and on comparing; the manager's per-call timeout backs it up."""


@register_reward("math_verify")
def math_verify_reward(prompt: str, completion: str, *, answer: str, **row_fields: Any) -> float:
    """1.0 when math-verify finds the gold `answer` in `completion` (boxed or not), else 0.0.

    Raises ValueError when the gold answer itself cannot be parsed: that is a data problem, and the
    manager counts and logs it with the row instead of silently scoring 0.
    """
    from math_verify import parse, verify

    gold = _parse_gold(str(answer))
    if not gold:
        raise ValueError(f"math-verify cannot parse the gold answer {answer!r}")
    timeout = _own_timeout()
    predicted = parse(completion, parsing_timeout=timeout)
    return 1.0 if verify(gold, predicted, timeout_seconds=timeout) else 0.0


def _own_timeout() -> int | None:
    # math-verify times out with signal.alarm, which raises outside the main thread; there the
    # caller (the reward manager's deadline) has to provide the limit.
    return _MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> list:
    """Gold answers are usually bare (`42`, `3/4`, `\\sqrt{2}`): box them so that math-verify reads them
    as LaTeX (a bare `\\sqrt{2}` parses to nothing, a bare `2^{10}` to 2); answers that already carry
    `$` or `\\boxed` are parsed as written. The result is cached: a group shares one gold answer."""
    from math_verify import parse

    text = answer.strip()
    written_as_latex = "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text
    for candidate in ([text] if written_as_latex else [f"\\boxed{{{text}}}", text]):
        parsed = parse(candidate, parsing_timeout=_own_timeout())
        if parsed:
            return parsed
    return []


def _warm_up_math_verify() -> None:
    """Import math-verify (and sympy) and run one comparison, so that the first real call is fast."""
    math_verify_reward("", "\\boxed{1}", answer="1")


math_verify_reward.warmup = _warm_up_math_verify  # type: ignore[attr-defined]
