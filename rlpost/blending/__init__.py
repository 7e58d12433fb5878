"""SFT–RL blending: controllers that decide, each step, how SFT on demonstrations and the RL
objective combine (ALGORITHMS.md §7 SASR, §8 HPT, §9 AMFT). See `rlpost.blending.base`."""

from rlpost.blending.base import (
    BlendController,
    BlendPlan,
    BlendProbe,
    StepStats,
    build_controller,
    controller_names,
    get_controller,
)

__all__ = [
    "BlendController",
    "BlendPlan",
    "BlendProbe",
    "StepStats",
    "build_controller",
    "controller_names",
    "get_controller",
]
