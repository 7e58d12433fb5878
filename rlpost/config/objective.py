"""Settings of the training objective (advantage estimator + policy loss).

Knobs shared by every method sit at the top level of `objective:` (`ObjectiveKnobs`); a method's
own knobs sit in a sub-section named after it (e.g. `objective.dapo.overlong_buffer`). Those
sub-sections are not listed here: each objective declares its section class next to its code and
registers it (`rlpost.objectives.registry.OBJECTIVES`), and `ObjectiveConfig` is built from the
registry, so adding a method adds its section.

Shared knobs whose published value differs by method (clip ranges, loss aggregation, std
normalisation) take that method's registered `defaults` when the config does not set them:
`name: dapo` alone gives clip_high 0.28, clip_c 10 and token-mean. A value written in the config
always wins.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import field_validator, model_validator

from rlpost.config.base import Section
from rlpost.config.plugins import known_plugin, with_plugin_sections
from rlpost.objectives.kl_reward import KLInRewardConfig
from rlpost.objectives.registry import OBJECTIVES, has_capability

LossAggregation = Literal[
    "token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "dr-grpo"
]
KLEstimator = Literal[
    "k1", "k2", "k3", "abs", "kl", "mse", "low_var_kl",
    "k1+", "k2+", "k3+", "abs+", "kl+", "mse+", "low_var_kl+",
]  # fmt: skip

RewardNormalization = Literal["none", "batch", "batch_std"]

LOSS_AGG_HELP = (
    "token-mean (sum / tokens), token-sum (sum), seq-mean-token-mean (mean over sequences of each one's "
    "token mean), seq-mean-token-sum (sum / sequences), seq-mean-token-sum-norm (sum / L_max: verl before "
    "0.9.1) or dr-grpo (sum / (sequences * L_max)). verl 0.9.1's seq-mean-token-sum-norm divides by the "
    "sequence count too: it is rlpost's dr-grpo, and a verl 0.9.1 config ported with seq-mean-token-sum-norm "
    "would multiply the loss by the batch size"
)
"""The aggregation modes, said once for the field's documentation and the error of an unknown mode."""

CLIP_HIGH_MAX = 10.0
"""Largest accepted clip_high: above it the ratio 1 + clip_high never binds in practice, which is
almost always a percent or a dual-clip constant written in the wrong knob."""


