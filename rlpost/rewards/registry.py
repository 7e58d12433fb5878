"""Reward registry: built-in and registered names, plus `file.py:fn` / `package.module:fn` specs.

Registering a reward makes it available by name in `reward.functions`:

    from rlpost.rewards import register_reward

    @register_reward("exact_answer")
    def exact_answer(prompt: str, completion: str, *, answer: str, **row_fields) -> float:
        return float(completion.strip() == answer)

The function must live at the top level of an importable module: worker processes receive it by
reference (module and name), not by value.
"""

from __future__ import annotations

from collections.abc import Callable

from rlpost.config.errors import closest
from rlpost.rewards.errors import RewardFunctionError

RewardFn = Callable[..., float]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward function under `name` (returns the function unchanged)."""
    if ":" in name:
        raise ValueError(f"reward name {name!r} may not contain ':' (that marks file and module specs)")

    def register(fn: RewardFn) -> RewardFn:
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing) != _qualified(fn):
            raise ValueError(f"reward {name!r} is already registered to {_qualified(existing)}")
        _REGISTRY[name] = fn
        return fn

    return register


def reward_names() -> list[str]:
    """Names usable in `reward.functions` without a `:` spec."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_reward_fn(name: str) -> RewardFn:
    """The function for a registered name, a `path/to/file.py:fn` spec or a `package.module:fn` spec."""
    if ":" in name:
        from rlpost.rewards.user import load_user_reward

        return load_user_reward(name)
    _load_builtins()
    if name not in _REGISTRY:
        raise RewardFunctionError(
            f"unknown reward {name!r}{closest(name, _REGISTRY)}; registered: {', '.join(sorted(_REGISTRY))} "
            "(or give a user function as path/to/file.py:function or package.module:function)"
        )
    return _REGISTRY[name]


def _load_builtins() -> None:
    # Imported here, not at module import, because builtin.py itself imports this module to register.
    import rlpost.rewards.builtin  # noqa: F401


def _qualified(fn: RewardFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
