"""Settings of SFT–RL blending: a controller decides, each step, how SFT on demonstrations and the
RL objective combine (ALGORITHMS.md §7 SASR, §8 HPT, §9 AMFT).

`blending.name` picks the controller (`none` trains with the RL objective alone); each controller's
own knobs sit in a sub-section named after it (`blending.sasr.*`, `blending.hpt.*`,
`blending.amft.*`), declared beside the controller's code and registered with it
(`rlpost.blending.base.register_controller`), and `blending.sft.*` sets the SFT loss all of them share. Demonstrations are the
rows' worked solutions (`data.solution_field`): the prompt, then the tokenised solution and the
end-of-sequence token, trained with a per-token negative log-likelihood (prompt tokens masked).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from rlpost.blending.base import CONTROLLERS
from rlpost.config.base import Section
from rlpost.config.objective import LossAggregation
from rlpost.config.plugins import known_plugin, with_plugin_sections


class SftConfig(Section):
    """The SFT loss on demonstrations (every controller uses it)."""

    loss_agg: LossAggregation = "token-mean"
    """How per-token NLLs become one number, normalised over the whole step like the RL loss: token-mean (HPT's and AMFT's cross-entropy) or any `objective.loss_agg` mode."""
    max_demo_tokens: int | None = Field(None, ge=1)
    """Cut demonstrations (solution + end-of-sequence token) to this many tokens; null keeps them whole."""


class BlendingSettings(Section):
    """The `blending:` section: the controller's name and the shared SFT loss, plus one sub-section per
    registered controller with knobs of its own."""

    name: str = "none"
    """Controller: `none` (the RL objective alone), `sasr`, `hpt` or `amft` (any registered controller, see `rlpost.blending`)."""
    sft: SftConfig = SftConfig()
    """The SFT loss on demonstrations."""

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        return known_plugin(name, CONTROLLERS, also=("none",))


BlendingConfig = with_plugin_sections(BlendingSettings, CONTROLLERS, "BlendingConfig")
