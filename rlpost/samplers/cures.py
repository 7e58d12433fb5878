"""CurES: prompt sampling and rollout budgets from the prompt's estimated gradient contribution
(Zeng et al. 2025, arXiv 2510.01037; ALGORITHMS.md §12.2; code ZexuSun/CurES read via the file index).

Per prompt i the sampler keeps its success count s_i and rollout count n_i and estimates the accuracy
by the mean of the Beta(s_i + a0, n_i - s_i + b0) posterior (a0 = b0 = 1 in the paper):

    p_i = (s_i + a0) / (n_i + a0 + b0)

so a prompt never rolled out sits at 1/2, and p_i is never exactly 0 or 1. Each step:

1. pool: the next ceil(pool_factor * B) prompts of the shuffled epoch order (every prompt keeps
   coming up for consideration);
2. selection: B of them drawn without replacement with probability ∝ exp(p_i (1 - p_i) / tau)
   (the paper's sampling distribution, tau its `entropy_param`);
3. budgets: the step's B * rollout.n rollouts split ∝ sigma_i (the paper's allocation rule,
   "eq. 127"), each between `min_n` and `max_n`, rounded by largest remainders so they sum exactly
   to the budget.

What is reconstructed (knobs in `sampler.cures`):
- sigma_i. The paper's sigma_i = sqrt(a b^2 E[g_c^2] + a^2 b E[g_w^2] - a^2 b^2 (E g_c - E g_w)^2),
  with a = p_i, b = 1 - p_i and g the norms of grad log p(y|x) of correct and wrong rollouts,
  measured by the authors on the embedding parameters in an initialisation pass. rlpost has no
  per-rollout gradient norms in the sampler, so it takes the norms equal (g_c = g_w = g), which
  leaves sigma_i = g sqrt(p_i (1 - p_i)): the budget goes to prompts of intermediate accuracy.
- The initialisation pass (4 rollouts of every prompt before training) is not run: unseen prompts
  start at the prior (p = 1/2, the largest sigma), so their first visit gets the largest budgets.
- The reference samples the whole dataset per epoch; rlpost draws from a pool in epoch order, as
  VADE does, so the counter-keyed RNG and the checkpointed data position keep working. The
  reference's N_i can round to 0 and miss the budget; here min_n <= N_i <= max_n and sum N_i = B * n.
- `decay` (1 = none, the paper) discounts old counts on each visit, to follow the moving policy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from rlpost.config.base import Section
from rlpost.samplers.base import PromptSampler, register_sampler
from rlpost.samplers.outcomes import binary_outcomes
from rlpost.types import Group, Prompt

_MIN_WEIGHT = 1e-300
"""Floor of the selection weights: a draw without replacement needs at least B non-zero weights."""


class CuresConfig(Section):
    """CurES (arXiv 2510.01037): Beta-posterior accuracy p per prompt; prompts drawn ∝ exp(p(1-p)/tau)
    from a pool in epoch order; the rollout budget B * rollout.n split ∝ sqrt(p(1-p)) (the paper's
    sigma with equal gradient norms of correct and wrong rollouts, a reconstruction)."""

    pool_factor: float = Field(2.0, ge=1.0)
    """Candidate pool per step: ceil(pool_factor * prompts_per_step) prompts of the shuffled epoch order (capped at the dataset size); prompts_per_step of them are drawn."""
    temperature: float = Field(0.1, gt=0)
    """tau of the selection weights exp(p(1-p)/tau) (the reference sampler's entropy_param default); larger is closer to uniform."""
    prior_alpha: float = Field(1.0, gt=0)
    """a0: prior successes of the Beta posterior (the paper: 1)."""
    prior_beta: float = Field(1.0, gt=0)
    """b0: prior failures of the Beta posterior (the paper: 1)."""
    min_n: int = Field(2, ge=1)
    """Fewest rollouts of a selected prompt (2: a group-relative advantage needs two)."""
    max_n: int = Field(32, ge=1)
    """Most rollouts of a selected prompt."""
    decay: float = Field(1.0, ge=0, le=1)
    """On each visit the prompt's past counts are multiplied by this before the new ones are added (1: keep all, the paper)."""

    @model_validator(mode="after")
    def _ordered(self) -> CuresConfig:
        if self.min_n > self.max_n:
            raise ValueError(f"min_n ({self.min_n}) must be <= max_n ({self.max_n})")
        return self


def posterior_accuracy(successes: np.ndarray, trials: np.ndarray, prior_a: float = 1.0, prior_b: float = 1.0) -> np.ndarray:
    """p = (s + a0) / (n + a0 + b0): the mean of Beta(s + a0, n - s + b0)."""
    return (successes + prior_a) / (trials + prior_a + prior_b)


def gradient_scale(p: np.ndarray) -> np.ndarray:
    """sigma = sqrt(p (1 - p)): the paper's sigma with equal gradient norms of correct and wrong rollouts."""
    return np.sqrt(p * (1.0 - p))


def selection_weights(p: np.ndarray, temperature: float) -> np.ndarray:
    """Selection probabilities ∝ exp(p (1 - p) / tau), normalised (computed stably)."""
    logits = p * (1.0 - p) / temperature
    weights = np.maximum(np.exp(logits - logits.max()), _MIN_WEIGHT)
    return weights / weights.sum()


def proportional_budgets(scale: np.ndarray, total: int, low: int, high: int) -> np.ndarray:
    """Integers N_i in [low, high] summing to `total`, ∝ `scale` where the bounds allow.

    Water-filling: x_i = clamp(c * scale_i, low, high) with c such that sum x = total, then floor
    and give the remaining units to the largest fractional parts (ties to the lower index).
    """
    k = len(scale)
    if not k * low <= total <= k * high:
        raise ValueError(f"cannot split {total} rollouts over {k} prompts with {low} <= N <= {high}")
    x = np.full(k, float(low))
    free = np.ones(k, dtype=bool)
    for _ in range(k + 1):
        fixed = float(x[~free].sum())
        weight = float(scale[free].sum())
        if not free.any():
            break
        if weight <= 0:
            x[free] = (total - fixed) / free.sum()
        else:
            x[free] = (total - fixed) * scale[free] / weight
        over, under = free & (x > high), free & (x < low)
        if not over.any() and not under.any():
            break
        # Fix the side that is violated most (sum of excess), then recompute the rest.
        if float((x[over] - high).sum()) >= float((low - x[under]).sum()):
            x[over], free[over] = high, False
        else:
            x[under], free[under] = low, False
    budgets = np.floor(x + 1e-9).astype(np.int64)
    remainder = total - int(budgets.sum())
    order = np.argsort(-(x - budgets), kind="stable")
    for i in order:
        if remainder <= 0:
            break
        if budgets[i] < high:
            budgets[i] += 1
            remainder -= 1
    return budgets


@register_sampler("cures", config=CuresConfig)
class CuresSampler(PromptSampler):
    """Prompts drawn ∝ exp(p(1-p)/tau) from an epoch-order pool, budgets ∝ sqrt(p(1-p))."""

    def __init__(
        self,
        prompts: list[Prompt],
        *,
        prompts_per_step: int,
        default_n: int,
        seed: int,
        config: CuresConfig | None = None,
    ) -> None:
        super().__init__(prompts, prompts_per_step=prompts_per_step, default_n=default_n, seed=seed)
        self.config = config or CuresConfig()
        if not self.config.min_n <= default_n <= self.config.max_n:
            raise ValueError(
                f"rollout.n ({default_n}) must lie within sampler.cures.min_n ({self.config.min_n}) and "
                f"max_n ({self.config.max_n}): the step's budget is prompts_per_step * rollout.n"
            )
        self.pool_size = min(len(prompts), max(prompts_per_step, math.ceil(self.config.pool_factor * prompts_per_step)))
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.successes = np.zeros(len(self.prompts))
        self.trials = np.zeros(len(self.prompts))

    def accuracy(self, indices: np.ndarray | None = None) -> np.ndarray:
        cfg = self.config
        s = self.successes if indices is None else self.successes[indices]
        n = self.trials if indices is None else self.trials[indices]
        return posterior_accuracy(s, n, cfg.prior_alpha, cfg.prior_beta)

    def next_batch(self, step: int) -> list[tuple[Prompt, int]]:
        rng = self._next_selection_rng()
        pool = self.order.take(self.pool_size)
        p = self.accuracy(pool)
        probabilities = selection_weights(p, self.config.temperature)
        chosen = np.sort(rng.choice(len(pool), size=self.prompts_per_step, replace=False, p=probabilities))
        selected = pool[chosen]
        sigma = gradient_scale(p[chosen])
        budgets = proportional_budgets(
            sigma, self.prompts_per_step * self.default_n, self.config.min_n, self.config.max_n
        )
        self.pending_metrics = {
            "sampler/cures/pool_size": float(len(pool)),
            "sampler/cures/selected_p_mean": float(p[chosen].mean()),
            "sampler/cures/pool_p_mean": float(p.mean()),
            "sampler/cures/selected_sigma_mean": float(sigma.mean()),
            "sampler/cures/unseen_selected": float(np.sum(self.trials[selected] == 0)),
            "sampler/cures/max_budget": float(budgets.max()),
            "sampler/cures/min_budget": float(budgets.min()),
        }
        return [(self.prompts[i], int(k)) for i, k in zip(selected, budgets, strict=True)]

    def _learn(self, groups: list[Group]) -> dict[str, float]:
        decay = self.config.decay
        for index, group in zip(self._indices_of(groups), groups, strict=True):
            outcomes = binary_outcomes(group)
            if not outcomes:
                continue
            self.successes[index] = decay * self.successes[index] + sum(outcomes)
            self.trials[index] = decay * self.trials[index] + len(outcomes)
        seen = self.trials > 0
        return {
            "sampler/cures/seen_frac": float(np.mean(seen)),
            "sampler/cures/seen_p_mean": float(self.accuracy()[seen].mean()) if seen.any() else 0.5,
        }

    def estimate(self, prompt_id: str) -> tuple[float, float, float]:
        """(successes, trials, posterior accuracy p) of a prompt."""
        i = self.index_of[prompt_id]
        return float(self.successes[i]), float(self.trials[i]), float(self.accuracy(np.array([i]))[0])

    def _extra_state(self) -> dict[str, Any]:
        seen = np.flatnonzero(self.trials > 0)
        return {"counts": {self.prompts[i].prompt_id: [float(self.successes[i]), float(self.trials[i])] for i in seen}}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._reset_counts()
        for prompt_id, (successes, trials) in state["counts"].items():
            index = self.index_of[prompt_id]
            self.successes[index], self.trials[index] = float(successes), float(trials)
