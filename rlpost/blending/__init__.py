"""SFT–RL blending: controllers that decide, each step, how SFT on demonstrations and the RL
objective combine (ALGORITHMS.md §7 SASR, §8 HPT, §9 AMFT). See `rlpost.blending.base`; the
controllers are the modules of `rlpost.blending.controllers`."""

# The schema imports this package to collect the controllers' sections; loading it before any
# controller module means those modules never run while the schema waits on a half-imported one.
import rlpost.config  # noqa: F401
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
