"""Knapsack RL: the §11.8 example, allocation branches (§11.4, §11.6), history (§11.2), sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpost.samplers import KnapsackConfig, KnapsackSampler, allocate_budgets
from rlpost.samplers.allocation import knapsack_value, knapsack_value_table, rollout_cost
from rlpost.samplers.knapsack import visit_estimate
from tests.samplers.sampler_helpers import make_group, make_prompts, run_steps

SMALL = KnapsackConfig(min_n=2, negative_n=2, positive_n=2, max_n=8, alpha=0.9)


def test_worked_example_of_the_spec():
    # §11.8: p = [0.5, 0.9, 0.0], n = 4 (total 12), max_n = 8.
    allocation = allocate_budgets([True, True, True], [0.5, 0.9, 0.0], n=4, config=SMALL)
    assert allocation.budgets.tolist() == [7, 3, 2]
    assert allocation.eligible.tolist() == [True, True, False]
    assert not allocation.fallback  # est = 3 + 8 = 11 >= R = 6
    assert rollout_cost(np.array([0.5, 0.9]), 0.9, "probability") == pytest.approx([3.3219, 21.854], abs=1e-3)


def test_worked_example_dp_table():
    table = knapsack_value_table(np.array([0.5, 0.9]), 2, 8)
    expected = {(6, 0): 0.124023, (5, 1): 0.125477, (4, 2): 0.124188, (3, 3): 0.120873}
    for (k0, k1), value in expected.items():
        assert table[0, k0] + table[1, k1] == pytest.approx(value, abs=1e-6)
    sums = {(k, 6 - k): table[0, k] + table[1, 6 - k] for k in range(7)}
    assert max(sums, key=sums.get) == (5, 1)
    assert table[1, 1] == pytest.approx(knapsack_value(3, 0.9))


def test_early_training_is_uniform():
    # §11.6: no prompt has 8 past rollouts yet, so every prompt gets n.
    allocation = allocate_budgets([False] * 5, [0.0] * 5, n=8, config=KnapsackConfig())
    assert allocation.budgets.tolist() == [8] * 5


def test_all_solved_falls_back_to_uniform():
    allocation = allocate_budgets([True] * 3, [1.0] * 3, n=8, config=KnapsackConfig())
    assert allocation.budgets.tolist() == [8, 8, 8]


def test_without_eligible_prompts_the_hard_ones_get_the_spare_budget():
    # Base [2, 2, 2, 2] of 32; the 24 spare go evenly to the three p = 0 prompts.
    allocation = allocate_budgets([True] * 4, [0.0, 0.0, 1.0, 0.0], n=8, config=KnapsackConfig())
    assert allocation.budgets.tolist() == [10, 10, 2, 10]


def test_spare_budget_remainder_goes_round_robin():
    # Base [2, 2, 2] of 15 (n = 5); 9 spare over the two p = 0 prompts: 5 and 4.
    allocation = allocate_budgets([True] * 3, [0.0, 1.0, 0.0], n=5, config=KnapsackConfig())
    assert allocation.budgets.tolist() == [7, 2, 6]


def test_unknown_prompts_count_as_hard_for_surplus():
    # Reference behaviour: prompts without valid history sit at success rate 0 in the fallback.
    allocation = allocate_budgets([False, True], [0.7, 1.0], n=8, config=KnapsackConfig())
    assert allocation.budgets.tolist() == [14, 2]


def test_fallback_gives_surplus_to_hard_prompts():
    # Two eligible prompts at p = 0.5 are estimated to need int(3.32) = 3 rollouts each; the
    # other 24 - 6 = 18 spare rollouts go to the two p = 0 prompts, the DP splits 6 evenly.
    allocation = allocate_budgets([True] * 4, [0.5, 0.0, 0.0, 0.5], n=8, config=KnapsackConfig())
    assert allocation.fallback
    assert allocation.fallback_effective_ratio == pytest.approx(6 / 24)
    assert allocation.budgets.tolist() == [5, 11, 11, 5]


def test_fallback_can_be_disabled():
    allocation = allocate_budgets([True] * 4, [0.5, 0.0, 0.0, 0.5], n=8, config=KnapsackConfig(allow_fallback=False))
    assert not allocation.fallback
    assert allocation.budgets.tolist() == [14, 2, 2, 14]


def test_leftover_beyond_max_n_is_spread_over_eligible_prompts():
    # One eligible prompt can take at most max_n - min_n = 2 extra; the other 10 spare rollouts
    # are spread over the eligible prompts anyway (exceeding max_n, as the reference does).
    cfg = KnapsackConfig(min_n=2, max_n=4, allow_fallback=False)
    allocation = allocate_budgets([True, True], [0.5, 1.0], n=8, config=cfg)
    assert allocation.budgets.tolist() == [14, 2]


def test_surplus_goes_to_solved_prompts_when_no_hard_or_unknown_exist():
    # est = 3 < 12 spare, no p = 0 or unknown prompt: the p = 1 prompt takes the 9 surplus;
    # the eligible one gets its 2 extra, and the 1 left over.
    cfg = KnapsackConfig(min_n=2, max_n=4)
    allocation = allocate_budgets([True, True], [0.5, 1.0], n=8, config=cfg)
    assert allocation.budgets.tolist() == [5, 11]


def test_all_eligible_with_small_cost_keeps_the_budget():
    # The reference would divide by zero here (no prompt outside the eligible set).
    allocation = allocate_budgets([True] * 3, [0.5, 0.5, 0.5], n=8, config=KnapsackConfig())
    assert not allocation.fallback
    assert allocation.budgets.tolist() == [8, 8, 8]


def test_base_allocation_above_n_is_an_error():
    with pytest.raises(ValueError, match="exceeds the budget"):
        allocate_budgets([True], [0.0], n=2, config=KnapsackConfig(negative_n=4))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 1.0, 0.1, 0.25, 0.5, 0.75, 0.9])), min_size=1, max_size=12),
    st.integers(2, 12),
    st.integers(2, 16),
    st.booleans(),
)
def test_budget_always_sums_to_the_total(states, n, max_n, allow_fallback):
    valid = [v for v, _ in states]
    p_hat = [p for _, p in states]
    cfg = KnapsackConfig(min_n=2, max_n=max_n, allow_fallback=allow_fallback)
    allocation = allocate_budgets(valid, p_hat, n=n, config=cfg)
    assert allocation.budgets.sum() == len(states) * n
    assert np.all(allocation.budgets >= 0)
    assert np.all(allocation.budgets[allocation.eligible] >= 2)


def test_visit_estimate_uses_previous_visit_extended_to_buffer():
    p, buffer = visit_estimate([], [1, 0, 1, 0, 0, 1, 0, 1], 16)
    assert (p, len(buffer)) == (0.5, 8)  # short visit, short history: all of it
    p, buffer = visit_estimate(buffer, [1, 1, 1, 1], 16)
    assert (p, len(buffer)) == (8 / 12, 12)  # 4 new + 8 older
    p, buffer = visit_estimate(buffer, [1] * 5 + [0] * 15, 16)
    assert (p, len(buffer)) == (0.25, 16)  # a visit of >= 16 stands alone
    p, _ = visit_estimate(buffer, [0, 0], 16)
    assert p == pytest.approx(sum(buffer[2:]) / 16)  # last 16 outcomes: 14 older + 2 new


def test_sampler_history_validity_and_outcomes_from_correct():
    prompts = make_prompts(4)
    sampler = KnapsackSampler(prompts, prompts_per_step=2, default_n=4, seed=0)
    # Rewards are shaped (not 0/1): the estimate reads `correct`.
    sampler.update([make_group(prompts[0], [1, 1, 0, 0], rewards=[0.3, 0.9, -1.0, 0.2])])
    assert sampler.estimate("q0") == (False, 0.5, 4)  # 4 < min_buffer_length 8
    sampler.update([make_group(prompts[0], [1, 1, 1, 1])])
    assert sampler.estimate("q0") == (True, 0.75, 8)


def test_sampler_allocates_unequal_budgets_summing_to_b_times_n():
    prompts = make_prompts(8)
    rates = {p.prompt_id: (0.0, 0.5, 1.0, 0.9)[i % 4] for i, p in enumerate(prompts)}
    sampler = KnapsackSampler(prompts, prompts_per_step=4, default_n=8, seed=3)
    batches, metrics = run_steps(sampler, rates, range(6))
    assert all(sum(n for _, n in batch) == 32 for batch in batches)
    assert [n for _, n in batches[0]] == [8, 8, 8, 8]  # first epoch: no history yet
    later = [n for batch in batches[2:] for _, n in batch]
    assert len(set(later)) > 1, "after one epoch the budgets differ between prompts"
    last = metrics[-1]
    assert last["sampler/knapsack/max_budget"] == last["sampler/budget_max"]
    assert last["sampler/knapsack/min_budget"] == last["sampler/budget_min"]
    assert last["sampler/knapsack/covered_prompts"] == 4
    assert last["sampler/knapsack/unknown_prompts"] == 0


def test_prompts_with_zero_budget_are_skipped():
    prompts = make_prompts(2)
    # Without the fallback (which would hand the solved prompt the surplus) q0 gets nothing.
    cfg = KnapsackConfig(positive_n=0, allow_fallback=False)
    sampler = KnapsackSampler(prompts, prompts_per_step=2, default_n=4, seed=0, config=cfg)
    sampler.update([make_group(prompts[0], [1] * 8), make_group(prompts[1], [1, 0] * 4)])
    batch = sampler.next_batch(1)
    assert [(p.prompt_id, n) for p, n in batch] == [("q1", 8)]
    metrics = sampler.update([make_group(p, [1, 0] * (n // 2)) for p, n in batch])
    assert metrics["sampler/knapsack/covered_prompts"] == 1
    assert metrics["sampler/knapsack/min_budget"] == 0
