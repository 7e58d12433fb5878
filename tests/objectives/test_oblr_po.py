"""OBLR-PO: the SNR learning-rate multiplier from micro-batch gradients and the length-weighted baseline, by hand."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.oblr_po import autograd_parameters, length_weighted_baseline, snr_lr_scale
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import advantage_inputs


def make(**section):
    return get_objective("oblr_po")(ObjectiveConfig(name="oblr_po", oblr_po=section), max_response_length=4)


def test_snr_multiplier_by_hand():
    # g1 = (1, 0), g2 = (1, 1): G = (2, 1), |G|^2 = 5, S = 1 + 2 = 3, K = 2.
    # noise = (2*3 - 5)/1 = 1, signal = 5 - 1 = 4, SNR = 4, multiplier 4/5 = 0.8 = 2/1 * (1 - 3/5).
    assert snr_lr_scale(3.0, 5.0, 2) == pytest.approx((0.8, 4.0, 1.0))
    # Equal pieces (no noise): g1 = g2 = (1, 0): S = 2, |G|^2 = 4 -> noise 0, multiplier 1.
    assert snr_lr_scale(2.0, 4.0, 2) == pytest.approx((1.0, 4.0, 0.0))
    # Orthogonal pieces of equal norm: S = |G|^2 = 2 -> signal 0, multiplier 0.
    assert snr_lr_scale(2.0, 2.0, 2)[0] == pytest.approx(0.0)
    assert snr_lr_scale(3.0, 5.0, 1) == (1.0, 5.0, 0.0)  # one piece: no estimate


def test_length_weighted_baseline_by_hand():
    # Group 0: rewards [1, 0], lengths [1, 3]: b = (1*1 + 3*0)/4 = 0.25. Group 1: [1, 1, 0], lengths [2, 2, 4]:
    # b = (2 + 2 + 0)/8 = 0.5.
    b = length_weighted_baseline(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]), torch.tensor([1, 3, 2, 2, 4]), torch.tensor([0, 0, 1, 1, 1]))
    assert b.tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.5])


def test_advantages_with_the_length_weighted_baseline():
    # Group [1, 0], lengths [1, 3]: b = 0.25; unbiased std of [1, 0] = 0.7071068;
    # A = 0.75/(0.7071068 + 1e-6) = 1.0606587, -0.25/0.7071078 = -0.3535529.
    inputs = advantage_inputs([1.0, 0.0], [0, 0], lengths=[1, 3])
    advantages, metrics = make().compute_advantages(inputs)
    assert advantages.tolist() == pytest.approx([1.0606587, -0.3535529], abs=1e-6)
    assert metrics["oblr_po/baseline_mean"] == pytest.approx(0.25)
    # Without std: 0.75 and -0.25.
    plain = get_objective("oblr_po")(ObjectiveConfig(name="oblr_po", normalize_adv_by_std=False), max_response_length=4)
    assert plain.compute_advantages(inputs)[0].tolist() == pytest.approx([0.75, -0.25])


def _micro_step(objective, weight, rows):
    """One micro-batch of 2 sequences of 2 tokens: token log-probs w_t * x_t, A = 1, backward into weight.grad."""
    x = torch.tensor(rows, dtype=torch.float64)
    logp = x * weight
    mask = torch.ones_like(logp.detach())
    inputs = LossInputs(logp=logp, old_logp=logp.detach(), advantages=torch.ones(len(rows), dtype=torch.float64), mask=mask)
    loss, _ = objective.compute_loss(inputs, step_scale_of(torch.ones(4, 1), 4))
    loss.backward()


def test_lr_scale_reads_the_micro_batch_gradients():
    # Parameter w (2-vector); token-mean over 4 step tokens with A = 1 at ratio 1: d loss/dw = -Σ x / 4.
    # Micro 1 rows x = (4, 0), (0, 0): g1 = (-1, 0). Micro 2 rows (4, 4), (0, 0): g2 = (-1, -1).
    # As in the first test: S = 3, |G|^2 = 5, multiplier 0.8, SNR 4.
    weight = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    objective = make()
    _micro_step(objective, weight, [[4.0, 0.0], [0.0, 0.0]])
    _micro_step(objective, weight, [[4.0, 4.0], [0.0, 0.0]])
    scale, metrics = objective.lr_scale({})
    assert scale == pytest.approx(0.8)
    assert metrics["oblr_po/snr"] == pytest.approx(4.0)
    assert metrics["oblr_po/micro_batches"] == 2.0
    # The next step starts afresh: one micro-batch gives no estimate, multiplier 1.
    weight.grad = None
    _micro_step(objective, weight, [[4.0, 0.0], [0.0, 0.0]])
    assert objective.lr_scale({}) == (1.0, {"oblr_po/snr_available": 0.0, "oblr_po/lr_scale": 1.0, "oblr_po/micro_batches": 1.0})


def test_floor_and_smoothing():
    # Orthogonal pieces: multiplier 0, floored at min_scale 0.1.
    weight = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    objective = make(min_scale=0.1, ema=0.5)
    _micro_step(objective, weight, [[4.0, 0.0], [0.0, 0.0]])
    _micro_step(objective, weight, [[0.0, 4.0], [0.0, 0.0]])
    assert objective.lr_scale({})[0] == pytest.approx(0.1)  # signal 0, noise 2
    # Next step (signal 4, noise 1) smoothed with ema 0.5: signal 2, noise 1.5 -> 2/3.5 = 0.5714286.
    weight.grad = None
    _micro_step(objective, weight, [[4.0, 0.0], [0.0, 0.0]])
    _micro_step(objective, weight, [[4.0, 4.0], [0.0, 0.0]])
    assert objective.lr_scale({})[0] == pytest.approx(0.5714286, abs=1e-7)
    assert objective.state_dict() == pytest.approx({"signal_ema": 2.0, "noise_ema": 1.5})


def test_autograd_parameters_finds_the_leaves():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    found = autograd_parameters((a * 2 + b.exp()).sum())
    assert {id(t) for t in found} == {id(a), id(b)}


def test_float32_gradients_are_not_aliased():
    # float32 parameters: param.grad.float() is param.grad itself; the pieces must still be (-1, 0) and (-1, -1).
    weight = torch.zeros(2, dtype=torch.float32, requires_grad=True)
    objective = make()
    for rows in ([[4.0, 0.0], [0.0, 0.0]], [[4.0, 4.0], [0.0, 0.0]]):
        x = torch.tensor(rows, dtype=torch.float32)
        logp = (x * weight).sum(-1, keepdim=True)
        inputs = LossInputs(logp=logp, old_logp=logp.detach(), advantages=torch.ones(2), mask=torch.ones(2, 1))
        loss, _ = objective.compute_loss(inputs, step_scale_of(torch.ones(4, 1), 4))
        loss.backward()
    assert objective.lr_scale({})[0] == pytest.approx(0.8)
