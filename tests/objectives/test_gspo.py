"""GSPO (ALGORITHMS.md §3): sequence ratio, per-sequence clipping, GSPO-token gradient."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.gspo import gspo_token_policy_terms, sequence_log_ratio
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import lengths_mask

TOKEN_LOG_RATIOS = torch.tensor([[0.1, -0.1, 0.3]], dtype=torch.float64)


def _inputs(advantage: float):
    old_logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    logp = (old_logp + TOKEN_LOG_RATIOS).requires_grad_(True)
    return logp, old_logp, torch.tensor([advantage], dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)


def test_sequence_ratio_is_the_geometric_mean():
    logp, old_logp, _, mask = _inputs(1.0)
    assert float(sequence_log_ratio(logp.detach(), old_logp, mask).exp()) == pytest.approx(1.1051709, abs=1e-7)


def test_positive_advantage_is_clipped_with_zero_gradient():
    logp, old_logp, adv, mask = _inputs(+1.0)
    terms = gspo_token_policy_terms(logp, old_logp, adv, mask, clip_low=3e-4, clip_high=4e-4)
    torch.testing.assert_close(terms.loss.detach(), torch.full((1, 3), -1.0004, dtype=torch.float64))
    (grad,) = torch.autograd.grad(terms.loss.sum(), logp)
    assert torch.equal(grad, torch.zeros_like(grad))
    assert terms.clipped_upper.all()


def test_negative_advantage_is_not_clipped_and_the_gradient_flows():
    logp, old_logp, adv, mask = _inputs(-1.0)
    terms = gspo_token_policy_terms(logp, old_logp, adv, mask, clip_low=3e-4, clip_high=4e-4)
    torch.testing.assert_close(terms.loss.detach(), torch.full((1, 3), math.exp(0.1), dtype=torch.float64))
    assert float(terms.loss.detach()[0, 0]) == pytest.approx(1.10517, abs=1e-5)
    (grad,) = torch.autograd.grad(terms.loss.sum(), logp)
    assert (grad != 0).all() and not terms.clipped.any()


def test_gspo_token_gradient_equals_sequence_gspo_gradient():
    """Uniform A: seq-mean-token-mean of GSPO-token has the gradient of -A·s_i (per sequence, averaged)."""
    gen = torch.Generator().manual_seed(1)
    mask = lengths_mask([3, 1, 4], 4)
    old_logp = -torch.rand(3, 4, generator=gen, dtype=torch.float64)
    logp = (old_logp + 0.05 * torch.randn(3, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([0.8, -1.3, 0.4], dtype=torch.float64)
    objective = get_objective("gspo")(ObjectiveConfig(name="gspo", clip=False), max_response_length=4)
    loss, _ = objective.compute_loss(LossInputs(logp=logp, old_logp=old_logp, advantages=adv, mask=mask),
                                     step_scale_of(mask, 4))
    (grad,) = torch.autograd.grad(loss, logp)
    s = sequence_log_ratio(logp, old_logp, mask).exp()
    (expected,) = torch.autograd.grad((-adv * s).mean(), logp)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=1e-10)


def test_sequence_clip_fraction_and_log_ratio_metrics():
    mask = lengths_mask([3, 2], 3)
    old_logp = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.tensor([[0.1, -0.1, 0.3], [0.0, 0.0, 9.0]], dtype=torch.float64)  # seq 2: s = 1, padding junk
    objective = get_objective("gspo")(ObjectiveConfig(name="gspo"), max_response_length=3)
    inputs = LossInputs(logp=logp, old_logp=old_logp, advantages=torch.tensor([1.0, 1.0], dtype=torch.float64), mask=mask)
    _, metrics = objective.compute_loss(inputs, step_scale_of(mask, 3))
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)  # one sequence of two is clipped
    assert metrics["gspo/abs_log_ratio_mean"] == pytest.approx(0.1 / 2)
    assert metrics["gspo/abs_log_ratio_sq_mean"] == pytest.approx(0.01 / 2)


def test_log_ratio_is_clamped_above():
    mask = torch.ones(1, 2, dtype=torch.float64)
    log_s = sequence_log_ratio(torch.full((1, 2), 50.0, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), mask)
    assert float(log_s) == 10.0


def test_sequence_beyond_the_log_ratio_clamp_gets_zero_gradient():
    """verl clamps the whole token log-ratio sg(log s_i) + logp - sg(logp) at 10, gradient included.

    Row 0: log s = (12 + 12)/2 = 12 > 10, A = -1 (no dual clip in GSPO): value e^10 per token,
    gradient 0 (before: e^10 per token). Row 1: log s = 0.1 <= 10, A = -1: unclipped (A < 0 and
    ratio > 1), value e^0.1 and gradient d(-A·e^(logp - old))/dlogp = e^0.1 = 1.1051709.
    """
    old_logp = torch.tensor([[-13.0, -13.0], [-1.0, 0.0]], dtype=torch.float64)
    logp = torch.tensor([[-1.0, -1.0], [-0.9, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = lengths_mask([2, 1], 2)
    adv = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    terms = gspo_token_policy_terms(logp, old_logp, adv, mask, clip_low=3e-4, clip_high=4e-4)
    loss = terms.loss.detach()
    assert float(loss[0, 0]) == pytest.approx(math.exp(10.0), rel=1e-12)
    assert float(loss[1, 0]) == pytest.approx(1.1051709, abs=1e-7)
    (grad,) = torch.autograd.grad((terms.loss * mask).sum(), logp)
    assert grad[0].tolist() == [0.0, 0.0]
    assert float(grad[1, 0]) == pytest.approx(1.1051709, abs=1e-7)


def test_token_level_clip_fraction_is_reported_next_to_the_sequence_level_one():
    """Row 0: one token, log s = 0.1, A = +1: ratio 1.105 > 1 + 4e-4, clipped. Row 1: three tokens
    at ratio 1, not clipped. Sequence level: (1 + 0) / 2 = 0.5; token level: 1 / (1 + 3) = 0.25."""
    old_logp = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    logp = torch.tensor([[-0.9, 0.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = lengths_mask([1, 3], 3)
    objective = get_objective("gspo")(ObjectiveConfig(name="gspo"), max_response_length=3)
    inputs = LossInputs(logp=logp, old_logp=old_logp, advantages=torch.ones(2, dtype=torch.float64), mask=mask)
    _, metrics = objective.compute_loss(inputs, step_scale_of(mask, 3))
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert metrics["actor/pg_clipfrac_token"] == pytest.approx(0.25)
