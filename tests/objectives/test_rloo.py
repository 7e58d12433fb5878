"""RLOO (leave-one-out baseline): advantages, singletons, config defaults and the loss, by hand."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.registry import get_objective, has_capability
from rlpost.objectives.rloo import leave_one_out_advantages
from tests.objectives.helpers import advantage_inputs, lengths_mask

# Groups: 0 = [1, 0, 0, 1], 1 = [2, 0, 1], 2 = [0.7] (singleton), 3 = [1, 1] (all equal).
REWARDS = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 0.7, 1.0, 1.0]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 2, 3, 3]
# Group 0: r=1 -> 1 - (0+0+1)/3 = 2/3; r=0 -> 0 - (1+0+1)/3 = -2/3.
# Group 1: r=2 -> 2 - (0+1)/2 = 1.5; r=0 -> 0 - (2+1)/2 = -1.5; r=1 -> 1 - (2+0)/2 = 0.
EXPECTED = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.5, -1.5, 0.0, 0.0, 0.0, 0.0]


def make(**knobs):
    return get_objective("rloo")(ObjectiveConfig(name="rloo", **knobs), max_response_length=4)


def test_leave_one_out_advantages_by_hand():
    advantages, in_group = leave_one_out_advantages(torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(GROUPS))
    torch.testing.assert_close(advantages, torch.tensor(EXPECTED, dtype=torch.float64), atol=1e-12, rtol=0)
    assert in_group.tolist() == [True] * 7 + [False] + [True] * 2


def test_all_equal_group_is_exactly_zero():
    # 0.1 * 3 / 3 rounds; the leave-one-out difference must still be exactly 0.
    advantages, _ = leave_one_out_advantages(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([5, 5, 5]))
    assert torch.equal(advantages, torch.zeros(3))


def test_singleton_gets_zero_or_its_reward():
    assert make().compute_advantages(advantage_inputs(REWARDS, GROUPS))[0][7] == 0.0
    reward_mode = make(rloo={"singleton_advantage": "reward"})
    advantages, _ = reward_mode.compute_advantages(advantage_inputs(REWARDS, GROUPS))
    assert advantages[7] == pytest.approx(0.7)
    torch.testing.assert_close(advantages[:7], torch.tensor(EXPECTED[:7], dtype=torch.float64), atol=1e-12, rtol=0)


def test_std_normalisation_knob_does_not_change_rloo():
    # RLOO has no std division; the registered default says so and an explicit true is ignored like Dr.GRPO's.
    assert ObjectiveConfig(name="rloo").normalize_adv_by_std is False
    advantages, _ = make(normalize_adv_by_std=True).compute_advantages(advantage_inputs(REWARDS, GROUPS))
    torch.testing.assert_close(advantages, torch.tensor(EXPECTED, dtype=torch.float64), atol=1e-12, rtol=0)


def test_metrics_report_the_baselines():
    _, metrics = make().compute_advantages(advantage_inputs(REWARDS, GROUPS))
    # Baselines r - A of the 9 grouped completions: 1/3, 2/3, 2/3, 1/3, 0.5, 1.5, 1, 1, 1 -> sum 7, mean 7/9.
    assert metrics["rloo/baseline_mean"] == pytest.approx(7 / 9)
    assert metrics["rloo/in_group_frac"] == pytest.approx(9 / 10)
    assert metrics["adv/mean"] == pytest.approx(0.0, abs=1e-12)


def test_loss_at_ratio_one_is_minus_token_mean_advantage():
    # Two completions of 1 and 3 tokens, A = +2/3 and -2/3, logp = old_logp (ratio 1, no clip):
    # token-mean loss = -(2/3 - 3 * 2/3) / 4 = 1/3; d loss / d logp = -A / 4 per token.
    mask = lengths_mask([1, 3], 4)
    logp = torch.full((2, 4), -0.5, dtype=torch.float64, requires_grad=True)
    inputs = LossInputs(logp=logp, old_logp=logp.detach().clone(), advantages=torch.tensor([2 / 3, -2 / 3], dtype=torch.float64), mask=mask)
    loss, metrics = make().compute_loss(inputs, step_scale_of(mask, 4))
    assert float(loss.detach()) == pytest.approx(1 / 3)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = torch.tensor([[-1 / 6, 0, 0, 0], [1 / 6, 1 / 6, 1 / 6, 0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    assert metrics["actor/pg_loss"] == pytest.approx(1 / 3)


def test_registered_without_capabilities():
    assert not has_capability("rloo", "corrects_off_policy") and not has_capability("rloo", "own_gradient_path")
