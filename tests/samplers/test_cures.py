"""CurES: posterior accuracy, selection weights, budget split (numbers by hand), sampler behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rlpost.config import RLPostConfig
from rlpost.samplers.cures import (
    CuresConfig,
    CuresSampler,
    gradient_scale,
    posterior_accuracy,
    proportional_budgets,
    selection_weights,
)
from tests.samplers.sampler_helpers import make_group, make_prompts, run_steps


def test_posterior_accuracy_is_the_beta_mean():
    # (3 + 1) / (8 + 2) = 0.4; unseen (0 + 1) / (0 + 2) = 0.5; 0 of 8: 1/10 = 0.1
    p = posterior_accuracy(np.array([3.0, 0.0, 0.0]), np.array([8.0, 0.0, 8.0]))
    assert p.tolist() == pytest.approx([0.4, 0.5, 0.1])


def test_gradient_scale_peaks_at_one_half():
    # sqrt(0.5*0.5) = 0.5; sqrt(0.1*0.9) = sqrt(0.09) = 0.3 = sqrt(0.9*0.1)
    assert gradient_scale(np.array([0.5, 0.1, 0.9])).tolist() == pytest.approx([0.5, 0.3, 0.3])


def test_selection_weights_by_hand():
    # tau 0.1: logits 0.25/0.1 = 2.5 and 0.09/0.1 = 0.9; exp(-1.6) = 0.2018965;
    # P = 1/1.2018965 = 0.8320184 and 0.2018965/1.2018965 = 0.1679816
    assert selection_weights(np.array([0.5, 0.1]), 0.1).tolist() == pytest.approx([0.8320184, 0.1679816], abs=1e-7)


def test_budgets_proportional_with_largest_remainders():
    # scale sum 1.5, 24 rollouts: 16 * [0.5, 0.3, 0.3, 0.4] = [8, 4.8, 4.8, 6.4]; floors [8, 4, 4, 6] = 22;
    # the 2 left go to the largest fractions (.8, .8): [8, 5, 5, 6]
    assert proportional_budgets(np.array([0.5, 0.3, 0.3, 0.4]), 24, 2, 32).tolist() == [8, 5, 5, 6]


def test_budgets_respect_the_cap():
    # 12 / 0.7 * [0.5, 0.1, 0.1] = [8.57, 1.71, 1.71]: the cap fixes the first at 6, the other 6 split 3 / 3
    assert proportional_budgets(np.array([0.5, 0.1, 0.1]), 12, 2, 6).tolist() == [6, 3, 3]


def test_budgets_respect_the_floor():
    # 12 / 1.05 * [0.5, 0.5, 0.05] = [5.71, 5.71, 0.57]: the floor fixes the last at 2, the other 10 split 5 / 5
    assert proportional_budgets(np.array([0.5, 0.5, 0.05]), 12, 2, 32).tolist() == [5, 5, 2]


def test_impossible_budget_is_refused():
    with pytest.raises(ValueError, match="cannot split"):
        proportional_budgets(np.array([1.0, 1.0]), 3, 2, 32)


def test_sampler_splits_the_budget_by_posterior():
    # q0 saw 0 of 8 correct: p = 1/10, sigma = 0.3; q1 is unseen: p = 1/2, sigma = 0.5.
    # 2 prompts x 4 rollouts = 8 split 8 * [0.3, 0.5] / 0.8 = [3, 5].
    prompts = make_prompts(2)
    sampler = CuresSampler(prompts, prompts_per_step=2, default_n=4, seed=0, config=CuresConfig(pool_factor=1.0))
    sampler.update([make_group(prompts[0], [0] * 8)])
    batch = sampler.next_batch(0)
    assert {prompt.prompt_id: n for prompt, n in batch} == {"q0": 3, "q1": 5}
    metrics = sampler.update([make_group(prompt, [0] * n) for prompt, n in batch])
    assert metrics["sampler/cures/max_budget"] == 5
    assert metrics["sampler/cures/min_budget"] == 3
    assert metrics["sampler/cures/selected_p_mean"] == pytest.approx(0.3)  # (0.1 + 0.5) / 2


def test_decay_discounts_past_counts():
    # decay 0.5: 4 of 8, then 0 of 2: successes 0.5*4 + 0 = 2, trials 0.5*8 + 2 = 6; p = 3/8 = 0.375
    prompts = make_prompts(2)
    sampler = CuresSampler(prompts, prompts_per_step=1, default_n=4, seed=0, config=CuresConfig(decay=0.5))
    sampler.update([make_group(prompts[0], [1, 1, 1, 1, 0, 0, 0, 0])])
    sampler.update([make_group(prompts[0], [0, 0])])
    assert sampler.estimate("q0") == pytest.approx((2.0, 6.0, 0.375))


def test_state_round_trip_redraws_the_same_batches():
    prompts = make_prompts(12)
    rates = {p.prompt_id: (i % 4) / 4 for i, p in enumerate(prompts)}
    first = CuresSampler(prompts, prompts_per_step=3, default_n=4, seed=5)
    run_steps(first, rates, range(3))
    second = CuresSampler(prompts, prompts_per_step=3, default_n=4, seed=5)
    second.load_state_dict(first.state_dict())
    assert run_steps(first, rates, range(3, 6))[0] == run_steps(second, rates, range(3, 6))[0]


def test_budgets_always_sum_to_the_step_budget():
    prompts = make_prompts(16)
    rates = {p.prompt_id: (i % 5) / 4 for i, p in enumerate(prompts)}
    batches, metrics = run_steps(CuresSampler(prompts, prompts_per_step=4, default_n=8, seed=1), rates, range(8))
    for batch in batches:
        assert sum(n for _, n in batch) == 32
        assert all(2 <= n <= 32 for _, n in batch)
    assert all("sampler/cures/seen_frac" in m for m in metrics)


def test_config_section_and_validation():
    cfg = RLPostConfig(sampler={"name": "cures", "cures": {"temperature": 0.5}})
    assert cfg.sampler.cures.temperature == 0.5
    with pytest.raises(ValidationError):
        CuresConfig(min_n=8, max_n=4)
    with pytest.raises(ValueError, match="rollout.n"):
        CuresSampler(make_prompts(4), prompts_per_step=2, default_n=64, seed=0)
