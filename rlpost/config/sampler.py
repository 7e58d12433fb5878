"""Settings of the prompt sampler (which prompts each step, and how many rollouts each).

`sampler.name` picks the sampler; each sampler's own knobs sit in a sub-section named after it
(`sampler.vade.*`, `sampler.knapsack.*`), declared beside the sampler's code and registered with it
(`rlpost.samplers.base.register_sampler`): `SamplerConfig` is built from the registry. The batch
size B is `train.prompts_per_step`, the default group size `rollout.n`, the seed `train.seed`.
"""

from __future__ import annotations

from pydantic import field_validator

from rlpost.config.base import Section
from rlpost.config.plugins import known_plugin, with_plugin_sections
from rlpost.samplers.base import SAMPLERS


class SamplerSettings(Section):
    """The `sampler:` section: the sampler's name, plus one sub-section per registered sampler with knobs."""

    name: str = "uniform"
    """Prompt sampler: `uniform` shuffles the dataset every epoch and gives each prompt `rollout.n` rollouts; `vade` picks high-information prompts by Thompson sampling; `knapsack` splits the rollout budget unevenly across prompts (any registered sampler)."""

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        return known_plugin(name, SAMPLERS)


SamplerConfig = with_plugin_sections(SamplerSettings, SAMPLERS, "SamplerConfig")
