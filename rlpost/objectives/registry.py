"""The objective registry. Each `rlpost/objectives/<name>.py` registers its class with

    @OBJECTIVES.register("rloo", config=RlooConfig, defaults={...}, corrects_off_policy=False)

declaring, beside its code, its config section (`objective.<name>.*`), the values of shared knobs
it sets when the config leaves them unset, and its capability flags (`CAPABILITIES`). The config
schema builds `objective.<name>` sub-sections from the registry (`rlpost.config.objective`).
"""

from __future__ import annotations

from rlpost.registry import Entry, Registry

CAPABILITIES: dict[str, str] = {
    "corrects_off_policy": "the loss corrects stale (off-policy) data itself, so `cluster.is_correction: auto` "
    "adds no importance-sampling correction on top (VCPO)",
    "group_relative": "the advantage is relative to the completion's group (a group mean or leave-one-out "
    "baseline), so groups of one completion carry no signal and `rollout.n = 1` is refused",
    "own_gradient_path": "the objective may take its own gradient path instead of back-propagating "
    "`compute_loss` (VCPO's OPOB); the instance's `per_trajectory_baseline` says whether it does for its config",
}
"""Capability flags an objective may declare, and what each tells the other components."""

OBJECTIVES: Registry[type] = Registry("objective", package="rlpost.objectives", capabilities=CAPABILITIES)


def objective_names() -> list[str]:
    """Every registered objective name."""
    return OBJECTIVES.names()


def get_objective(name: str) -> type:
    """The objective class registered under `name`."""
    return OBJECTIVES.get(name)


def objective_entry(name: str) -> Entry[type]:
    """The registry entry of `name`: class, config section, method defaults and capabilities."""
    return OBJECTIVES.entry(name)


def has_capability(name: str, capability: str) -> bool:
    """Whether objective `name` declares `capability` (one of `CAPABILITIES`)."""
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown objective capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    return bool(OBJECTIVES.entry(name).capabilities.get(capability, False))
