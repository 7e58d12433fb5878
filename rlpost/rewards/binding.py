"""How rlpost calls a reward function: its calling style, the signature check, and the arguments of each call.

Three styles (`reward.functions[].style`): rlpost's own `fn(prompt, completion, **row_fields)`, and the
TRL and verl signatures of `rlpost.rewards.foreign`. `auto` detects the style from the parameter names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from rlpost.rewards.errors import RewardFunctionError
from rlpost.rewards.foreign import TrlReward, VerlReward, bind_foreign, detect_style
from rlpost.rewards.params import POSITIONAL, check_kwargs, describe, keyword_names, select, signature_of
from rlpost.rewards.registry import RewardFn

SIGNATURE = "fn(prompt: str, completion: str, **row_fields) -> float"
STYLES = ("auto", "rlpost", "trl", "verl")


@dataclass(frozen=True)
class BoundReward:
    """A reward function with its config kwargs and the set of keyword arguments it accepts."""

    fn: RewardFn
    kwargs: dict[str, Any] = field(default_factory=dict)
    positional: frozenset[str] = frozenset()
    """Names of the function's first two parameters (prompt, completion): never passed again by keyword."""
    accepted: frozenset[str] | None = None
    """Keyword names the function declares; None when it takes **kwargs (then every field is passed)."""
    style: ClassVar[str] = "rlpost"
    batched: ClassVar[bool] = False

    def arguments(self, prompt: str, completion: str, row: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        fields = {**row, **self.kwargs}  # a config kwarg overrides a row field of the same name
        return (prompt, completion), select(fields, self.accepted, skip=self.positional)

    def __call__(self, prompt: str, completion: str, row: dict[str, Any]) -> Any:
        args, keywords = self.arguments(prompt, completion, row)
        return self.fn(*args, **keywords)


AnyBoundReward = Union[BoundReward, TrlReward, VerlReward]


def bind_reward(
    fn: Any, spec: str, kwargs: dict[str, Any] | None = None, style: str = "auto", data_source: str | None = None
) -> AnyBoundReward:
    """Check that `fn` can be called as a reward in `style` with `kwargs`; RewardFunctionError names `spec` if not."""
    kwargs = dict(kwargs or {})
    if style not in STYLES:
        raise RewardFunctionError(f"reward {spec!r}: style {style!r} is not one of {', '.join(STYLES)}")
    if not callable(fn):
        raise RewardFunctionError(f"reward {spec!r}: {type(fn).__name__} object is not callable")
    if inspect.iscoroutinefunction(fn):
        raise RewardFunctionError(f"reward {spec!r}: async functions are not supported; use a plain def")
    signature = signature_of(fn)
    resolved = detect_style(signature) if style == "auto" else style
    if data_source is not None and resolved != "verl":
        raise RewardFunctionError(
            f"reward {spec!r}: data_source is set, but the function is called in the {resolved} style; "
            "data_source is for verl-style compute_score functions (style: verl)"
        )
    if resolved != "rlpost":
        return bind_foreign(fn, spec, kwargs, resolved, signature, data_source)
    if signature is None:
        return BoundReward(fn, kwargs)
    return _bind_rlpost(fn, spec, kwargs, signature)


def _bind_rlpost(fn: Any, spec: str, kwargs: dict[str, Any], signature: inspect.Signature) -> BoundReward:
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in POSITIONAL]
    takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    unfillable = [p for p in positional[2:] if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty]
    if (len(positional) < 2 and not takes_varargs) or unfillable:
        raise RewardFunctionError(
            f"reward {spec!r}: {describe(fn, signature)} does not match {SIGNATURE}: it must take the prompt and "
            "the completion as its first two positional parameters, and row fields by keyword (a TRL or verl "
            "function is recognised by a `completions` or `solution_str` parameter, or set its style)"
        )
    reserved = frozenset(p.name for p in positional[:2])
    accepted = keyword_names(signature)
    if accepted is not None:
        accepted -= reserved
    check_kwargs(spec, fn, signature, kwargs, accepted, reserved)
    return BoundReward(fn, kwargs, reserved, accepted)


def check_call(bound: AnyBoundReward, spec: str, row: dict[str, Any], where: str = "the row") -> None:
    """The arguments a call on `row` would pass bind to the function's signature; the function is not
    called (a reward may kill, hang or change files: only a worker process runs it)."""
    signature = signature_of(bound.fn)
    if signature is None:
        return
    args, keywords = bound.arguments("prompt", ["completion"] if bound.batched else "completion", row)
    try:
        signature.bind(*args, **keywords)
    except TypeError as exc:
        raise RewardFunctionError(
            f"reward {spec!r} cannot be called with the fields of {where} ({exc}); the row has fields: {', '.join(row)}"
        ) from None
