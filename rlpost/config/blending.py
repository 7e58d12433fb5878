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
    warmup_steps: int = Field(0, ge=0)
    """SFT-only optimizer steps on the worked solutions before the first rollout, with any objective and
    controller but SASR's and AMFT's (which have warm-ups of their own): nothing is generated, so a step
    costs one learner pass over `warmup_demos` demonstrations. They count toward `train.steps`
    (steps 0..warmup_steps-1; RL starts at step `warmup_steps`). 0: no warm-up."""
    warmup_lr: float | None = Field(None, gt=0)
    """Learning rate of the warm-up steps (null: `optimizer.lr`): SFT on clean worked solutions takes larger
    steps than the RL that follows."""
    warmup_demos: int = Field(64, ge=1)
    """Demonstrations per warm-up step: the train split in one fixed shuffled order (`train.seed`), taken
    in turn and cycled."""


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
