"""Settings of the prompt sampler (which prompts each step, and how many rollouts each)."""

from __future__ import annotations

from typing import Literal

from rlpost.config.base import Section


class SamplerConfig(Section):
    name: Literal["uniform"] = "uniform"
    """Prompt sampler: `uniform` shuffles the dataset every epoch and gives each prompt `rollout.n` rollouts."""
