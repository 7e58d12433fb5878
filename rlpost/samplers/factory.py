"""Build the sampler that `sampler.name` names, with its own sub-section of settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlpost.samplers.base import SAMPLERS, PromptSampler
from rlpost.types import Prompt

if TYPE_CHECKING:
    from rlpost.config.sampler import SamplerConfig


def build_sampler(
    config: SamplerConfig, prompts: list[Prompt], *, prompts_per_step: int, default_n: int, seed: int
) -> PromptSampler:
    """The sampler named by `config.name`, over `prompts` (B = prompts_per_step, n = default_n)."""
    entry = SAMPLERS.entry(config.name)
    settings = {"config": getattr(config, entry.name)} if entry.config is not None else {}
    return entry.target(prompts, prompts_per_step=prompts_per_step, default_n=default_n, seed=seed, **settings)
