"""The exact budget solver: brute force on small instances, both algorithms, scale timing."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpost.samplers.allocation import knapsack_value_table
from rlpost.samplers.budget_solver import concave_greedy, max_plus_dp, rows_are_concave, solve_budget


def _brute_force(values: np.ndarray, budget: int) -> float:
    n, width = values.shape
    best = -np.inf
    for ks in itertools.product(range(width), repeat=n):
        if sum(ks) == budget:
            best = max(best, float(values[np.arange(n), ks].sum()))
    return best


def _check(values: np.ndarray, budget: int, allocation: np.ndarray) -> float:
    assert allocation.sum() == budget
    assert np.all((allocation >= 0) & (allocation < values.shape[1]))
    return float(values[np.arange(len(allocation)), allocation].sum())


@st.composite
def arbitrary_problems(draw):
    n = draw(st.integers(1, 4))
    width = draw(st.integers(1, 5))
    cells = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
    values = np.array(draw(st.lists(cells, min_size=n * width, max_size=n * width))).reshape(n, width)
    budget = draw(st.integers(0, n * (width - 1)))
    return values, budget


@st.composite
def knapsack_problems(draw):
    p = np.array(draw(st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4)))
    min_n = draw(st.integers(1, 3))
    max_n = min_n + draw(st.integers(0, 5))
    values = knapsack_value_table(p, min_n, max_n)
    budget = draw(st.integers(0, len(p) * (max_n - min_n)))
    return values, budget


@settings(max_examples=300, deadline=None)
@given(arbitrary_problems())
def test_dp_matches_brute_force_on_arbitrary_tables(problem):
    values, budget = problem
    optimum = _brute_force(values, budget)
    assert _check(values, budget, max_plus_dp(values, budget)) == pytest.approx(optimum, abs=1e-12)
    assert _check(values, budget, solve_budget(values, budget)) == pytest.approx(optimum, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(knapsack_problems())
def test_knapsack_tables_are_concave_and_greedy_is_exact(problem):
    values, budget = problem
    assert rows_are_concave(values)
    optimum = _brute_force(values, budget)
    assert _check(values, budget, concave_greedy(values, budget)) == pytest.approx(optimum, abs=1e-12)
    assert _check(values, budget, max_plus_dp(values, budget)) == pytest.approx(optimum, abs=1e-12)


def test_concavity_needs_min_n_at_least_one():
    # With min_n = 0, V(1) = I(p)(1 - p - (1-p)) = 0 < V(2) - V(1): the proof's boundary case.
    assert not rows_are_concave(knapsack_value_table(np.array([0.5]), 0, 4))
    assert rows_are_concave(knapsack_value_table(np.array([0.5]), 1, 4))


def test_non_concave_tables_take_the_dp():
    values = np.array([[0.0, 0.0, 1.0], [0.0, 0.6, 0.7]])  # row 0 convex: all or nothing
    assert not rows_are_concave(values)
    assert solve_budget(values, 2).tolist() == [2, 0]  # value 1.0
    # Why the dispatch matters: the largest increments (1.0 of row 0, 0.6 of row 1) are not a
    # prefix of row 0, and taking one of each is worth only 0.6.
    assert _check(values, 2, concave_greedy(values, 2)) < 1.0


def test_greedy_and_dp_agree_at_medium_scale():
    rng = np.random.default_rng(0)
    values = knapsack_value_table(rng.uniform(0.02, 0.98, 40), 2, 128)
    budget = 2500
    assert _check(values, budget, concave_greedy(values, budget)) == pytest.approx(
        _check(values, budget, max_plus_dp(values, budget)), abs=1e-12
    )


def test_out_of_range_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        solve_budget(np.zeros((2, 3)), 5)


def test_scale_2000_prompts_budget_16000_max_n_128():
    """Benchmark-style: prints the time of the production path (run with -s to see it)."""
    rng = np.random.default_rng(1)
    values = knapsack_value_table(rng.uniform(0.01, 0.99, 2000), 2, 128)
    budget = 16000
    start = time.perf_counter()
    allocation = solve_budget(values, budget)
    elapsed = time.perf_counter() - start
    print(f"\nknapsack solve: 2000 prompts, budget {budget}, max_n 128: {elapsed:.3f} s")
    assert allocation.sum() == budget
    # Optimality certificate for concave rows: no unused increment beats a used one.
    increments = np.diff(values, axis=1)
    used = np.arange(values.shape[1] - 1)[None, :] < allocation[:, None]
    assert increments[used].min() >= increments[~used].max()
