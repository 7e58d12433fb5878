"""Signature helpers shared by the reward calling styles: which keywords a function accepts, and the
one-line errors that name the reward spec."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rlpost.registry import closest
from rlpost.rewards.errors import RewardFunctionError

NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature, or None for the few C callables that have none (they are trusted; failures are counted)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def keyword_names(signature: inspect.Signature) -> frozenset[str] | None:
    """Names the function accepts by keyword; None when it takes **kwargs (then it accepts any)."""
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in NAMED)


def select(fields: Mapping[str, Any], accepted: frozenset[str] | None, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields the function accepts, `skip` left out."""
    skipped = frozenset(skip)
    return {name: value for name, value in fields.items()
            if name not in skipped and (accepted is None or name in accepted)}


def describe(fn: Callable[..., Any], signature: inspect.Signature) -> str:
    return f"{getattr(fn, '__name__', 'function')}{signature}"


def check_kwargs(
    spec: str, fn: Callable[..., Any], signature: inspect.Signature, kwargs: Mapping[str, Any],
    accepted: frozenset[str] | None, reserved: frozenset[str],
) -> None:
    """Every config kwarg is one the function takes and not one rlpost fills itself."""
    for name in kwargs:
        if name in reserved:
            raise RewardFunctionError(
                f"reward {spec!r}: kwargs has {name!r}, which rlpost passes itself; rename the parameter"
            )
        if accepted is not None and name not in accepted:
            raise RewardFunctionError(
                f"reward {spec!r}: kwargs has {name!r}, which {describe(fn, signature)} "
                f"does not accept{closest(name, accepted or ())}"
            )
