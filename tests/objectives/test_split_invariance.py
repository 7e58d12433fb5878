"""Every objective: summing micro-batch losses, gradients and metrics reproduces the full step."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.registry import get_objective, objective_names
from tests.objectives.helpers import lengths_mask

VARIANTS = [(name, {}) for name in objective_names()] + [
    ("gtpo", {"gtpo": {"faithful": True}}),
    ("grpo", {"kl_coef": 0.05, "entropy_coef": 0.01, "loss_agg": "seq-mean-token-sum-norm"}),
]


def _inputs(seed: int) -> LossInputs:
    gen = torch.Generator().manual_seed(seed)
    mask = lengths_mask([3, 0, 4, 1, 2], 4)  # an empty row included
    n = mask.shape[0]
    old_logp = -torch.rand(n, 4, generator=gen, dtype=torch.float64)
    return LossInputs(
        logp=(old_logp + 0.2 * torch.randn(n, 4, generator=gen, dtype=torch.float64)).requires_grad_(True),
        old_logp=old_logp,
        advantages=torch.randn(n, generator=gen, dtype=torch.float64),
        mask=mask,
        ref_logp=old_logp - 0.1,
        entropy=torch.rand(n, 4, generator=gen, dtype=torch.float64),
        behaviour_logp=old_logp + 0.3 * torch.randn(n, 4, generator=gen, dtype=torch.float64),
        token_weights=torch.rand(n, 4, generator=gen, dtype=torch.float64),
    )


def _rows(inputs: LossInputs, rows: slice) -> LossInputs:
    return LossInputs(**{k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in vars(inputs).items()})


@pytest.mark.parametrize("name, knobs", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_split_equals_full(name, knobs):
    objective = get_objective(name)(ObjectiveConfig(name=name, **knobs), max_response_length=6)
    inputs = _inputs(seed=len(name))
    scale = step_scale_of(inputs.mask, 6)
    full_loss, full_metrics = objective.compute_loss(inputs, scale)
    (full_grad,) = torch.autograd.grad(full_loss, inputs.logp)

    split_loss, split_metrics = torch.zeros((), dtype=torch.float64), {}
    for rows in (slice(0, 2), slice(2, 3), slice(3, 5)):
        loss, metrics = objective.compute_loss(_rows(inputs, rows), scale)
        split_loss = split_loss + loss
        for key, value in metrics.items():
            split_metrics[key] = split_metrics.get(key, 0.0) + value
    (split_grad,) = torch.autograd.grad(split_loss, inputs.logp)

    assert torch.isfinite(full_loss) and torch.isfinite(full_grad).all()
    torch.testing.assert_close(split_loss, full_loss, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(split_grad, full_grad, atol=1e-12, rtol=1e-12)
    assert split_metrics.keys() == full_metrics.keys()
    for key, value in full_metrics.items():
        assert split_metrics[key] == pytest.approx(value, abs=1e-12), key
