"""Reward registry: built-in and registered names, plus `file.py:fn` / `package.module:fn` specs.

Registering a reward makes it available by name in `reward.functions`:

    from rlpost.rewards import register_reward

    @register_reward("exact_answer")
    def exact_answer(prompt: str, completion: str, *, answer: str, **row_fields) -> float:
        return float(completion.strip() == answer)

The function must live at the top level of an importable module: worker processes receive it by
reference (module and name), not by value. The built-in rewards are the modules of
`rlpost.rewards.builtin`, imported the first time a name is looked up.
"""

from __future__ import annotations

from collections.abc import Callable

from rlpost.registry import Registry, UnknownPluginError
from rlpost.rewards.errors import RewardFunctionError
from rlpost.rewards.user import load_user_reward

RewardFn = Callable[..., float]

REWARDS: Registry[RewardFn] = Registry("reward", package="rlpost.rewards.builtin")
"""Reward functions by name (`reward.functions[].name` without a `:`)."""


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward function under `name` (returns the function unchanged)."""
    if ":" in name:
        raise ValueError(f"reward name {name!r} may not contain ':' (that marks file and module specs)")

    def register(fn: RewardFn) -> RewardFn:
        if name in REWARDS and _qualified(REWARDS.get(name)) == _qualified(fn):
            return fn  # a reward file run again (listed twice in reward.functions): keep the first copy
        return REWARDS.register(name)(fn)

    return register


def reward_names() -> list[str]:
    """Names usable in `reward.functions` without a `:` spec."""
    return sorted(REWARDS.names())


def get_reward_fn(name: str) -> RewardFn:
    """The function for a registered name, a `path/to/file.py:fn` spec or a `package.module:fn` spec."""
    if ":" in name:
        return load_user_reward(name)
    try:
        return REWARDS.get(name)
    except UnknownPluginError as err:
        raise RewardFunctionError(
            f"{err} (or give a user function as path/to/file.py:function or package.module:function)"
        ) from None


def _qualified(fn: RewardFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
