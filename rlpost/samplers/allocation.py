"""Knapsack RL's rollout-budget allocation (ALGORITHMS.md §11.3-§11.4), as pure functions.

Follows the reference `sampling_budget_by_knapsack` (liziniu/KnapsackRL) step by step; where it
crashes or is silent, the choice made here is stated at the spot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from rlpost.config.base import Section
from rlpost.samplers.budget_solver import solve_budget
from rlpost.samplers.outcomes import information_score


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


def prob_nonzero_gradient(n: np.ndarray | int, p: np.ndarray | float) -> np.ndarray | float:
    """1 - p^N - (1-p)^N: the chance that N rollouts contain both a success and a failure."""
    return 1.0 - p**n - (1.0 - p) ** n


def knapsack_value(n: np.ndarray | int, p: np.ndarray | float) -> np.ndarray | float:
    """Value(N, p) = ProbNonZeroGrad(N, p) * p (1-p)^2 (§11.3)."""
    return prob_nonzero_gradient(n, p) * information_score(p)


def rollout_cost(p: np.ndarray, alpha: float, method: str) -> np.ndarray:
    """Estimated rollouts an eligible prompt (0 < p < 1) needs, for the fallback check only.

    `probability`: ln(1-alpha) / ln(max(p, 1-p)), the rollouts that see the minority outcome with
    probability alpha; `expectation`: 1/(p(1-p)) - 1.
    """
    if method == "probability":
        return np.log(1.0 - alpha) / np.log(np.maximum(p, 1.0 - p))
    if method == "expectation":
        return 1.0 / (p * (1.0 - p)) - 1.0
    raise ValueError(f"unknown cost estimation {method!r}")


def knapsack_value_table(p: np.ndarray, min_n: int, max_n: int) -> np.ndarray:
    """[len(p), max_n - min_n + 1] table V[i, k] of k extra rollouts on top of min_n.

    V[i, 0] = 0 and V[i, k] = Value(k + min_n, p_i) for k >= 1, as in the reference DP (which
    thereby favours giving each eligible prompt at least one extra rollout).

    Every row is concave when min_n >= 1, which lets `solve_budget` take its exact fast path:
    for k >= 1 the increment is I(p) * p q (p^(k+m-1) + q^(k+m-1)) (q = 1-p, m = min_n), which
    shrinks with k; and the first increment V(1) - V(0) = I (1 - p^(m+1) - q^(m+1)) is at least
    the second, I (p^(m+1) q + q^(m+1) p), because p^(m+1)(1+q) + q^(m+1)(1+p)
    <= p^2(1+q) + q^2(1+p) = 1 - pq <= 1 for m >= 1.
    """
    p = np.asarray(p, dtype=np.float64)[:, None]
    rollouts = np.arange(max_n - min_n + 1)[None, :] + min_n
    table = knapsack_value(rollouts, p)
    table[:, 0] = 0.0
    return table


@dataclass
class Allocation:
    """Rollouts per prompt of one step and what the allocator decided on the way."""

    budgets: np.ndarray
    """int64 [B]: rollouts of each prompt (0 means the prompt is skipped this step)."""
    eligible: np.ndarray
    """bool [B]: valid history and 0 < p < 1, i.e. the prompts the knapsack optimised."""
    fallback: bool
    """The surplus beyond the eligible prompts' estimated cost went to hard/unknown prompts."""
    fallback_effective_ratio: float
    """Estimated cost / spare budget when the fallback fired, else 1."""


def allocate_budgets(valid: np.ndarray, p_hat: np.ndarray, *, n: int, config: KnapsackConfig) -> Allocation:
    """Rollout budgets of a batch whose total is exactly len(valid) * n (§11.4).

    `valid[i]`: the prompt has enough history (count >= min_buffer_length); `p_hat[i]`: its
    estimated success rate (ignored when not valid).
    """
    valid = np.asarray(valid, dtype=bool)
    p = np.asarray(p_hat, dtype=np.float64)
    total = len(valid) * n
    eligible = valid & (p > 0.0) & (p < 1.0)
    hard = valid & (p == 0.0)
    easy = valid & (p == 1.0)
    base = np.select([eligible, hard, easy], [config.min_n, config.negative_n, config.positive_n], default=n)
    budgets = base.astype(np.int64)
    spare = total - int(budgets.sum())
    if spare < 0:
        raise ValueError(
            f"base allocation ({int(budgets.sum())}) exceeds the budget {total}: "
            f"sampler.knapsack min_n/negative_n/positive_n must not exceed rollout.n ({n})"
        )
    # The reference keeps success_rate = 0 for prompts without a valid history, so its "p = 0"
    # recipients of surplus budget include them: unknown prompts are treated as hard ones.
    hard_or_unknown = hard | ~valid
    fallback, ratio = False, 1.0

    if not eligible.any():
        if spare > 0 and hard_or_unknown.any():
            _spread(budgets, hard_or_unknown, spare)
        elif spare > 0:
            budgets[:] = n  # every prompt solved: nothing to prefer, back to uniform
    else:
        fallback, ratio = _knapsack(budgets, eligible, p[eligible], hard_or_unknown, spare, config)
    assert int(budgets.sum()) == total, f"allocated {int(budgets.sum())} rollouts, budget is {total}"
    return Allocation(budgets, eligible, fallback, ratio)


def _knapsack(
    budgets: np.ndarray,
    eligible: np.ndarray,
    p_eligible: np.ndarray,
    hard_or_unknown: np.ndarray,
    spare: int,
    config: KnapsackConfig,
) -> tuple[bool, float]:
    """Fallback check, then the DP over the eligible prompts; adds to `budgets` in place.

    Returns (fallback fired, fallback effective ratio).
    """
    fallback, ratio = False, 1.0
    if config.allow_fallback:
        costs = np.minimum(config.max_n, rollout_cost(p_eligible, config.alpha, config.cost_estimation))
        estimate = int(costs.astype(np.int64).sum())  # int() per prompt, as the reference
        # The reference divides by zero when every prompt is eligible; then there is no one
        # else to give the surplus to, so the knapsack keeps it.
        recipients = hard_or_unknown if hard_or_unknown.any() else ~eligible
        if estimate < spare and recipients.any():
            fallback, ratio = True, estimate / spare
            _spread(budgets, recipients, spare - estimate)
            spare = estimate

    usable = min(spare, len(p_eligible) * (config.max_n - config.min_n))  # largest feasible DP budget
    if usable > 0:
        table = knapsack_value_table(p_eligible, config.min_n, config.max_n)
        budgets[eligible] += solve_budget(table, usable)
    if spare > usable:
        _spread(budgets, eligible, spare - usable)  # may exceed max_n, as in the reference
    return fallback, ratio


def _spread(budgets: np.ndarray, mask: np.ndarray, amount: int) -> None:
    """Add `amount` evenly over the masked entries; the remainder goes to the first ones."""
    indices = np.flatnonzero(mask)
    share, remainder = divmod(amount, len(indices))
    budgets[indices] += share
    budgets[indices[:remainder]] += 1
