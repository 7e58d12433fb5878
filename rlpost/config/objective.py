"""Settings of the training objective (advantage estimator + policy loss).

Knobs shared by every method sit at the top level of `objective:`; a method's own knobs sit in
a sub-section named after it (e.g. `objective.dapo.overlong_buffer`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from rlpost.config.base import Section

LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3", "k3+"]


class ObjectiveConfig(Section):
    name: str = "grpo"
    """Objective to train with, by registry name (see `rlpost.objectives.registry`)."""
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
    """Per-token KL estimator: k1 (log-ratio), k2 (squared), k3 (low-variance, GRPO) or k3+ (k3 value, k2 gradient)."""
    loss_agg: LossAggregation = "token-mean"
    """How per-token losses become one number; token-mean divides by the valid tokens of the whole optimizer step."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus (subtracted from the loss); 0 disables it."""

    @field_validator("name")
    @classmethod
    def _known_objective(cls, name: str) -> str:
        from rlpost.objectives.registry import objective_names

        from rlpost.config.errors import closest

        names = objective_names()
        if name not in names:
            hint = closest(name, names)
            raise ValueError(f"unknown objective {name!r}{hint}; choose one of {', '.join(sorted(names))}")
        return name

    @field_validator("clip_low", "clip_high")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("clip_c")
    @classmethod
    def _dual_clip_above_one(cls, value: float | None) -> float | None:
        if value is not None and value <= 1:
            raise ValueError("dual-clip constant must be > 1 (or null to disable)")
        return value
