"""SFT–RL blending: controllers that decide, each step, how SFT on demonstrations and the RL
objective combine (ALGORITHMS.md §7 SASR, §8 HPT, §9 AMFT). See `rlpost.blending.base`; the
controllers are the modules of `rlpost.blending.controllers`."""

from rlpost.blending.base import (
    CONTROLLERS,
    BlendController,
    BlendPlan,
    BlendProbe,
    StepStats,
    build_controller,
    controller_names,
    get_controller,
    register_controller,
)

__all__ = [
    "CONTROLLERS",
    "BlendController",
    "BlendPlan",
    "BlendProbe",
    "StepStats",
    "build_controller",
    "controller_names",
    "get_controller",
    "register_controller",
]
