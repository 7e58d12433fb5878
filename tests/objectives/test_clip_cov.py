"""Clip-Cov: the step's per-token covariance, the random choice among the in-bounds tokens, the loss, by hand."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.clip_cov import clip_cov_selection, token_covariance
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import advantage_inputs, lengths_mask

# Two sequences of 3 and 2 tokens; rewards [4, 0] in one group, no std division: A = [2, -2].
MASK = lengths_mask([3, 2], 3)
BEHAVIOUR = torch.tensor([[-1.0, -4.0, -0.5], [-3.0, -0.5, 0.0]], dtype=torch.float64)
# Token means: A (2+2+2-2-2)/5 = 0.4; logp (-1-4-0.5-3-0.5)/5 = -1.8.
# cov = (A - 0.4)(logp + 1.8): 1.6*0.8 = 1.28, 1.6*(-2.2) = -3.52, 1.6*1.3 = 2.08; -2.4*(-1.2) = 2.88, -2.4*1.3 = -3.12.
COV = torch.tensor([[1.28, -3.52, 2.08], [2.88, -3.12, 0.0]], dtype=torch.float64)


def make(**knobs):
    return get_objective("clip_cov")(
        ObjectiveConfig(name="clip_cov", normalize_adv_by_std=False, **knobs), max_response_length=4
    )


def step_inputs():
    return advantage_inputs([4.0, 0.0], [0, 0], lengths=[3, 2], mask=MASK, behaviour_logp=BEHAVIOUR)


def test_token_covariance_by_hand():
    cov = token_covariance(torch.tensor([2.0, -2.0], dtype=torch.float64), BEHAVIOUR, MASK)
    torch.testing.assert_close(cov, COV)


def test_all_candidates_taken_when_fewer_than_the_count():
    # Bounds (1, 2.5): candidates 1.28 and 2.08; count int(0.4*5) = 2: both leave the gradient.
    weights = make(clip_cov={"clip_cov_ratio": 0.4, "clip_cov_ub": 2.5}).token_weights(step_inputs())
    assert weights.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


def test_default_count_draws_one_of_the_in_bounds_tokens():
    # Defaults (ratio 2e-4, bounds 1 and 5): count max(int(2e-4*5), 1) = 1 among 1.28, 2.08, 2.88.
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        weights = make().token_weights(step_inputs())
        removed = [(i, t) for i in range(2) for t in range(3) if MASK[i, t] > 0 and weights[i, t] == 0]
        assert len(removed) == 1
        seen.add(removed[0])
    assert seen == {(0, 0), (0, 2), (1, 0)}  # never a token outside (1, 5)


def test_selection_function_respects_both_bounds():
    selected = clip_cov_selection(COV, MASK, ratio=1.0, lower=1.5, upper=2.5)
    assert selected.tolist() == [[False, False, True], [False, False, False]]


def test_selected_tokens_contribute_no_loss_and_no_gradient():
    # Weights [[0,1,0],[1,1]] at ratio 1, token-mean over 5 tokens: loss -A*w: 0, -2, 0, 2, 2 -> 2/5 = 0.4;
    # gradient -A*w/5: 0, -0.4, 0, 0.4, 0.4.
    objective = make()
    logp = torch.full((2, 3), -1.0, dtype=torch.float64, requires_grad=True)
    inputs = LossInputs(
        logp=logp,
        old_logp=logp.detach().clone(),
        advantages=torch.tensor([2.0, -2.0], dtype=torch.float64),
        mask=MASK,
        token_weights=torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
    )
    loss, metrics = objective.compute_loss(inputs, step_scale_of(MASK, 4))
    (grad,) = torch.autograd.grad(loss, logp)
    assert float(loss.detach()) == pytest.approx(0.4)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.4, 0.0], [0.4, 0.4, 0.0]], dtype=torch.float64))
    assert metrics["clip_cov/selected_frac"] == pytest.approx(2 / 5)


def test_needs_the_rollout_log_probs_and_states_verl_defaults():
    with pytest.raises(ValueError, match="behaviour_logp"):
        make().token_weights(advantage_inputs([4.0, 0.0], [0, 0], lengths=[3, 2], mask=MASK))
    config = ObjectiveConfig(name="clip_cov").clip_cov
    assert (config.clip_cov_ratio, config.clip_cov_lb, config.clip_cov_ub) == (2e-4, 1.0, 5.0)
