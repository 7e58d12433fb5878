"""The SFT loss on hand-made log-probs (ALGORITHMS.md §8.7) and its micro-batch additivity."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs, StepScale
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.registry import get_objective
from rlpost.objectives.sft import SFTLoss
from tests.objectives.helpers import lengths_mask


def _inputs(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor | None = None) -> LossInputs:
    logp = logp.clone().requires_grad_(True)
    return LossInputs(
        logp=logp,
        old_logp=logp.detach(),
        advantages=advantages if advantages is not None else torch.zeros(logp.shape[0], dtype=logp.dtype),
        mask=mask,
    )


def test_hpt_worked_numbers():
    """§8.7: a 3-token demo with logp [-1, -2, -3] gives L_SFT = 2.0 (0.6 at coefficient 0.3);
    rollouts with A = [+0.5, -0.5], lengths 2 and 3, ratio 1, T_max = 4 give L_RL = 0.125."""
    demo = _inputs(torch.tensor([[-1.0, -2.0, -3.0, 0.0]], dtype=torch.float64), lengths_mask([3], 4))
    sft, metrics = SFTLoss().compute_loss(demo, step_scale_of(demo.mask, 4))
    assert float(sft.detach()) == pytest.approx(2.0) and 0.3 * float(sft.detach()) == pytest.approx(0.6)
    assert metrics == {"sft/loss": pytest.approx(2.0), "sft/nll": pytest.approx(2.0), "sft/tokens": 3.0, "sft/sequences": 1.0}
    # d L_SFT / d logp = -1/3 on each demo token, 0 on padding
    sft.backward()
    torch.testing.assert_close(demo.logp.grad, torch.tensor([[-1 / 3, -1 / 3, -1 / 3, 0.0]], dtype=torch.float64))

    config = ObjectiveConfig(name="dr_grpo", clip=False, loss_agg="seq-mean-token-sum-norm")
    objective = get_objective("dr_grpo")(config, max_response_length=4)
    rollouts = _inputs(torch.full((2, 4), -0.7, dtype=torch.float64), lengths_mask([2, 3], 4),
                       advantages=torch.tensor([0.5, -0.5], dtype=torch.float64))
    rl, _ = objective.compute_loss(rollouts, step_scale_of(rollouts.mask, 4))
    assert float(rl.detach()) == pytest.approx(0.125)
    # Dr.GRPO advantages on a c = 8 group (all correct) are all 0 (§8.7)
    from tests.objectives.helpers import advantage_inputs

    advantages, _ = objective.compute_advantages(advantage_inputs([1.0] * 8, [0] * 8))
    assert torch.equal(advantages, torch.zeros(8, dtype=advantages.dtype))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "dr-grpo"])
def test_micro_batch_shares_add_up_to_the_whole_batch_loss(mode):
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(5, 6, generator=gen, dtype=torch.float64)
    mask = lengths_mask([6, 2, 4, 1, 3], 6)
    loss_fn = SFTLoss(mode)
    scale = step_scale_of(mask, 6)
    whole, whole_metrics = loss_fn.compute_loss(_inputs(logp, mask), scale)
    parts = [loss_fn.compute_loss(_inputs(logp[rows], mask[rows]), scale) for rows in ([0, 1], [2], [3, 4])]
    assert sum(float(loss.detach()) for loss, _ in parts) == pytest.approx(float(whole.detach()))
    for key in whole_metrics:
        assert sum(m[key] for _, m in parts) == pytest.approx(whole_metrics[key])
    assert whole_metrics["sft/tokens"] == 16 and whole_metrics["sft/nll"] == pytest.approx(float(-(logp * mask).sum() / 16))


def test_empty_step_is_zero_not_nan():
    mask = torch.zeros(2, 3, dtype=torch.float64)
    loss, metrics = SFTLoss().compute_loss(_inputs(torch.zeros(2, 3, dtype=torch.float64), mask), StepScale(0, 0, 3))
    assert float(loss.detach()) == 0.0 and metrics["sft/tokens"] == 0.0
