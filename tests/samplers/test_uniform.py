"""Uniform sampler: seeded epoch shuffles, coverage, drop-last epochs; the metrics every sampler reports."""

from __future__ import annotations

import numpy as np
import pytest

from rlpost.samplers import EpochOrder, UniformSampler
from rlpost.samplers.outcomes import BUDGET_BIN_LABELS, budget_histogram
from tests.samplers.sampler_helpers import make_group, make_prompts


def _ids(batch):
    return [prompt.prompt_id for prompt, _ in batch]


def test_each_epoch_covers_every_prompt_exactly_once():
    prompts = make_prompts(12)
    sampler = UniformSampler(prompts, prompts_per_step=4, default_n=8, seed=3)
    epochs = []
    for _ in range(3):
        epoch = [pid for step in range(3) for pid in _ids(sampler.next_batch(step))]
        assert sorted(epoch) == sorted(p.prompt_id for p in prompts)
        epochs.append(epoch)
    assert len({tuple(e) for e in epochs}) == 3, "every epoch gets its own permutation"


def test_every_prompt_gets_default_n():
    sampler = UniformSampler(make_prompts(5), prompts_per_step=5, default_n=6, seed=0)
    assert [n for _, n in sampler.next_batch(0)] == [6] * 5


def test_partial_last_batch_is_dropped_and_no_batch_repeats_a_prompt():
    # 10 prompts, 4 per step: two batches per epoch, the 2 left over start the next epoch afresh.
    order = EpochOrder(size=10, seed=1)
    seen_per_epoch: dict[int, list[int]] = {}
    for _ in range(30):
        batch = order.take(4)
        assert len(set(batch.tolist())) == 4
        seen_per_epoch.setdefault(order.epoch, []).extend(batch.tolist())
    for epoch, seen in seen_per_epoch.items():
        assert len(seen) == len(set(seen)) == 8, f"epoch {epoch} repeated a prompt"
    assert set().union(*map(set, seen_per_epoch.values())) == set(range(10))


def test_same_seed_same_order_other_seed_other_order():
    prompts = make_prompts(50)
    a, b, c = (UniformSampler(prompts, prompts_per_step=10, default_n=2, seed=s) for s in (5, 5, 6))
    first = [_ids(a.next_batch(i)) for i in range(5)]
    assert first == [_ids(b.next_batch(i)) for i in range(5)]
    assert first != [_ids(c.next_batch(i)) for i in range(5)]


def test_negative_seed_is_accepted():
    sampler = UniformSampler(make_prompts(8), prompts_per_step=8, default_n=1, seed=-3)
    assert sorted(_ids(sampler.next_batch(0))) == sorted(p.prompt_id for p in make_prompts(8))


def test_update_reports_zero_variance_and_budget_metrics():
    prompts = make_prompts(3)
    sampler = UniformSampler(prompts, prompts_per_step=3, default_n=4, seed=0)
    groups = [
        make_group(prompts[0], [1, 1, 1, 1]),
        make_group(prompts[1], [0, 1, 0, 0]),
        make_group(prompts[2], [0, 0]),
    ]
    metrics = sampler.update(groups)
    assert metrics["sampler/zero_variance_frac"] == pytest.approx(2 / 3)
    assert metrics["sampler/zero_variance_rollout_frac"] == pytest.approx(6 / 10)
    assert metrics["sampler/effective_prompts"] == 1
    assert (metrics["sampler/budget_min"], metrics["sampler/budget_max"]) == (2, 4)
    assert metrics["sampler/budget_mean"] == pytest.approx(10 / 3)
    assert metrics["sampler/solve_all_frac"] == pytest.approx(1 / 3)
    assert metrics["sampler/solve_none_frac"] == pytest.approx(1 / 3)
    histogram = {key: value for key, value in metrics.items() if key.startswith("sampler/budget_hist/")}
    assert histogram == {f"sampler/budget_hist/{label}": 0.0 for label in BUDGET_BIN_LABELS} | {
        "sampler/budget_hist/2-3": 1.0,
        "sampler/budget_hist/4-7": 2.0,
    }


def test_budget_histogram_bins_are_powers_of_two_with_an_open_last_bin():
    sizes = np.array([1, 2, 3, 4, 7, 8, 15, 16, 64, 127, 128, 300])
    assert budget_histogram(sizes) == {
        "sampler/budget_hist/1": 1.0,
        "sampler/budget_hist/2-3": 2.0,
        "sampler/budget_hist/4-7": 2.0,
        "sampler/budget_hist/8-15": 2.0,
        "sampler/budget_hist/16-31": 1.0,
        "sampler/budget_hist/32-63": 0.0,
        "sampler/budget_hist/64-127": 2.0,
        "sampler/budget_hist/128+": 2.0,
    }
