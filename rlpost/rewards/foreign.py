"""Reward functions written for TRL or verl, called with their own signatures.

TRL (`GRPOTrainer(reward_funcs=...)`): `fn(completions, prompts=..., **dataset_columns) -> list[float]`,
all by keyword, one call for a whole group: `completions` and `prompts` are lists with one entry per
completion, and so is every dataset column (the row's value repeated). An entry of None means "does
not apply to this completion" and scores 0, as TRL's sum over functions makes it.

verl (`custom_reward_function`): `compute_score(data_source, solution_str, ground_truth, extra_info)`
by keyword, once per completion; it returns a number or a dict whose `score` key is the number (the
other keys are verl's extra logging and are ignored).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlpost.rewards.errors import RewardFunctionError
from rlpost.rewards.params import check_kwargs, describe, keyword_names, select

TRL_SIGNATURE = "fn(completions: list[str], prompts: list[str], **dataset_columns) -> list[float]"
VERL_SIGNATURE = "compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict"

_TRL_FILLED = frozenset({"completions", "prompts"})
_TRL_LEFT_OUT = frozenset({"prompt", "completion", "completion_ids"})
"""Row columns TRL does not pass as keyword lists (its own names for the prompt and the completion)."""
_VERL_FILLED = frozenset({"data_source", "solution_str", "ground_truth", "extra_info"})


def detect_style(signature: inspect.Signature | None) -> str:
    """`verl` for a `solution_str` parameter, `trl` for a `completions` parameter, else `rlpost`."""
    names = set(signature.parameters) if signature is not None else set()
    if "solution_str" in names:
        return "verl"
    if "completions" in names:
        return "trl"
    return "rlpost"


@dataclass(frozen=True)
class TrlReward:
    """A TRL-style function with its config kwargs; called once per group."""

    fn: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    accepted: frozenset[str] | None = None
    style: ClassVar[str] = "trl"
    batched: ClassVar[bool] = True

    def arguments(self, prompt: str, completions: list[str], row: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        count = len(completions)
        columns = {name: [value] * count for name, value in row.items() if name not in _TRL_LEFT_OUT}
        fields = {**columns, **self.kwargs, "prompts": [prompt] * count, "completions": list(completions)}
        return (), select(fields, self.accepted)

    def __call__(self, prompt: str, completions: list[str], row: dict[str, Any]) -> Any:
        args, keywords = self.arguments(prompt, completions, row)
        return self.fn(*args, **keywords)


@dataclass(frozen=True)
class VerlReward:
    """A verl-style `compute_score` with its config kwargs; called once per completion."""

    fn: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    accepted: frozenset[str] | None = None
    data_source: str | None = None
    """Passed when the row has no `data_source` field."""
    style: ClassVar[str] = "verl"
    batched: ClassVar[bool] = False

    def arguments(self, prompt: str, completion: str, row: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        del prompt  # verl gives the function the decoded response only
        fields = {
            **self.kwargs,
            "data_source": row.get("data_source", self.data_source),
            "solution_str": completion,
            "ground_truth": row.get("answer"),
            "extra_info": dict(row),
        }
        return (), select(fields, self.accepted)

    def __call__(self, prompt: str, completion: str, row: dict[str, Any]) -> Any:
        args, keywords = self.arguments(prompt, completion, row)
        value = self.fn(*args, **keywords)
        # verl's dict results carry the score under "score"; a dict without it is classified as a non-number.
        return value["score"] if isinstance(value, Mapping) and "score" in value else value


def bind_foreign(
    fn: Any, spec: str, kwargs: dict[str, Any], style: str, signature: inspect.Signature | None,
    data_source: str | None = None,
) -> TrlReward | VerlReward:
    """`fn` bound in `style` (trl or verl); RewardFunctionError names `spec` when it cannot be called so."""
    if signature is None:
        accepted = None
    else:
        accepted = keyword_names(signature)
        _check_callable_by_keyword(fn, spec, style, signature, accepted)
        check_kwargs(spec, fn, signature, kwargs, accepted, _TRL_FILLED if style == "trl" else _VERL_FILLED)
    if style == "trl":
        return TrlReward(fn, kwargs, accepted)
    return VerlReward(fn, kwargs, accepted, data_source)


def _check_callable_by_keyword(
    fn: Any, spec: str, style: str, signature: inspect.Signature, accepted: frozenset[str] | None
) -> None:
    """TRL and verl pass everything by keyword: the key parameter must be named, and none positional-only."""
    key, expected = ("completions", TRL_SIGNATURE) if style == "trl" else ("solution_str", VERL_SIGNATURE)
    positional_only = [p.name for p in signature.parameters.values()
                       if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty]
    if (accepted is not None and key not in accepted) or positional_only:
        problem = f"no parameter {key!r}" if not positional_only else f"positional-only {', '.join(positional_only)}"
        raise RewardFunctionError(
            f"reward {spec!r}: style {style} calls {expected} by keyword, but {describe(fn, signature)} has {problem}"
        )

