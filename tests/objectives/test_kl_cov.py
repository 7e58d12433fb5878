"""KL-Cov: top-k covariance tokens get |log ratio| penalty, no PPO clip, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.kl_cov import kl_cov_selection
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import advantage_inputs, lengths_mask

# The Clip-Cov batch (tests/objectives/test_clip_cov.py): rewards [4, 0], A = [2, -2] without std division,
# covariances [[1.28, -3.52, 2.08], [2.88, -3.12, pad]].
MASK = lengths_mask([3, 2], 3)
BEHAVIOUR = torch.tensor([[-1.0, -4.0, -0.5], [-3.0, -0.5, 0.0]], dtype=torch.float64)
COV = torch.tensor([[1.28, -3.52, 2.08], [2.88, -3.12, 99.0]], dtype=torch.float64)  # 99 on padding: never picked


def make(**knobs):
    return get_objective("kl_cov")(
        ObjectiveConfig(name="kl_cov", normalize_adv_by_std=False, **knobs), max_response_length=4
    )


def test_top_k_by_covariance():
    # Default ratio 2e-4: max(int(2e-4*5), 1) = 1 token, the largest 2.88; ratio 0.4: int(2.0) = 2 tokens, 2.88 and 2.08.
    assert kl_cov_selection(COV, MASK, 2e-4).tolist() == [[False, False, False], [True, False, False]]
    assert kl_cov_selection(COV, MASK, 0.4).tolist() == [[False, False, True], [True, False, False]]


def test_token_weights_from_the_step():
    inputs = advantage_inputs([4.0, 0.0], [0, 0], lengths=[3, 2], mask=MASK, behaviour_logp=BEHAVIOUR)
    weights = make(kl_cov={"kl_cov_ratio": 0.4}).token_weights(inputs)
    assert weights.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def test_penalty_on_selected_tokens_and_no_clip():
    # One sequence, A = 1, ratios 2 (selected) and 0.5; coefficient 1.
    # loss: -1*2 + |ln 2| = -1.306853 and -0.5: token-mean (-1.806853)/2 = -0.903426.
    # gradient: (-A*ratio + sign(log ratio))/2 = (-2 + 1)/2 = -0.5 (PPO would clip it to 0) and -0.5/2 = -0.25.
    objective = make()
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.tensor([[math.log(2.0), math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    mask = lengths_mask([2], 2)
    inputs = LossInputs(
        logp=logp,
        old_logp=old,
        advantages=torch.tensor([1.0], dtype=torch.float64),
        mask=mask,
        token_weights=torch.tensor([[1.0, 0.0]]),
    )
    loss, metrics = objective.compute_loss(inputs, step_scale_of(mask, 4))
    (grad,) = torch.autograd.grad(loss, logp)
    assert float(loss.detach()) == pytest.approx(-0.903426, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.25]], dtype=torch.float64))
    assert metrics["kl_cov/selected_frac"] == pytest.approx(0.5)
    assert metrics["kl_cov/abs_kl"] == pytest.approx(math.log(2.0) / 2)  # 0.346574
    assert metrics["actor/pg_clipfrac"] == 0.0


def test_verl_defaults():
    config = ObjectiveConfig(name="kl_cov")
    assert (config.kl_cov.kl_cov_ratio, config.kl_cov.ppo_kl_coef) == (2e-4, 1.0)
    assert config.clip is False
