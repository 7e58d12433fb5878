"""Settings of the prompt sampler (which prompts each step, and how many rollouts each).

`sampler.name` picks the sampler; each sampler's own knobs sit in a sub-section named after it
(`sampler.vade.*`, `sampler.knapsack.*`). The batch size B is `train.prompts_per_step`, the
default group size `rollout.n`, the seed `train.seed`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlpost.config.base import Section


class VadeConfig(Section):
    """VADE (ALGORITHMS.md §10): Beta posterior per prompt, Thompson sampling on p(1-p)^2.

    The count update and the two-scale decay are a documented reconstruction (§10.2/§10.5);
    with both lambdas at 1 the posterior is the plain Beta-Bernoulli one.
    """

    pool_factor: float = Field(4.0, ge=1.0)
    """Candidate pool per step: ceil(pool_factor * prompts_per_step) prompts taken from the shuffled epoch order (capped at the dataset size); the best prompts_per_step of them are rolled out."""
    selection: Literal["top", "proportional"] = "top"
    """`top` keeps the prompts with the highest sampled information score; `proportional` draws them without replacement with probability proportional to it."""
    prior_alpha: float = Field(1.0, gt=0)
    """Prior successes a0 of every prompt's Beta(a, b) posterior (1, 1 is uniform); decays pull back toward it."""
    prior_beta: float = Field(1.0, gt=0)
    """Prior failures b0 of every prompt's Beta(a, b) posterior."""
    lambda_fast: float = Field(0.9, ge=0, le=1)
    """Per-visit decay: before a prompt's new counts are added, (a, b) <- prior + lambda_fast * ((a, b) - prior); 1 keeps all evidence."""
    lambda_slow: float = Field(0.999, ge=0, le=1)
    """Global decay applied to every prompt once per update step: (a, b) <- prior + lambda_slow * ((a, b) - prior); 1 disables it."""
    explore_unseen: bool = True
    """Select prompts never rolled out before any seen prompt in the pool, so every prompt gets a first estimate."""


class KnapsackConfig(Section):
    """Knapsack RL (ALGORITHMS.md §11): per-prompt rollout budgets from a knapsack over p(1-p)^2 value.

    The step's B prompts come from the shuffled epoch order; the total budget is B * rollout.n.
    Success is read from each completion's `correct` flag (0/1).
    """

    min_n: int = Field(2, ge=1)
    """Base rollouts of an eligible prompt (history valid, 0 < p < 1); the knapsack adds 0..max_n-min_n more."""
    negative_n: int = Field(2, ge=0)
    """Rollouts of a prompt whose estimated success rate is 0 (before any fallback surplus); 0 skips it."""
    positive_n: int = Field(2, ge=0)
    """Rollouts of a prompt whose estimated success rate is 1; 0 skips it."""
    max_n: int = Field(128, ge=1)
    """Most rollouts the knapsack gives an eligible prompt (leftover spreading may exceed it, as in the reference code)."""
    alpha: float = Field(0.9, gt=0, lt=1)
    """Confidence of the `probability` cost estimate: rollouts needed to see the minority outcome with this probability."""
    cost_estimation: Literal["probability", "expectation"] = "probability"
    """Cost estimate of an eligible prompt for the fallback check: `probability` ln(1-alpha)/ln(max(p,1-p)) or `expectation` 1/(p(1-p)) - 1."""
    allow_fallback: bool = True
    """When the eligible prompts' estimated cost is below the spare budget, give the surplus to hard (p = 0) or unknown prompts."""
    reward_buffer_length: int = Field(16, ge=1)
    """A visit with fewer rollouts than this is extended with the most recent earlier outcomes up to this many (1: previous visit only)."""
    min_buffer_length: int = Field(8, ge=0)
    """Past rollouts a prompt needs before its estimate is trusted (valid); until then it gets rollout.n rollouts."""

    @model_validator(mode="after")
    def _max_at_least_min(self) -> KnapsackConfig:
        if self.max_n < self.min_n:
            raise ValueError(f"max_n ({self.max_n}) must be >= min_n ({self.min_n})")
        return self


class SamplerConfig(Section):
    name: Literal["uniform", "vade", "knapsack"] = "uniform"
    """Prompt sampler: `uniform` shuffles the dataset every epoch and gives each prompt `rollout.n` rollouts; `vade` picks high-information prompts by Thompson sampling; `knapsack` splits the rollout budget unevenly across prompts."""
    vade: VadeConfig = VadeConfig()
    """Settings of the `vade` sampler."""
    knapsack: KnapsackConfig = KnapsackConfig()
    """Settings of the `knapsack` sampler."""
