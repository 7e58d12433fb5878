"""The fused per-token policy loss op and the objectives' surrogate through it: hand-computed values and grads."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.ops import fused_policy_loss, policy_loss_terms

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


# Hand-computed tokens: (ratio ρ, advantage A, loss, d loss/d logp, clip event), with old_logp = 0 and
# logp = log ρ, so d/dlogp = ρ·d/dρ. loss = max(-A·ρ, -A·clip(ρ, 1 - 0.2, 1 + 0.28)), bounded by -A·c
# (c = 3) when A < 0; the gradient is -A·ρ on the unclipped branch and 0 on a clipped one.
CLIPPED = [
    (1.5, 1.0, -1.28, 0.0, "upper"),  # -1.5 < -1.28 = -A·1.28: clipped above, no gradient
    (1.1, 1.0, -1.1, -1.1, None),  # 0.8 <= 1.1 <= 1.28: -A·ρ, gradient -A·ρ = -1.1
    (0.5, 1.0, -0.5, -0.5, None),  # -0.5 > -0.8: for A > 0 a low ratio keeps its gradient
    (0.5, -1.0, 0.8, 0.0, "lower"),  # 0.5 < 0.8 = -A·0.8: clipped below, no gradient
    (1.5, -1.0, 1.5, 1.5, None),  # 1.5 > 1.28 and < c·|A| = 3: unclipped, gradient -A·ρ = 1.5
    (4.0, -1.0, 3.0, 0.0, "dual"),  # 4 > 3 = -A·c: the dual clip bounds it, no gradient
    (4.0, -0.5, 1.5, 0.0, "dual"),  # -A·ρ = 2 > 1.5 = 0.5·3
    (2.0, 2.0, -2.56, 0.0, "upper"),  # -4 < -2·1.28 = -2.56
    (1.0, 1.0, -1.0, -1.0, None),  # ratio 1: -A, gradient -A
    (1.0, 0.0, 0.0, 0.0, None),  # A = 0: nothing
]
NO_DUAL_CLIP = [
    (4.0, -1.0, 4.0, 4.0, None),  # c = None: -A·ρ = 4 stays, gradient 4
    (0.5, -1.0, 0.8, 0.0, "lower"),
]
UNCLIPPED = [  # clip_enabled=False: -A·ρ everywhere, gradient -A·ρ
    (1.5, 1.0, -1.5, -1.5, None),
    (0.5, -1.0, 0.5, 0.5, None),
    (4.0, -1.0, 4.0, 4.0, None),
]
CLIP_SETTINGS = {"dual-clip-3": (CLIPPED, 3.0, True), "no-dual-clip": (NO_DUAL_CLIP, None, True), "off": (UNCLIPPED, None, False)}


def _surrogate(path: str, logp, advantages, clip_c, clip_enabled):
    clip = dict(clip_low=0.2, clip_high=0.28, clip_c=clip_c, clip_enabled=clip_enabled)
    old = torch.zeros_like(logp)
    if path == "op":
        return fused_policy_loss(logp, old, advantages, torch.ones_like(logp), **clip), None
    terms = policy_loss_terms(logp, old, advantages, fused=path == "terms-fused", **clip)
    return terms.loss, terms


@pytest.mark.parametrize("path", ["op", "terms-fused", "terms-plain"])
@pytest.mark.parametrize("setting", list(CLIP_SETTINGS))
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_surrogate_matches_hand_computed_values(path, setting, per_token_adv):
    """The op, and the objectives' surrogate through it or not, against the tables above (float64)."""
    cases, clip_c, clip_enabled = CLIP_SETTINGS[setting]
    ratio, adv, want_loss, want_grad, events = zip(*cases)
    if per_token_adv:  # one sequence, a per-token advantage [1, T]
        logp = torch.tensor([ratio], dtype=torch.float64).log().requires_grad_()
        advantages = torch.tensor([adv], dtype=torch.float64)
    else:  # one sequence per token, each with its own per-sequence advantage [N]
        logp = torch.tensor(ratio, dtype=torch.float64).log().unsqueeze(-1).requires_grad_()
        advantages = torch.tensor(adv, dtype=torch.float64)
    loss, terms = _surrogate(path, logp, advantages, clip_c, clip_enabled)
    loss.sum().backward()
    torch.testing.assert_close(loss.detach().flatten(), torch.tensor(want_loss, dtype=torch.float64))
    torch.testing.assert_close(logp.grad.flatten(), torch.tensor(want_grad, dtype=torch.float64))
    if terms is not None:
        for event, got in (("upper", terms.clipped_upper), ("lower", terms.clipped_lower), ("dual", terms.dual_clipped)):
            assert got.flatten().tolist() == [e == event for e in events], event
        torch.testing.assert_close(terms.ratio.detach().flatten(), torch.tensor(ratio, dtype=torch.float64))


def test_log_ratio_guard_hand_computed():
    """|logp - old| is clamped at 20 before exp: ρ = e^20 (e^-20), and no gradient beyond the clamp."""
    logp = torch.tensor([[25.0, -25.0, 19.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
    loss = fused_policy_loss(
        logp, torch.zeros_like(logp), adv, torch.ones(1, 3), clip_low=0.2, clip_high=0.28, clip_enabled=False
    )
    loss.sum().backward()
    # -A·ρ: -e^20 = -485165195.40979, -e^-20 = -2.0611536e-9, +e^19 = 178482300.96318; gradient -A·ρ
    # inside the clamp (e^19), 0 beyond it.
    want = torch.tensor([[-485165195.40979, -2.0611536224385579e-09, 178482300.96318]], dtype=torch.float64)
    torch.testing.assert_close(loss.detach(), want)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 178482300.96318]], dtype=torch.float64))


# KL terms at logp = -1, ref = -1.5 (d = logp - ref = 0.5), A = 0, coefficient 0.1; (value, gradient):
# k1 = d = 0.5, gradient 1; k2 = d²/2 = 0.125, gradient d = 0.5; k3 = e^-d + d - 1 = 0.10653066,
# gradient 1 - e^-d = 0.39346934; k3+ = k3's value with k2's gradient 0.5.
KL_HAND = {"k1": (0.5, 1.0), "k2": (0.125, 0.5), "k3": (0.10653066, 0.39346934), "k3+": (0.10653066, 0.5)}


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kl_term_hand_computed(estimator):
    logp = torch.tensor([[-1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    loss = fused_policy_loss(
        logp, logp.detach(), torch.zeros(1, dtype=torch.float64), torch.tensor([[1.0, 0.0]]), clip_low=0.2,
        clip_high=0.28, ref_logp=torch.full((1, 2), -1.5, dtype=torch.float64), kl_coef=0.1, kl_estimator=estimator,
    )
    loss.sum().backward()
    value, grad = KL_HAND[estimator]
    # the second token is masked out: 0, with no gradient
    torch.testing.assert_close(loss.detach(), torch.tensor([[0.1 * value, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(logp.grad, torch.tensor([[0.1 * grad, 0.0]], dtype=torch.float64))


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
