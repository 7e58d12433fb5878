"""REINFORCE++ and REINFORCE++-baseline: global (step-level) whitening of the score, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.registry import get_objective, has_capability
from rlpost.objectives.reinforce_pp import whiten
from tests.objectives.helpers import advantage_inputs, lengths_mask


def make(**knobs):
    return get_objective("reinforce_pp")(ObjectiveConfig(name="reinforce_pp", **knobs), max_response_length=4)


def test_no_baseline_whitens_over_tokens():
    # r = [1, 0] with 3 and 1 tokens: token mean (3*1 + 0)/4 = 0.75;
    # unbiased token variance (3*0.25^2 + 0.75^2)/(4-1) = (0.1875 + 0.5625)/3 = 0.25, std 0.5;
    # A = (1 - 0.75)/0.5 = 0.5 and (0 - 0.75)/0.5 = -1.5 (eps 1e-8 under the root: negligible).
    advantages, metrics = make().compute_advantages(advantage_inputs([1.0, 0.0], [0, 1], lengths=[3, 1]))
    torch.testing.assert_close(advantages, torch.tensor([0.5, -1.5], dtype=torch.float64), rtol=1e-7, atol=0)
    assert metrics["reinforce_pp/score_mean"] == pytest.approx(0.75)
    assert metrics["reinforce_pp/score_std"] == pytest.approx(0.5)


def test_whiten_by_sequences_weights_each_sequence_once():
    # Same batch, one weight per sequence: mean 0.5, variance (0.25 + 0.25)/(2-1) = 0.5, A = ±0.5/sqrt(0.5) = ±0.70711.
    advantages, _ = make(reinforce_pp={"whiten_by": "sequences"}).compute_advantages(
        advantage_inputs([1.0, 0.0], [0, 1], lengths=[3, 1])
    )
    torch.testing.assert_close(
        advantages, torch.tensor([0.70710678, -0.70710678], dtype=torch.float64), rtol=1e-7, atol=0
    )


def test_group_mean_baseline_then_global_whitening():
    # Groups: 0 = [1, 0] (1 and 3 tokens), 1 = [1, 1] (2 and 2 tokens, all equal), 2 = [5] (4 tokens, singleton).
    # Scores r - mean_g: 0.5, -0.5, 0, 0; the singleton has no baseline: A = 0 and weight 0.
    # Token mean (1*0.5 - 3*0.5 + 0 + 0)/8 = -0.125;
    # variance (1*0.625^2 + 3*0.375^2 + 2*0.125^2 + 2*0.125^2)/(8-1) = (0.390625 + 0.421875 + 0.0625)/7 = 0.125;
    # A = (s + 0.125)/sqrt(0.125) = (s + 0.125)*2*sqrt(2): 1.25*sqrt(2), -0.75*sqrt(2), 0.25*sqrt(2) twice, 0.
    inputs = advantage_inputs([1.0, 0.0, 1.0, 1.0, 5.0], [0, 0, 1, 1, 2], lengths=[1, 3, 2, 2, 4])
    advantages, metrics = make(reinforce_pp={"baseline": "group_mean"}).compute_advantages(inputs)
    root2 = math.sqrt(2.0)
    expected = torch.tensor([1.25 * root2, -0.75 * root2, 0.25 * root2, 0.25 * root2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected, rtol=1e-7, atol=1e-12)
    assert metrics["reinforce_pp/score_mean"] == pytest.approx(-0.125)
    assert metrics["reinforce_pp/score_std"] == pytest.approx(0.35355339)
    assert metrics["reinforce_pp/no_baseline_frac"] == pytest.approx(0.2)


def test_all_equal_scores_give_zero():
    advantages, _ = make().compute_advantages(advantage_inputs([0.3, 0.3, 0.3], [0, 0, 1], lengths=[1, 2, 3]))
    assert torch.equal(advantages, torch.zeros(3, dtype=torch.float64))
    # weight-0 entries (empty completions) leave the statistics: [2, 0] with a 0-token third sequence.
    advantages, mean, std = whiten(torch.tensor([2.0, 0.0, 7.0]), torch.tensor([1.0, 1.0, 0.0]), eps=0.0)
    # mean 1, variance (1 + 1)/(2-1) = 2: A = ±1/sqrt(2), and 0 for the weight-0 entry.
    torch.testing.assert_close(
        advantages, torch.tensor([0.70710678, -0.70710678, 0.0], dtype=torch.float64), rtol=1e-7, atol=0
    )
    assert (mean, std) == pytest.approx((1.0, math.sqrt(2.0)))


def test_loss_is_the_clipped_surrogate():
    # A = [0.5, -1.5] on 3 and 1 tokens at ratio 1, token-mean: -(3*0.5 - 1.5)/4 = 0;
    # gradient -A/4 per token: -0.125 on the first sequence's tokens, 0.375 on the second's.
    objective = make()
    mask = lengths_mask([3, 1], 3)
    logp = torch.full((2, 3), -1.0, dtype=torch.float64, requires_grad=True)
    inputs = LossInputs(
        logp=logp, old_logp=logp.detach().clone(), advantages=torch.tensor([0.5, -1.5], dtype=torch.float64), mask=mask
    )
    loss, metrics = objective.compute_loss(inputs, step_scale_of(mask, 4))
    (grad,) = torch.autograd.grad(loss, logp)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[-0.125] * 3, [0.375, 0.0, 0.0]], dtype=torch.float64))
    assert metrics["actor/pg_clipfrac"] == 0.0


def test_defaults_and_capabilities():
    config = ObjectiveConfig(name="reinforce_pp")
    assert config.reinforce_pp.baseline == "none" and config.reinforce_pp.whiten_by == "tokens"
    assert (config.clip_low, config.clip_high, config.loss_agg) == (0.2, 0.2, "token-mean")
    # Without a group baseline the advantage is global: groups of one completion still carry a signal.
    assert not has_capability("reinforce_pp", "group_relative")
