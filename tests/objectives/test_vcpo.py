"""VCPO (ALGORITHMS.md §6.7): ESS and its lr multiplier, OPOB baseline and the two-buffer trick."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.registry import get_objective
from rlpost.objectives.vcpo import (
    OpobGradientBuffers,
    log_effective_sample_size,
    opob_baseline,
    opob_coefficients,
    truncated_sequence_is_weights,
)
from tests.objectives.helpers import lengths_mask


def _vcpo(**vcpo):
    return get_objective("vcpo")(ObjectiveConfig(name="vcpo", vcpo=vcpo), max_response_length=4)


def _step_inputs(weights):
    """One-token sequences whose importance weights are `weights`."""
    logp = torch.tensor(weights, dtype=torch.float64).log().unsqueeze(-1)
    return {"logp": logp, "behaviour_logp": torch.zeros_like(logp), "mask": torch.ones_like(logp)}


def test_ess_hand_numbers_and_sqrt_multiplier():
    multiplier, metrics = _vcpo().lr_scale(_step_inputs([1, 1, 1, 5]))
    assert metrics["staleness/minibatch_ess"] == pytest.approx(2.2857143, abs=1e-6)
    assert metrics["staleness/minibatch_ess_ratio"] == pytest.approx(0.5714286, abs=1e-7)
    assert multiplier == pytest.approx(0.7559289, abs=1e-7)


def test_linear_rule_and_disabled_scaling():
    multiplier, _ = _vcpo(ess_rule="linear").lr_scale(_step_inputs([1, 1, 1, 5]))
    assert multiplier == pytest.approx(0.5714286, abs=1e-7)
    multiplier, metrics = _vcpo(ess_scaling=False).lr_scale(_step_inputs([1, 1, 1, 5]))
    assert multiplier == 1.0 and metrics["staleness/minibatch_ess"] == pytest.approx(2.2857143, abs=1e-6)


def test_equal_weights_give_full_learning_rate():
    multiplier, metrics = _vcpo().lr_scale(_step_inputs([2, 2, 2, 2]))
    assert metrics["staleness/minibatch_ess"] == pytest.approx(4.0, abs=1e-12)
    assert metrics["staleness/minibatch_ess_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert multiplier == pytest.approx(1.0, abs=1e-12)


def test_clipped_ess_is_logged_and_can_drive_the_scale():
    inputs = _step_inputs([1, 1, 1, 20])  # the threshold 8 truncates the last weight
    _, metrics = _vcpo().lr_scale(inputs)
    assert metrics["staleness/minibatch_ess_clipped"] == pytest.approx(11**2 / 67, abs=1e-9)
    multiplier, _ = _vcpo(ess_use_clipped=True).lr_scale(inputs)
    assert multiplier == pytest.approx(math.sqrt(11**2 / 67 / 4), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=8))
def test_log_space_ess_equals_direct_ess(log_weights):
    lw = torch.tensor(log_weights, dtype=torch.float64)
    w = lw.exp()
    direct = w.sum() ** 2 / (w**2).sum()
    assert float(log_effective_sample_size(lw).exp()) == pytest.approx(float(direct), rel=1e-12)


def test_log_space_ess_stays_finite_for_huge_weights():
    ess = float(log_effective_sample_size(torch.tensor([800.0, 0.0, 0.0], dtype=torch.float64)).exp())
    assert ess == pytest.approx(1.0, abs=1e-12)


def test_empty_step_asks_to_skip():
    inputs = {"logp": torch.zeros(2, 3), "behaviour_logp": torch.zeros(2, 3), "mask": torch.zeros(2, 3)}
    multiplier, metrics = _vcpo().lr_scale(inputs)
    assert multiplier == 0.0 and metrics["staleness/empty_step"] == 1.0
    assert metrics["staleness/skip_step"] == 1.0, "the learner's signal to skip optimizer and scheduler steps"
    _, metrics = _vcpo().lr_scale(_step_inputs([1, 1, 1, 5]))
    assert metrics["staleness/skip_step"] == 0.0


def test_ess_uses_token_sums_over_the_mask():
    logp = torch.tensor([[0.5, 0.5, 99.0], [0.0, 0.0, 0.0]], dtype=torch.float64)  # padding junk ignored
    inputs = {"logp": logp, "behaviour_logp": torch.zeros_like(logp), "mask": lengths_mask([2, 3], 3)}
    _, metrics = _vcpo().lr_scale(inputs)
    w = torch.tensor([math.e, 1.0], dtype=torch.float64)
    assert metrics["staleness/minibatch_ess"] == pytest.approx(float(w.sum() ** 2 / (w**2).sum()), rel=1e-12)


# ---------------------------------------------------------------- OPOB


REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
SQ_NORMS = torch.tensor([1.0, 4.0, 1.0, 4.0], dtype=torch.float64)
IS_WEIGHTS = torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=torch.float64)
ONE_GROUP = torch.zeros(4, dtype=torch.long)


def test_opob_baseline_hand_number():
    b = opob_baseline(REWARDS, SQ_NORMS, ONE_GROUP, IS_WEIGHTS.log())
    torch.testing.assert_close(b, torch.full((4,), 5 / 13, dtype=torch.float64))
    assert 5 / 13 == pytest.approx(0.3846154, abs=1e-7)


def test_opob_coefficients_hand_numbers():
    b = opob_baseline(REWARDS, SQ_NORMS, ONE_GROUP, IS_WEIGHTS.log())
    coefficients = opob_coefficients(REWARDS, b, ONE_GROUP, norm_by_std=True)
    expected = torch.tensor([1.2307692, -0.7692308, 1.2307692, -0.7692308], dtype=torch.float64)
    torch.testing.assert_close(coefficients, expected, atol=1e-7, rtol=0)


def test_opob_equal_rewards_give_zero_coefficients():
    rewards = torch.ones(3, dtype=torch.float64)
    b = opob_baseline(rewards, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, dtype=torch.long))
    assert torch.equal(opob_coefficients(rewards, b, torch.zeros(3, dtype=torch.long)), torch.zeros(3, dtype=torch.float64))


def test_opob_is_per_group_and_survives_huge_weights():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    b = opob_baseline(rewards, torch.ones(4), torch.tensor([0, 0, 1, 1]), torch.tensor([400.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(b, torch.tensor([1.0, 1.0, 0.5, 0.5], dtype=torch.float64))


def test_two_buffer_accumulation_equals_direct_coefficients():
    """Per-trajectory gradients of a tiny linear model: the two-buffer result is Σ_i coef_i·g_i."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    features = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    group_index = torch.tensor([0, 0, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.9], dtype=torch.float64)
    log_is = torch.tensor([0.1, -0.2, 0.0, 0.4], dtype=torch.float64)

    grads = [torch.autograd.grad(torch.log_softmax(features[i] @ weight, -1)[0], weight)[0] for i in range(4)]
    buffers = OpobGradientBuffers([weight], norm_by_std=True, use_is_weights=True)
    for g in (0, 1):
        members = (group_index == g).nonzero().squeeze(-1).tolist()
        buffers.start_group(rewards[members])
        for i in members:
            buffers.add([grads[i]], float(rewards[i]), float(log_is[i]))
        buffers.finish_group()

    sq_norms = torch.stack([g.pow(2).sum() for g in grads])
    baseline = opob_baseline(rewards, sq_norms, group_index, log_is)
    coefficients = opob_coefficients(rewards, baseline, group_index, norm_by_std=True)
    expected = sum(c * g for c, g in zip(coefficients, grads))
    torch.testing.assert_close(buffers.accumulated[0], expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(torch.tensor(buffers.baselines, dtype=torch.float64), baseline[[0, 2]])


def test_two_buffer_skips_non_finite_gradients():
    buffers = OpobGradientBuffers([torch.zeros(2)])
    buffers.start_group(torch.tensor([1.0, 0.0]))
    buffers.add([torch.tensor([float("inf"), 0.0])], 1.0)
    buffers.add([torch.tensor([1.0, 2.0])], 0.0)
    buffers.finish_group()
    assert buffers.skipped == 1
    assert torch.isfinite(buffers.accumulated[0]).all()


# ---------------------------------------------------------------- loss


def test_truncated_sequence_is_weight_multiplies_the_loss():
    mask = lengths_mask([2, 1], 2)
    old_logp = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    behaviour = torch.tensor([[-1.5, -1.5], [-0.5, 7.0]], dtype=torch.float64)  # w = e^3 -> 8, e^0.5
    weights, truncated = truncated_sequence_is_weights(old_logp, behaviour, mask, threshold=8.0)
    assert truncated.tolist() == [True, False]
    torch.testing.assert_close(weights, torch.tensor([8.0, math.exp(0.5)], dtype=torch.float64))

    logp = old_logp.clone().requires_grad_(True)
    inputs = LossInputs(logp=logp, old_logp=old_logp, advantages=torch.tensor([1.0, -1.0], dtype=torch.float64),
                        mask=mask, behaviour_logp=behaviour)
    loss, metrics = _vcpo().compute_loss(inputs, step_scale_of(mask, 2))
    assert float(loss.detach()) == pytest.approx((-8.0 + math.exp(0.5)) / 2, abs=1e-12)  # seq-mean-token-mean, no clip
    assert metrics["vcpo/is_truncated_frac"] == pytest.approx(0.5)
    unweighted, _ = _vcpo(is_threshold=None).compute_loss(inputs, step_scale_of(mask, 2))
    assert float(unweighted.detach()) == pytest.approx(0.0, abs=1e-12)
