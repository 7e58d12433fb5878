"""How rlpost calls a reward function: the signature check, and which row fields each call passes."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from rlpost.registry import closest
from rlpost.rewards.errors import RewardFunctionError
from rlpost.rewards.registry import RewardFn

SIGNATURE = "fn(prompt: str, completion: str, **row_fields) -> float"

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class BoundReward:
    """A reward function with its config kwargs and the set of keyword arguments it accepts."""

    fn: RewardFn
    kwargs: dict[str, Any] = field(default_factory=dict)
    positional: frozenset[str] = frozenset()
    """Names of the function's first two parameters (prompt, completion): never passed again by keyword."""
    accepted: frozenset[str] | None = None
    """Keyword names the function declares; None when it takes **kwargs (then every field is passed)."""

    def __call__(self, prompt: str, completion: str, row: dict[str, Any]) -> Any:
        fields = {**row, **self.kwargs}  # a config kwarg overrides a row field of the same name
        keywords = {
            name: value
            for name, value in fields.items()
            if name not in self.positional and (self.accepted is None or name in self.accepted)
        }
        return self.fn(prompt, completion, **keywords)


def bind_reward(fn: Any, spec: str, kwargs: dict[str, Any] | None = None) -> BoundReward:
    """Check that `fn` can be called as a reward with `kwargs`; RewardFunctionError names `spec` if not."""
    kwargs = dict(kwargs or {})
    if not callable(fn):
        raise RewardFunctionError(f"reward {spec!r}: {type(fn).__name__} object is not callable")
    if inspect.iscoroutinefunction(fn):
        raise RewardFunctionError(f"reward {spec!r}: async functions are not supported; use a plain def")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some C callables have no signature: trust them, failures are counted
        return BoundReward(fn, kwargs)
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    unfillable = [p for p in positional[2:] if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty]
    if (len(positional) < 2 and not takes_varargs) or unfillable:
        raise RewardFunctionError(
            f"reward {spec!r}: {getattr(fn, '__name__', 'function')}{signature} does not match {SIGNATURE}: it must "
            "take the prompt and the completion as its first two positional parameters, and row fields by keyword"
        )
    reserved = frozenset(p.name for p in positional[:2])
    takes_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    accepted = None if takes_any_keyword else frozenset(p.name for p in parameters if p.kind in _NAMED) - reserved
    for name in kwargs:
        if name in reserved or (accepted is not None and name not in accepted):
            raise RewardFunctionError(
                f"reward {spec!r}: kwargs has {name!r}, which {getattr(fn, '__name__', 'the function')}{signature} "
                f"does not accept{closest(name, accepted or ())}"
            )
    return BoundReward(fn, kwargs, reserved, accepted)
