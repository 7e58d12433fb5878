"""The fused per-token policy loss op: equal to the objectives library's functions, values and grads."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.objectives.core import kl_penalty, policy_loss_per_token
from rlpost.ops import fused_policy_loss

ESTIMATORS = ["k1", "k2", "k3", "k3+"]


def _inputs(n=6, t=11, seed=0, per_token_adv=False):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=gen) * 3
    # log-ratios spread over both clip bounds, plus exact ties (ratio == 1) and the ±20 guard
    old = logp + torch.randn(n, t, generator=gen) * 0.4
    old[0, :3] = logp[0, :3]
    old[1, 0] = logp[1, 0] + 25.0
    old[1, 1] = logp[1, 1] - 25.0
    adv = torch.randn(n, t, generator=gen) if per_token_adv else torch.randn(n, generator=gen)
    adv[2 if not per_token_adv else (2, 0)] = 0.0
    ref = logp + torch.randn(n, t, generator=gen) * 0.8
    ref[3, 0] = logp[3, 0] - 30.0  # k3 clamp region
    mask = (torch.rand(n, t, generator=gen) > 0.25).float()
    return logp, old, adv, ref, mask


def _eager(logp, old, adv, ref, mask, *, clip_c, clip_enabled, kl_coef, estimator):
    clip = dict(clip_low=0.2, clip_high=0.28, clip_c=clip_c, clip_enabled=clip_enabled)
    loss = policy_loss_per_token(logp, old, adv, **clip).loss
    if kl_coef:
        loss = loss + kl_coef * kl_penalty(logp, ref, estimator)
    return torch.where(mask.bool(), loss, torch.zeros(()))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("clip_c,clip_enabled", [(None, True), (3.0, True), (None, False)])
@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_matches_objectives_functions(estimator, clip_c, clip_enabled, kl_coef, per_token_adv):
    logp, old, adv, ref, mask = _inputs(per_token_adv=per_token_adv)
    upstream = torch.randn(logp.shape)
    x = logp.clone().requires_grad_()
    got = fused_policy_loss(
        x, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=clip_c, clip_enabled=clip_enabled,
        ref_logp=ref, kl_coef=kl_coef, kl_estimator=estimator,
    )
    (got * upstream).sum().backward()
    y = logp.clone().requires_grad_()
    want = _eager(
        y, old, adv, ref, mask, clip_c=clip_c, clip_enabled=clip_enabled, kl_coef=kl_coef, estimator=estimator
    )
    (want * upstream).sum().backward()
    torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(x.grad, y.grad)


def test_hand_computed_values():
    """ALGORITHMS §1.7 #3 (eps_low 0.2, eps_high 0.28, c = 3) and #4 (k3 = 0.1065307)."""
    ratios = torch.tensor([[1.3, 0.7, 5.0, 1.0]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    logp = ratios.log().requires_grad_()
    loss = fused_policy_loss(logp, torch.zeros(1, 4), adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.28, clip_c=3.0)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8, 3.0, -1.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0, -1.0]]))  # only the unclipped token

    kl_only = fused_policy_loss(
        torch.tensor([[-1.0]]), torch.tensor([[-1.0]]), torch.zeros(1), torch.ones(1, 1), clip_low=0.2, clip_high=0.2,
        ref_logp=torch.tensor([[-1.5]]), kl_coef=1.0, kl_estimator="k3",
    )
    assert math.isclose(float(kl_only), math.exp(-0.5) + 0.5 - 1.0, rel_tol=1e-6)


def test_padding_never_leaks():
    """NaN/inf in masked-out positions give 0 loss and 0 gradient there, finite values elsewhere."""
    logp, old, adv, ref, mask = _inputs()
    mask[:, -1] = 0
    logp[:, -1], old[:, -1], ref[:, -1] = float("nan"), float("inf"), float("-inf")
    x = logp.clone().requires_grad_()
    loss = fused_policy_loss(x, old, adv, mask, clip_low=0.2, clip_high=0.2, ref_logp=ref, kl_coef=0.1)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad[:, :-1]).all()
    assert (loss[:, -1] == 0).all()


def test_kl_coef_without_reference_raises():
    logp, old, adv, _, mask = _inputs()
    with pytest.raises(ValueError):
        fused_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, kl_coef=0.1)
    with pytest.raises(ValueError):
        fused_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, kl_estimator="k9")


def test_opcheck():
    logp, old, adv, ref, mask = _inputs(n=4, t=3)
    args = (logp.requires_grad_(), old, adv, mask, ref, 0.2, 0.28, 3.0, True, 0.1, "k3")
    torch.library.opcheck(torch.ops.rlpost.policy_loss.default, args)


def test_under_a_dispatch_mode_and_compiled():
    """The CPU backward works under a TorchDispatchMode (flop counter) and through torch.compile."""
    from torch.utils.flop_counter import FlopCounterMode

    logp, old, adv, ref, mask = _inputs()

    def loss(x):
        options = dict(clip_low=0.2, clip_high=0.28, clip_c=3.0, ref_logp=ref, kl_coef=0.1)
        return fused_policy_loss(x, old, adv, mask, **options).sum()

    eager = logp.clone().requires_grad_()
    loss(eager).backward()
    with FlopCounterMode(display=False):
        counted = logp.clone().requires_grad_()
        loss(counted).backward()
    compiled = logp.clone().requires_grad_()
    torch.compile(loss, fullgraph=True)(compiled).backward()
    torch.testing.assert_close(counted.grad, eager.grad)
    torch.testing.assert_close(compiled.grad, eager.grad)
