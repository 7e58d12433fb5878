"""BNPO (ALGORITHMS.md §4.7): Beta fit, weights, guards, decomposition."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.bnpo import beta_log_pdf, bnpo_advantages, fit_beta_moments
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import advantage_inputs

# four groups of four with means 0.25, 0.5, 0.75, 0.5
SCORES = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1]
GROUPS = [g for g in range(4) for _ in range(4)]


def test_moment_fit_hand_numbers():
    fit = fit_beta_moments(torch.tensor([0.25, 0.5, 0.75, 0.5]))
    assert fit.p_mean == pytest.approx(0.5, abs=1e-12)
    assert fit.p_var == pytest.approx(0.0416667, abs=1e-7)
    assert fit.alpha == pytest.approx(1.8333333, abs=1e-7)
    assert fit.beta == pytest.approx(1.8333333, abs=1e-7)
    assert not fit.fell_back


def test_beta_pdf_hand_numbers():
    alpha = beta = 1 + 2.5 / 3
    pdf = beta_log_pdf(torch.tensor([0.25, 0.5]), alpha, beta).exp()
    torch.testing.assert_close(pdf, torch.tensor([1.1237997, 1.4282510], dtype=torch.float64), atol=1e-7, rtol=0)


def test_advantages_hand_numbers():
    result = bnpo_advantages(torch.tensor(SCORES, dtype=torch.float64), torch.tensor(GROUPS))
    adv = result.advantages
    assert float(adv[0]) == pytest.approx(0.6673787, abs=1e-7)  # p = 0.25, r = 1
    assert float(adv[1]) == pytest.approx(-0.2224596, abs=1e-7)  # p = 0.25, r = 0
    assert float(adv[4]) == pytest.approx(0.3500785, abs=1e-7)  # p = 0.5
    assert float(adv[6]) == pytest.approx(-0.3500785, abs=1e-7)
    assert float(adv[8]) == pytest.approx(0.2224596, abs=1e-7)  # p = 0.75
    assert float(adv[11]) == pytest.approx(-0.6673787, abs=1e-7)


def test_forced_grpo_parameters_give_pi_over_eight_scaled_advantage():
    result = bnpo_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0, 0]), alpha=1.5, beta=1.5)
    assert math.pi / 8 == pytest.approx(0.3926991, abs=1e-7)
    torch.testing.assert_close(result.advantages, torch.tensor([0.3926991, -0.3926991], dtype=torch.float64), atol=1e-7, rtol=0)


def test_uniform_parameters_give_centred_scores():
    scores = torch.tensor(SCORES, dtype=torch.float64)
    result = bnpo_advantages(scores, torch.tensor(GROUPS), alpha=1.0, beta=1.0)
    means = scores.view(4, 4).mean(dim=1).repeat_interleave(4)
    torch.testing.assert_close(result.advantages, scores - means)


def test_all_zero_groups_fall_back_to_uniform_and_give_zero():
    result = bnpo_advantages(torch.zeros(8, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert (result.fit.alpha, result.fit.beta, result.fit.fell_back) == (1.0, 1.0, True)
    assert torch.equal(result.advantages, torch.zeros(8, dtype=torch.float64))


def test_overdispersed_variance_clamps_to_uniform():
    fit = fit_beta_moments(torch.tensor([0.0, 1.0]))  # v = 0.5 > m(1-m) = 0.25, so k < 0
    assert (fit.alpha, fit.beta, fit.fell_back) == (1.0, 1.0, False)


def test_boundary_groups_and_singletons_give_zero_without_nan():
    scores = torch.tensor([1, 1, 0, 0, 1, 0, 1], dtype=torch.float64)
    result = bnpo_advantages(scores, torch.tensor([0, 0, 1, 1, 2, 2, 3]), alpha=1.0, beta=3.0)
    assert torch.isfinite(result.advantages).all()
    assert torch.equal(result.advantages[[0, 1, 2, 3, 6]], torch.zeros(5, dtype=torch.float64))


def test_rewards_outside_the_range_name_the_knob():
    objective = get_objective("bnpo")(ObjectiveConfig(name="bnpo"), 8)
    with pytest.raises(ValueError, match="max_value"):
        objective.compute_advantages(advantage_inputs([2.0, 0.0, 1.0, 0.0], [0, 0, 1, 1]))


def test_objective_maps_rewards_and_logs_the_fit():
    objective = get_objective("bnpo")(ObjectiveConfig(name="bnpo", bnpo={"min_value": -1.0, "max_value": 1.0}), 8)
    rewards = [2 * s - 1 for s in SCORES]  # ±1 rewards map back to the same scores
    adv, metrics = objective.compute_advantages(advantage_inputs(rewards, GROUPS))
    assert float(adv[0]) == pytest.approx(0.6673787, abs=1e-7)
    assert metrics["bnpo/alpha"] == pytest.approx(1.8333333, abs=1e-7)
    assert metrics["bnpo/weight_max"] == pytest.approx(1 / 1.1237997, abs=1e-7)
    assert metrics["bnpo/fallback"] == 0.0
    assert objective.config.loss_agg == "seq-mean-token-sum"


def test_decomposition_averages_component_advantages():
    config = ObjectiveConfig(name="bnpo", bnpo={"decompose": True, "components": ["acc", "fmt"]})
    objective = get_objective("bnpo")(config, 8)
    acc = torch.tensor(SCORES, dtype=torch.float64)
    fmt = torch.tensor([1, 1, 1, 0] * 4, dtype=torch.float64)
    inputs = advantage_inputs((acc + fmt).tolist(), GROUPS, reward_components={"acc": acc, "fmt": fmt})
    adv, metrics = objective.compute_advantages(inputs)
    expected = (bnpo_advantages(acc, torch.tensor(GROUPS)).advantages + bnpo_advantages(fmt, torch.tensor(GROUPS)).advantages) / 2
    torch.testing.assert_close(adv, expected)
    assert metrics["bnpo/fallback"] == 1.0  # fmt: every group p = 0.75, v = 0
    assert metrics["bnpo/fmt/alpha"] == 1.0 and metrics["bnpo/acc/alpha"] == pytest.approx(1.8333333, abs=1e-7)


def test_max_adv_clamp_is_counted():
    config = ObjectiveConfig(name="bnpo", bnpo={"max_adv": 0.5})
    adv, metrics = get_objective("bnpo")(config, 8).compute_advantages(advantage_inputs([float(s) for s in SCORES], GROUPS))
    assert float(adv.abs().max()) == pytest.approx(0.5)
    assert metrics["bnpo/max_adv_clamped_frac"] == pytest.approx(2 / 16)


def test_float32_reward_at_the_top_of_the_range_is_in_range():
    # 1.0 (correct) + 0.2 (boxed) in float32 is 1.2000000477: it is max_value, not above it.
    objective = get_objective("bnpo")(ObjectiveConfig(name="bnpo", bnpo={"max_value": 1.2}), 8)
    rewards = torch.tensor([1.0, 0.0, 0.2, 1.0], dtype=torch.float32) + torch.tensor([0.2, 0.0, 0.0, 0.0])
    inputs = advantage_inputs(rewards.tolist(), [0, 0, 1, 1])
    inputs.rewards = rewards
    advantages, _ = objective.compute_advantages(inputs)
    assert torch.isfinite(advantages).all() and float(advantages[0]) > 0 > float(advantages[1])
