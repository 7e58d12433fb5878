"""Exact solver of the Knapsack-RL budget problem (ALGORITHMS.md §11.4).

Problem: given a value table `values[i, k]` (item i receives k extra units, k = 0..K) and a
budget R with 0 <= R <= n*K, choose k_i in {0..K} with sum_i k_i == R maximising
sum_i values[i, k_i]. Every R in 0..n*K is feasible because each k_i may be anything in 0..K.

Two exact algorithms, picked automatically:

- `max_plus_dp`: the textbook DP over the budget axis,
  f_i(r) = max_k f_{i-1}(r - k) + values[i, k], vectorised with numpy over r (one pass per k).
  O(n * R * K) element operations; works for any table.
- `concave_greedy`: when every row is concave in k (non-increasing increments), the DP's value
  function is itself concave and the max-plus convolutions reduce to merging the increments:
  the optimum takes the R largest increments over all items (each row's taken increments form
  a prefix because they are sorted within the row). O(nK log nK).

Knapsack RL's rows are concave whenever min_n >= 1 (proof in `knapsack_value_table`), so the
fast path is the one that runs in training; the DP remains for arbitrary tables and as the
reference the tests compare both against.
"""

from __future__ import annotations

import numpy as np

CONCAVITY_TOLERANCE = 1e-12
"""Relative slack of the concavity check: float rounding in 1 - p^N - (1-p)^N can make tiny
increments wiggle by ~1e-17, which changes the optimum by no more than that."""


def solve_budget(values: np.ndarray, budget: int) -> np.ndarray:
    """Exact argmax of sum_i values[i, k_i] subject to sum_i k_i == budget, k_i in 0..K.

    `values` is [n, K+1]; `budget` must lie in 0..n*K. Returns k as an int64 array of length n.
    """
    values = _check_problem(values, budget)
    if rows_are_concave(values):
        return concave_greedy(values, budget)
    return max_plus_dp(values, budget)


def rows_are_concave(values: np.ndarray) -> bool:
    """True when every row's increments values[i, k+1] - values[i, k] are non-increasing in k."""
    if values.shape[1] < 3:
        return True  # zero or one increment per row: trivially concave
    increments = np.diff(values, axis=1)
    scale = max(float(np.max(np.abs(values))), 1.0)
    return bool(np.all(np.diff(increments, axis=1) <= CONCAVITY_TOLERANCE * scale))


def concave_greedy(values: np.ndarray, budget: int) -> np.ndarray:
    """Exact for concave rows: take the `budget` largest increments across all items.

    Ties are broken by (item, k) order through a stable sort, so the result is deterministic.
    """
    values = _check_problem(values, budget)
    n, width = values.shape
    allocation = np.zeros(n, dtype=np.int64)
    if budget == 0 or width == 1:
        return allocation
    increments = np.diff(values, axis=1).ravel()
    taken = np.argsort(-increments, kind="stable")[:budget]
    # Flat index -> item index; within a concave row the taken increments are a prefix, so the
    # count per row is that row's k.
    np.add.at(allocation, taken // (width - 1), 1)
    return allocation


def max_plus_dp(values: np.ndarray, budget: int) -> np.ndarray:
    """Exact DP over the budget axis for any table; O(n * budget * K), vectorised over budget.

    For each item, `best[r]` becomes max_k prev[r - k] + values[i, k]; `choice[i, r]` keeps the k
    that achieved it (the smallest k on ties, as the reference implementation does), and the
    allocation is read back from r = budget.
    """
    values = _check_problem(values, budget)
    n, width = values.shape
    choice = np.zeros((n, budget + 1), dtype=np.int16 if width <= np.iinfo(np.int16).max else np.int32)
    prev = np.full(budget + 1, -np.inf)
    prev[0] = 0.0
    best = np.empty_like(prev)
    candidate = np.empty_like(prev)
    better = np.empty(budget + 1, dtype=bool)
    for i in range(n):
        np.add(prev, values[i, 0], out=best)
        row_choice = choice[i]
        for k in range(1, min(width, budget + 1)):
            span = budget + 1 - k
            np.add(prev[:span], values[i, k], out=candidate[:span])
            np.greater(candidate[:span], best[k:], out=better[:span])
            np.copyto(best[k:], candidate[:span], where=better[:span])
            np.copyto(row_choice[k:], k, where=better[:span])
        prev, best = best, prev
    allocation = np.zeros(n, dtype=np.int64)
    remaining = budget
    for i in range(n - 1, -1, -1):
        allocation[i] = choice[i, remaining]
        remaining -= int(allocation[i])
    assert remaining == 0, "DP backtrack did not consume the budget"
    return allocation


def _check_problem(values: np.ndarray, budget: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"values must be [n, K+1] with K >= 0, got shape {values.shape}")
    capacity = values.shape[0] * (values.shape[1] - 1)
    if not 0 <= budget <= capacity:
        raise ValueError(f"budget {budget} outside the feasible range 0..{capacity}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    return values
