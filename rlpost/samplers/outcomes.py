"""What samplers read from scored groups: binary outcomes, the information score, step metrics."""

from __future__ import annotations

import numpy as np

from rlpost.types import Group


def binary_outcomes(group: Group) -> list[int]:
    """Success (1) or failure (0) of each scored completion of the group.

    The per-prompt success statistics of VADE and Knapsack are Bernoulli, so they read the
    accuracy flag `correct` rather than the reward (which may be ±1, shaped, or a weighted sum:
    Knapsack's reference code maps -1 to 0 for the same reason). A group whose reward manager
    filled no `correct` falls back to reward > 0.
    """
    if group.correct:
        return [1 if c else 0 for c in group.correct]
    return [1 if r > 0 else 0 for r in group.rewards]


def information_score(p: np.ndarray | float) -> np.ndarray | float:
    """I(p) = p (1 - p)^2 (ALGORITHMS.md §10.5 and §11.3): peaks at p = 1/3 with I = 4/27."""
    return p * (1.0 - p) ** 2


BUDGET_BIN_EDGES = (1, 2, 4, 8, 16, 32, 64, 128)
"""Lower edges of the budget histogram's bins: powers of two, the last bin open-ended (Knapsack's
max_n is 128 by default, and leftover spreading may exceed it)."""


def _bin_label(index: int) -> str:
    low = BUDGET_BIN_EDGES[index]
    if index == len(BUDGET_BIN_EDGES) - 1:
        return f"{low}+"
    high = BUDGET_BIN_EDGES[index + 1] - 1
    return str(low) if high == low else f"{low}-{high}"


BUDGET_BIN_LABELS = tuple(_bin_label(i) for i in range(len(BUDGET_BIN_EDGES)))
"""`1`, `2-3`, `4-7`, ..., `64-127`, `128+`."""


def budget_histogram(sizes: np.ndarray) -> dict[str, float]:
    """Groups per completions-per-group bin, as `sampler/budget_hist/<label>`.

    Every bin is reported, empty ones as 0, so that every step logs the same keys.
    """
    bins = np.searchsorted(BUDGET_BIN_EDGES, sizes, side="right") - 1
    counts = np.bincount(bins, minlength=len(BUDGET_BIN_EDGES))
    return {f"sampler/budget_hist/{label}": float(count) for label, count in zip(BUDGET_BIN_LABELS, counts, strict=True)}


def group_metrics(groups: list[Group]) -> dict[str, float]:
    """Step metrics every sampler reports, computed on the groups' rewards and sizes.

    - `sampler/zero_variance_frac`: groups whose rewards are all equal (zero group-normalised
      advantage, hence no policy gradient); a group of one completion counts as zero variance.
    - `sampler/zero_variance_rollout_frac`: completions in such groups, the rollout budget spent
      without gradient (differs from the group fraction when groups differ in size).
    - `sampler/effective_prompts`: groups with reward variance (the ones that teach anything).
    - `sampler/budget_min|max|mean`: completions per group (unequal under Knapsack), and
      `sampler/budget_hist/*` their histogram (`budget_histogram`).
    - `sampler/solve_all_frac`, `sampler/solve_none_frac`: groups all correct / all wrong.
    """
    scored = [g for g in groups if g.rewards]
    if not scored:
        return {"sampler/groups": float(len(groups))}
    has_variance = np.array([max(g.rewards) != min(g.rewards) for g in scored])
    sizes = np.array([len(g.rewards) for g in scored], dtype=np.float64)
    success_rates = np.array([np.mean(binary_outcomes(g)) for g in scored])
    return {
        "sampler/groups": float(len(scored)),
        "sampler/zero_variance_frac": float(np.mean(~has_variance)),
        "sampler/zero_variance_rollout_frac": float(sizes[~has_variance].sum() / sizes.sum()),
        "sampler/effective_prompts": float(has_variance.sum()),
        "sampler/rollouts": float(sizes.sum()),
        "sampler/budget_min": float(sizes.min()),
        "sampler/budget_max": float(sizes.max()),
        "sampler/budget_mean": float(sizes.mean()),
        "sampler/solve_all_frac": float(np.mean(success_rates == 1.0)),
        "sampler/solve_none_frac": float(np.mean(success_rates == 0.0)),
        **budget_histogram(sizes),
    }
