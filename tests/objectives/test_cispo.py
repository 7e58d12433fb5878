"""CISPO: clipped, stop-gradient importance weights on every token (MiniMax-M1 eq. 4), by hand."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import lengths_mask

# One sequence of 3 tokens, old log-prob -1 each, ratios 0.5, 1 and 2.
OLD = torch.tensor([[-1.0, -1.0, -1.0]], dtype=torch.float64)
LOGP = OLD + torch.tensor([[math.log(0.5), 0.0, math.log(2.0)]], dtype=torch.float64)  # -1.693147, -1, -0.306853


def make(**knobs):
    return get_objective("cispo")(ObjectiveConfig(name="cispo", **knobs), max_response_length=4)


def run(objective, advantage):
    logp = LOGP.clone().requires_grad_(True)
    mask = lengths_mask([3], 3)
    inputs = LossInputs(logp=logp, old_logp=OLD, advantages=torch.tensor([advantage], dtype=torch.float64), mask=mask)
    loss, metrics = objective.compute_loss(inputs, step_scale_of(mask, 4))
    (grad,) = torch.autograd.grad(loss, logp)
    return float(loss), grad, metrics


def test_every_token_keeps_its_gradient_with_the_weight_capped():
    # Defaults: no floor (1 - 1.0 = 0), cap 1.28: weights 0.5, 1, 1.28 (ratio 2 capped).
    # loss = -w*A*logp per token, A = 1: 0.5*1.693147 + 1*1 + 1.28*0.306853 = 0.846574 + 1 + 0.392772 = 2.239346;
    # token-mean /3 = 0.746449. Gradient -w*A/3: -0.166667, -0.333333, -0.426667 (PPO would give the
    # ratio-2 token 0 for A > 0).
    loss, grad, metrics = run(make(), 1.0)
    assert loss == pytest.approx(0.746449, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-0.5 / 3, -1.0 / 3, -1.28 / 3]], dtype=torch.float64))
    assert metrics["cispo/is_clip_frac_high"] == pytest.approx(1 / 3)
    assert metrics["cispo/is_clip_frac_low"] == 0.0
    assert metrics["cispo/is_weight_mean"] == pytest.approx(2.78 / 3)  # (0.5 + 1 + 1.28)/3 = 0.926667


def test_floor_applies_and_negative_advantages_keep_their_gradient():
    # is_clip_low 0.2: floor 0.8, weights 0.8, 1, 1.28; A = -1: gradient +w/3 = 0.266667, 0.333333, 0.426667
    # (PPO would give the ratio-0.5 token 0 for A < 0).
    _, grad, metrics = run(make(cispo={"is_clip_low": 0.2}), -1.0)
    torch.testing.assert_close(grad, torch.tensor([[0.8 / 3, 1.0 / 3, 1.28 / 3]], dtype=torch.float64))
    assert metrics["cispo/is_clip_frac_low"] == pytest.approx(1 / 3)


def test_clip_false_leaves_the_weight_untruncated():
    # Weights 0.5, 1, 2: gradient -w/3 for A = 1.
    _, grad, _ = run(make(clip=False), 1.0)
    torch.testing.assert_close(grad, torch.tensor([[-0.5 / 3, -1.0 / 3, -2.0 / 3]], dtype=torch.float64))


def test_defaults_and_bounds():
    config = ObjectiveConfig(name="cispo")
    assert (config.cispo.is_clip_low, config.cispo.is_clip_high) == (1.0, 0.28)
    assert config.loss_agg == "token-mean" and config.kl_coef == 0.0 and config.clip_c is None
    with pytest.raises(ValidationError, match="is_clip_high"):
        ObjectiveConfig(name="cispo", cispo={"is_clip_high": -0.1})