class ObjectiveKnobs(Section):
    """The knobs every objective shares (the top level of `objective:`)."""

    name: str = "grpo"
    """Objective to train with, by registry name (see `rlpost.objectives.registry`); sets method defaults of unset knobs."""
    normalize_adv_by_std: bool = True
    """Divide group-centred rewards by the group's reward std (GRPO). False gives Dr.GRPO-style advantages."""
    std_unbiased: bool = True
    """Use the unbiased (N-1) group std, as verl, oat and TRL do; False uses the population std."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing: A = (r - mean) / (std + adv_eps)."""
    clip: bool = True
    """Clip the importance ratio (PPO surrogate). False disables clipping explicitly."""
    clip_low: float = 0.2
    """Lower clip range eps_low: the ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.2
    """Upper clip range eps_high: the ratio is clipped above at 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    clip_c: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens at -A*c; null disables it."""
    kl_coef: float = 0.0
    """Weight beta of the KL-to-reference loss term; 0 means no reference model is loaded."""
    kl_estimator: KLEstimator = "k3"
    """Per-token KL estimator: k1 (log-ratio; verl `kl`), abs (|log-ratio|), k2 (squared; verl `mse`), k3 (low-variance, GRPO; verl `low_var_kl`); a trailing + (k1+, abs+, k3+, low_var_kl+, ...) keeps that value with k2's gradient."""
    kl_in_reward: KLInRewardConfig = KLInRewardConfig()
    """KL penalty in the reward (PPO): per-token k1 KL to the reference folded into the advantages, fixed or adaptive coefficient."""
    loss_agg: LossAggregation = "token-mean"
    """How per-token losses become one number, normalised over the whole optimizer step: token-mean (sum / tokens), token-sum (sum), seq-mean-token-mean, seq-mean-token-sum (sum / sequences), seq-mean-token-sum-norm (sum / L_max, verl before 0.9.1) or dr-grpo (sum / (sequences * L_max), which is verl 0.9.1's seq-mean-token-sum-norm)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus: the loss becomes loss - entropy_coef * H, with H the per-token entropy
    of the current policy aggregated like the policy loss (`loss_agg`); 0 disables it (the learner then
    skips computing the entropy). `actor/entropy` logs the token-mean entropy whenever it is computed."""
    reward_normalization: RewardNormalization = "none"
    """Normalise each step's rewards before any advantage estimator sees them: none, batch ((r - mean) / std
    over the step's sequences, population std) or batch_std (r / std, keeps the sign of 0/1 rewards). A
    constant batch gives 0 (batch) or leaves the rewards unchanged (batch_std). Applied after the method's
    own shaping (e.g. DAPO's overlong penalty) and before `reward_clip`; `reward/mean` and `reward/std`
    still log the rewards before normalisation, `reward_norm/mean|std` the statistics used."""
    reward_clip: float | None = None
    """Clip each (normalised) reward to [-reward_clip, reward_clip] before advantage estimation; null
    disables it. `reward_clip/frac` logs the fraction of sequences clipped."""
    advantage_clip: float | None = None
    """Clip every advantage (per sequence or per token) to [-advantage_clip, advantage_clip] after the
    method's estimator, for every objective; null disables it. `adv_clip/frac` logs the fraction clipped
    (of sequences, or of valid tokens for per-token advantages)."""

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("name", "grpo")
            if isinstance(name, str) and name in OBJECTIVES:
                data = {**OBJECTIVES.entry(name).defaults, **data}
        return data

    @field_validator("name")
    @classmethod
    def _known_objective(cls, name: str) -> str:
        return known_plugin(name, OBJECTIVES)

    @field_validator("loss_agg", mode="before")
    @classmethod
    def _known_loss_agg(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in get_args(LossAggregation):
            raise ValueError(f"unknown loss aggregation {value!r}; use one of: {LOSS_AGG_HELP}")
        return value

    @property
    def group_relative(self) -> bool:
        """Whether the chosen objective's advantage is relative to its group (needs groups of >= 2)."""
        return has_capability(self.name, "group_relative")

    @field_validator("clip_low")
    @classmethod
    def _clip_low_in_range(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(
                "must be in [0, 1): the ratio is clipped below at 1 - clip_low, and a ratio is always > 0, "
                "so a floor at or below 0 would never clip"
            )
        return value

    @field_validator("clip_high")
    @classmethod
    def _clip_high_in_range(cls, value: float) -> float:
        if not 0 <= value <= CLIP_HIGH_MAX:
            raise ValueError(
                f"must be in [0, {CLIP_HIGH_MAX:g}]: the ratio is clipped above at 1 + clip_high, and a larger "
                "range means no clipping (use objective.clip: false for that; the dual-clip constant is objective.clip_c)"
            )
        return value

    @field_validator("reward_clip", "advantage_clip")
    @classmethod
    def _positive_bound(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0 (or null to disable): values are clipped to [-bound, bound]")
        return value

    @field_validator("clip_c")
    @classmethod
    def _dual_clip_above_one(cls, value: float | None) -> float | None:
        if value is not None and value <= 1:
            raise ValueError("dual-clip constant must be > 1 (or null to disable)")
        return value


def check_method_defaults(base: type[Section] = ObjectiveKnobs) -> None:
    """Refuse registered method defaults of knobs that are not shared knobs (a typo would be ignored)."""
    for entry in OBJECTIVES.entries():
        unknown = sorted(set(entry.defaults) - set(base.model_fields))
        if unknown:
            raise TypeError(f"objective {entry.name!r} sets defaults of unknown shared knobs: {', '.join(unknown)}")


check_method_defaults()
ObjectiveConfig = with_plugin_sections(ObjectiveKnobs, OBJECTIVES, "ObjectiveConfig")
"""The `objective:` section: `ObjectiveKnobs` plus `<name>: <its config>` for every registered objective with knobs of its own."""
