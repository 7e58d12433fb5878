"""Settings of SFT–RL blending: a controller decides, each step, how SFT on demonstrations and the
RL objective combine (ALGORITHMS.md §7 SASR, §8 HPT, §9 AMFT).

`blending.name` picks the controller (`none` trains with the RL objective alone); each controller's
own knobs sit in a sub-section named after it (`blending.sasr.*`, `blending.hpt.*`,
`blending.amft.*`), and `blending.sft.*` sets the SFT loss all of them share. Demonstrations are the
rows' worked solutions (`data.solution_field`): the prompt, then the tokenised solution and the
end-of-sequence token, trained with a per-token negative log-likelihood (prompt tokens masked).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlpost.config.base import Section
from rlpost.config.objective import LossAggregation


class SftConfig(Section):
    """The SFT loss on demonstrations (every controller uses it)."""

    loss_agg: LossAggregation = "token-mean"
    """How per-token NLLs become one number, normalised over the whole step like the RL loss: token-mean (HPT's and AMFT's cross-entropy) or any `objective.loss_agg` mode."""
    max_demo_tokens: int | None = Field(None, ge=1)
    """Cut demonstrations (solution + end-of-sequence token) to this many tokens; null keeps them whole."""


class SasrConfig(Section):
    """SASR (§7.5): SFT warm-up, then each step is wholly SFT with probability p_t, else wholly RL.

    p_t = G_last / (G_last + gamma * G_warmup), clamped to [p_min, p_max]. G_warmup is the pre-clip
    SFT gradient norm of the last warm-up step; G_last is the pre-clip gradient norm of the latest
    SFT step (updated only on SFT steps). **A reconstruction**: the rule follows a third-party
    re-implementation that says it follows the paper's Algorithm 1; the paper's own code was not
    found (ALGORITHMS.md §7.2, §7.5). Defaults for gamma and the warm-up were not found either.
    """

    warmup_steps: int = Field(5, ge=1)
    """W: SFT-only steps before the hybrid phase (at least 1: G_warmup is measured on the last one)."""
    gamma: float = Field(1.0, gt=0)
    """Weight of the warm-up norm in p_t = G_last / (G_last + gamma * G_warmup); 1 gives p = 0.5 right after warm-up."""
    p_min: float = Field(0.05, ge=0, le=1)
    """Lower clamp of the SFT probability (keeps some SFT even when the SFT gradient vanishes)."""
    p_max: float = Field(0.95, ge=0, le=1)
    """Upper clamp of the SFT probability (keeps some RL when G_warmup is ~0, §7.3)."""
    kl_reference: Literal["post_warmup", "initial"] = "post_warmup"
    """Reference of the RL steps' KL term (when objective.kl_coef > 0): the policy frozen at the end of warm-up (§7.5) or the initial model."""
    seed: int | None = None
    """Seed of the per-step Bernoulli draws; null uses train.seed."""

    @model_validator(mode="after")
    def _ordered(self) -> SasrConfig:
        if self.p_min > self.p_max:
            raise ValueError(f"p_min ({self.p_min}) must be <= p_max ({self.p_max})")
        return self


class HptConfig(Section):
    """HPT (§8.3, `unify_strategy="switch"`): per question, SFT on its demonstration when at most
    `gate` of its rollouts succeed (its rollouts are dropped), RL on its rollouts otherwise; one
    optimizer step on L = L_RL + sft_coef * L_SFT.

    The RL part uses `objective` on the kept groups only (advantages from their own group
    statistics). The authors' setting is Dr.GRPO advantages (no std), no clipping and Σ/T_max
    aggregation: `objective: {name: dr_grpo, clip: false, loss_agg: seq-mean-token-sum-norm}`
    (configs/hpt.yaml).
    """

    gate: int = Field(0, ge=0)
    """switch_gate: a question goes to SFT when its count of successful rollouts is <= gate (0: only never-solved questions)."""
    success: Literal["correct", "reward"] = "correct"
    """Success test of a rollout: its `correct` flag (the accuracy reward), or its total reward equal to `success_value` (the authors' code)."""
    success_value: float = 1.0
    """Reward that counts as a success when `success: reward` (compared exactly, as in the code)."""
    sft_coef: float = Field(1.0, ge=0)
    """sft_loss_coef: weight of the SFT loss (the script's comment suggests 0.3 for a 1.5B model)."""


class AmftConfig(Section):
    """AMFT (§9): SFT warm-up, then L = (1 - mu) L_RL + mu L_SFT with a learned mu.

    Each hybrid step, before the update: mu <- clip(mu - meta_lr * g_meta + entropy_lr * (H_target - H_t)),
    with H_t the policy's token entropy on the step's rollouts and H_target its entropy on
    demonstrations right after warm-up. Every `meta_update_freq` hybrid steps,
    g_meta = -eta * <grad L_val, grad L_SFT - grad L_RL> (one-step look-ahead, first order; L_val is
    the NLL of held-out demonstrations), otherwise 0. The published code *adds* meta_lr * g_meta,
    which ascends the validation loss; rlpost subtracts it, descending L_val (§9.1).
    """

    warmup_steps: int = Field(5, ge=0)
    """SFT-only steps before the hybrid phase (the authors' config: 50)."""
    initial_mu: float = Field(0.8, ge=0, le=1)
    """mu at the start of the hybrid phase (the configs use 0.8; the controller's default and the README say 0.5)."""
    mu_min: float = Field(0.05, ge=0, le=1)
    """Lower clamp of mu."""
    mu_max: float = Field(0.95, ge=0, le=1)
    """Upper clamp of mu."""
    meta_lr: float = Field(1e-4, ge=0)
    """eta_meta: step size of the meta-gradient term."""
    entropy_lr: float = Field(5e-4, ge=0)
    """eta_ent: step size of the entropy term (lower entropy than the target -> more SFT)."""
    meta_update_freq: int = Field(20, ge=1)
    """Compute g_meta on every this many hybrid steps (the first hybrid step included); it costs one more backward pass and two gradient-sized buffers."""
    policy_lr: float | None = Field(None, gt=0)
    """eta in g_meta; null uses the optimizer's learning rate at that step (the authors use their policy_lr, 1e-6)."""
    validation_size: int = Field(16, ge=1)
    """Training rows held out (by a seeded draw) whose demonstrations form the validation batch of L_val; they are never trained on."""

    @model_validator(mode="after")
    def _ordered(self) -> AmftConfig:
        if self.mu_min > self.mu_max:
            raise ValueError(f"mu_min ({self.mu_min}) must be <= mu_max ({self.mu_max})")
        return self


class BlendingConfig(Section):
    name: str = "none"
    """Controller: `none` (the RL objective alone), `sasr`, `hpt` or `amft` (see `rlpost.blending`)."""
    sft: SftConfig = SftConfig()
    """The SFT loss on demonstrations."""
    sasr: SasrConfig = SasrConfig()
    """SASR settings: warm-up, switching rule, clamps."""
    hpt: HptConfig = HptConfig()
    """HPT settings: gate, success test, SFT coefficient."""
    amft: AmftConfig = AmftConfig()
    """AMFT settings: mu, its clamps and step sizes, warm-up, meta-gradient, validation rows."""

    @field_validator("name")
    @classmethod
    def _known_controller(cls, name: str) -> str:
        from rlpost.blending.base import controller_names
        from rlpost.config.errors import closest

        names = ["none", *controller_names()]
        if name not in names:
            raise ValueError(f"unknown blending controller {name!r}{closest(name, names)}; choose one of {', '.join(names)}")
        return name
