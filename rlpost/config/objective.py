"""Settings of the training objective (advantage estimator + policy loss).

Knobs shared by every method sit at the top level of `objective:`; a method's own knobs sit in
a sub-section named after it (e.g. `objective.dapo.overlong_buffer`).

Shared knobs whose published value differs by method (clip ranges, loss aggregation, std
normalisation) take that method's value when the config does not set them: `name: dapo` alone
gives clip_high 0.28, clip_c 10 and token-mean (see `METHOD_DEFAULTS`). A value written in the
config always wins.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlpost.config.base import Section

LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "dr-grpo"]
KLEstimator = Literal["k1", "k2", "k3", "k3+"]


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # ALGORITHMS §1.3: no std, Σ/(B·L_max), no KL.
    "dr_grpo": {"normalize_adv_by_std": False, "loss_agg": "dr-grpo"},
    # §2.3 (verl DAPO recipe): clip-higher, dual clip 10, token-level loss.
    "dapo": {"clip_low": 0.2, "clip_high": 0.28, "clip_c": 10.0, "loss_agg": "token-mean"},
    # §3: tiny ranges because the sequence ratio is a geometric mean; verl forces seq-mean-token-mean.
    "gspo": {"clip_low": 3e-4, "clip_high": 4e-4, "clip_c": None, "loss_agg": "seq-mean-token-mean"},
    # §4.4 (BNPO run.sh).
    "bnpo": {"clip_low": 0.2, "clip_high": 0.28, "clip_c": 10.0, "loss_agg": "seq-mean-token-sum"},
    # §5.2: no std, no clipping (single on-policy step); per-completion token mean.
    "gtpo": {"normalize_adv_by_std": False, "clip": False, "loss_agg": "seq-mean-token-mean"},
    # §6.4 (vcpo_k=10.sh): clipping disabled, seq-mean-token-mean.
    "vcpo": {"clip": False, "loss_agg": "seq-mean-token-mean"},
}
"""Per-method values of shared knobs, applied only to knobs the config leaves unset."""


class DrGrpoConfig(Section):
    truncated_reward: float | None = 0.0
    """Reward of completions that hit the length limit (the Dr.GRPO reference sets 0); null keeps their reward."""


class DapoConfig(Section):
    overlong_shaping: bool = True
    """Add the soft overlong penalty to the reward of completions longer than L_max - overlong_buffer."""
    overlong_buffer: int | None = Field(None, ge=1)
    """Length of the penalty ramp L_cache in tokens; null uses 20% of L_max (the recipe's 4096 of 20480)."""
    overlong_penalty_factor: float = Field(1.0, ge=0)
    """Penalty at L_max (the ramp goes from 0 to -penalty_factor across the buffer)."""
    overlong_filter: bool = False
    """Exclude truncated completions from the loss (paper option; off in the recipe and the best paper run)."""
    filter_groups: bool = True
    """Dynamic sampling: drop groups whose filter metric is the same for all completions, sample more prompts."""
    filter_metric: Literal["acc", "score"] = "acc"
    """Value whose within-group spread decides if a group is kept: `acc` (correctness; the recipe) or `score` (total reward)."""
    gen_batch_prompts: int | None = Field(None, ge=1)
    """Prompts generated per dynamic-sampling round; null uses train.prompts_per_step (the recipe uses 3x)."""
    max_gen_batches: int = Field(10, ge=0)
    """Generation rounds allowed per step before giving up (0: unlimited)."""
    on_exhausted: Literal["raise", "proceed"] = "raise"
    """When max_gen_batches rounds keep too few groups: stop with an error (the recipe) or train on the groups kept."""


class GspoConfig(Section):
    log_ratio_max: float = 10.0
    """Upper clamp of the sequence log-ratio log s_i before exp (verl's guard)."""


class BnpoConfig(Section):
    min_value: float = 0.0
    """Lowest possible reward; rewards are mapped to [0, 1] by (r - min_value) / (max_value - min_value)."""
    max_value: float = 1.0
    """Highest possible reward (set 2 for accuracy + format summed without decomposition)."""
    decompose: bool = False
    """Advantage decomposition: a Beta-normalised advantage per reward component, averaged."""
    components: list[str] | None = None
    """Reward names decomposed over; null uses every component present. List only enabled rewards."""
    weight_max: float = Field(1e6, gt=0)
    """Upper clamp of the weight 1/BetaPDF(p) (the authors' code uses 1e6)."""
    max_adv: float | None = Field(None, gt=0)
    """Optional clamp of |A| (not in the authors' code); its hit rate is logged. Null disables it."""


class GtpoConfig(Section):
    entropy_threshold: float = Field(0.7, ge=0)
    """Completions with mean token entropy above this get advantage 0 (entropy filter)."""
    entropy_scale: float = Field(0.1, ge=0)
    """Entropy shaping: A' = A - entropy_scale * H for completions kept by the filter."""
    conflict_weight: float = Field(2.0, ge=0)
    """Weight W of conflict tokens in positive completions (negative completions get 0 there)."""
    faithful: bool = False
    """Reproduce the authors' code exactly: W^2 for tokens conflicting both ways, its miscounted n_conf, losses summed over completions."""
    delta_combine: Literal["max", "product"] = "max"
    """How forward and backward conflicts combine (ignored when faithful): `max` gives W once, `product` gives W^2."""
    conflict_norm: Literal["union", "none"] = "union"
    """Divide a completion's loss by its count of conflict tokens (true union of both directions), or not (ignored when faithful)."""


class VcpoConfig(Section):
    is_threshold: float | None = Field(8.0, gt=0)
    """Truncation of the sequence importance weight exp(sum(old_logp - behaviour_logp)) in the loss; null disables the weight."""
    ess_scaling: bool = True
    """Scale this optimizer step's learning rate by the effective sample size of the step's importance weights."""
    ess_rule: Literal["sqrt", "linear"] = "sqrt"
    """lr multiplier from lr_scale = min(1, rho / base_ess_ratio): its square root (default, AdamW) or itself."""
    base_ess_ratio: float = Field(1.0, gt=0)
    """ESS ratio rho = ESS / B at which the full learning rate is used."""
    ess_use_clipped: bool = False
    """Compute the ESS from the truncated weights instead of the raw ones (both are logged)."""
    opob: bool = False
    """Use the off-policy optimal baseline b* per group instead of GRPO advantages: one backward pass per
    trajectory (advantage 1) and two gradient-sized buffers. Needs objective.kl_coef = 0 and
    entropy_coef = 0, and direct gradient access (learner.backend torch, or deepspeed with zero_stage 0,
    float32 weights, one rank). The recipe enables it (configs/vcpo.yaml); the code's own default is off."""
    opob_norm_by_std: bool = True
    """OPOB: divide (R - b) by the group's population reward std (the recipe); false uses R - b."""
    opob_use_is_weights: bool = True
    """OPOB: weight each trajectory's ||g||^2 by its squared importance weight."""


class ObjectiveConfig(Section):
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
    """Per-token KL estimator: k1 (log-ratio), k2 (squared), k3 (low-variance, GRPO) or k3+ (k3 value, k2 gradient)."""
    loss_agg: LossAggregation = "token-mean"
    """How per-token losses become one number, normalised over the whole optimizer step: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm (verl: sum / L_max) or dr-grpo (sum / (sequences * L_max))."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus (subtracted from the loss); 0 disables it."""
    dr_grpo: DrGrpoConfig = DrGrpoConfig()
    """Dr.GRPO settings."""
    dapo: DapoConfig = DapoConfig()
    """DAPO settings: overlong shaping and dynamic sampling."""
    gspo: GspoConfig = GspoConfig()
    """GSPO settings."""
    bnpo: BnpoConfig = BnpoConfig()
    """BNPO settings: reward range, decomposition, weight guards."""
    gtpo: GtpoConfig = GtpoConfig()
    """GTPO settings: conflict weights and entropy filter."""
    vcpo: VcpoConfig = VcpoConfig()
    """VCPO settings: importance weights, ESS learning-rate scaling, OPOB."""

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = METHOD_DEFAULTS.get(data.get("name", "grpo"), {})
            data = {**defaults, **data}
        return data

    @field_validator("name")
    @classmethod
    def _known_objective(cls, name: str) -> str:
        from rlpost.config.errors import closest
        from rlpost.objectives.registry import objective_names

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
