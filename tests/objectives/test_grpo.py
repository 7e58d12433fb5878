"""GRPO objective (ALGORITHMS.md §1): advantages, loss terms, metrics, micro-batch additivity."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import kl_penalty, step_scale_of
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import advantage_inputs, lengths_mask


def make(**knobs):
    config = ObjectiveConfig(name="grpo", **knobs)
    return get_objective("grpo")(config, max_response_length=4)


def test_advantages_and_step_metrics():
    objective = make()
    inputs = advantage_inputs([1, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1], lengths=[2, 3, 4, 4, 1, 2],
                              truncated=[False, False, True, True, False, False])
    adv, metrics = objective.compute_advantages(inputs)
    torch.testing.assert_close(adv[:4], torch.tensor([1, -1, -1, 1], dtype=torch.float64) * 0.8660239, atol=1e-7, rtol=0)
    assert torch.equal(adv[4:], torch.zeros(2, dtype=torch.float64))
    assert metrics["groups/zero_std_frac"] == 0.5
    assert metrics["groups/solve_all"] == 0.5
    assert metrics["response_length/clip_ratio"] == pytest.approx(2 / 6)
    assert metrics["adv/mean"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["reward/mean"] == pytest.approx(4 / 6)


def _loss_inputs(seed=0, lengths=(3, 1, 0, 4), with_ref=True, with_entropy=True):
    gen = torch.Generator().manual_seed(seed)
    mask = lengths_mask(list(lengths), 4)
    n = mask.shape[0]
    logp = (-torch.rand(n, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    old_logp = logp.detach() + 0.3 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return LossInputs(
        logp=logp,
        old_logp=old_logp,
        advantages=torch.randn(n, generator=gen, dtype=torch.float64),
        mask=mask,
        ref_logp=old_logp - 0.2 if with_ref else None,
        entropy=torch.rand(n, 4, generator=gen, dtype=torch.float64) if with_entropy else None,
    )


def test_kl_and_entropy_terms_are_added_with_the_same_aggregation():
    inputs = _loss_inputs()
    scale = step_scale_of(inputs.mask, 4)
    plain, _ = make().compute_loss(inputs, scale)
    objective = make(kl_coef=0.04, entropy_coef=0.01, loss_agg="seq-mean-token-mean")
    assert objective.needs_reference and objective.needs_entropy
    total, metrics = objective.compute_loss(inputs, scale)
    base, _ = make(loss_agg="seq-mean-token-mean").compute_loss(inputs, scale)

    def seq_mean(values):
        per_row = (values * inputs.mask).sum(-1) / inputs.mask.sum(-1).clamp(min=1)
        return per_row.sum() / scale.sequences

    kl = seq_mean(kl_penalty(inputs.logp, inputs.ref_logp, "k3")).detach()
    entropy = seq_mean(inputs.entropy)
    torch.testing.assert_close(total.detach(), base.detach() + 0.04 * kl - 0.01 * entropy)
    assert metrics["actor/kl_loss"] == pytest.approx(float(kl))
    assert not torch.equal(plain, total)


def test_missing_reference_is_an_error():
    inputs = _loss_inputs(with_ref=False)
    with pytest.raises(ValueError, match="ref_logp"):
        make(kl_coef=0.1).compute_loss(inputs, step_scale_of(inputs.mask, 4))


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "dr-grpo"])
def test_loss_gradients_and_metrics_are_additive_over_micro_batches(loss_agg):
    objective = make(kl_coef=0.05, entropy_coef=0.01, clip_c=3.0, loss_agg=loss_agg)
    inputs = _loss_inputs(seed=3)
    scale = step_scale_of(inputs.mask, 4)
    full_loss, full_metrics = objective.compute_loss(inputs, scale)
    (full_grad,) = torch.autograd.grad(full_loss, inputs.logp)

    split_loss, split_metrics = 0.0, {}
    for rows in (slice(0, 1), slice(1, 4)):
        part = LossInputs(**{k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in vars(inputs).items()})
        loss, metrics = objective.compute_loss(part, scale)
        split_loss = split_loss + loss
        for key, value in metrics.items():
            split_metrics[key] = split_metrics.get(key, 0.0) + value
    (split_grad,) = torch.autograd.grad(split_loss, inputs.logp)

    torch.testing.assert_close(split_loss, full_loss)
    torch.testing.assert_close(split_grad, full_grad)
    assert split_metrics.keys() == full_metrics.keys()
    for key in full_metrics:
        assert split_metrics[key] == pytest.approx(full_metrics[key], abs=1e-12), key


def test_clip_fraction_metrics_count_tokens_of_the_step():
    objective = make(clip_high=0.28, clip_c=3.0)
    old = torch.zeros(1, 4, dtype=torch.float64)
    ratios = torch.tensor([[1.3, 1.0, 5.0, 0.7]], dtype=torch.float64)
    inputs = LossInputs(logp=ratios.log(), old_logp=old, advantages=torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64),
                        mask=torch.ones(1, 4, dtype=torch.float64))
    _, metrics = objective.compute_loss(inputs, step_scale_of(inputs.mask, 4))
    assert metrics["actor/pg_clipfrac"] == pytest.approx(2 / 4)  # 1.3 above, 0.7 below
    assert metrics["actor/pg_clipfrac_high"] == pytest.approx(1 / 4)
    assert metrics["actor/pg_clipfrac_low"] == pytest.approx(1 / 4)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(1 / 4)  # dual clip at ratio 5
