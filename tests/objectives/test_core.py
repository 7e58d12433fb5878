"""Shared building blocks: ALGORITHMS.md §0 and the hand-computed numbers of §1.7."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpost.objectives.base import StepScale
from rlpost.objectives.core import (
    aggregate_loss,
    group_advantages,
    group_metrics,
    kl_penalty,
    masked_mean,
    policy_loss_per_token,
    policy_metrics,
    step_scale_of,
)
from tests.objectives.helpers import lengths_mask

MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "dr-grpo"]


# ---------------------------------------------------------------- group advantages (§1.7 tests 1-2)


def test_unbiased_std_advantages_match_hand_numbers():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    adv = group_advantages(rewards, torch.zeros(4, dtype=torch.long), eps=1e-6)
    expected = torch.tensor([1, -1, -1, 1], dtype=torch.float64) * 0.8660239
    torch.testing.assert_close(adv, expected, atol=1e-7, rtol=0)


def test_population_std_advantages_are_plus_minus_one():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    adv = group_advantages(rewards, torch.zeros(4, dtype=torch.long), std_unbiased=False, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def test_dr_grpo_advantages_are_centred_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    adv = group_advantages(rewards, torch.zeros(4, dtype=torch.long), normalize_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(
    value=st.floats(-1e6, 1e6, allow_nan=False),
    size=st.integers(1, 9),
    normalize=st.booleans(),
    unbiased=st.booleans(),
)
def test_all_equal_group_gives_exact_zero(value, size, normalize, unbiased):
    rewards = torch.full((size,), value, dtype=torch.float64)
    adv = group_advantages(rewards, torch.zeros(size, dtype=torch.long), normalize_by_std=normalize, std_unbiased=unbiased)
    assert torch.equal(adv, torch.zeros(size, dtype=torch.float64))


def test_singleton_groups_get_zero_and_are_counted():
    rewards = torch.tensor([3.0, 1.0, 0.0, 7.0], dtype=torch.float64)
    group_index = torch.tensor([5, 9, 9, 2])  # labels need not be contiguous
    adv = group_advantages(rewards, group_index, std_unbiased=False, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=torch.float64))
    assert not torch.isnan(adv).any()
    assert group_metrics(rewards, group_index)["groups/singletons"] == 2.0


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(2, 6), min_size=1, max_size=5), seed=st.integers(0, 10_000))
def test_unequal_groups_use_their_own_statistics(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    group_index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    perm = torch.randperm(group_index.numel(), generator=gen)  # members need not be contiguous
    group_index = group_index[perm]
    rewards = torch.randint(0, 3, (group_index.numel(),), generator=gen).to(torch.float64)
    adv = group_advantages(rewards, group_index, eps=1e-6)
    for g in range(len(sizes)):
        members = rewards[group_index == g]
        expected = (members - members.mean()) / (members.std(unbiased=True) + 1e-6)
        torch.testing.assert_close(adv[group_index == g], expected)


def test_group_metrics_solve_all_and_none():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    group_index = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = group_metrics(rewards, group_index, rewards > 0)
    assert metrics["groups/count"] == 3.0
    assert metrics["groups/zero_std_frac"] == pytest.approx(2 / 3)
    assert metrics["groups/solve_all"] == pytest.approx(1 / 3)
    assert metrics["groups/solve_none"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- clipped surrogate (§1.7 test 3, §2.6)


def _surrogate(adv: float, ratio: float, *, clip_low=0.2, clip_high=0.28, clip_c=3.0, clip_enabled=True):
    old_logp = torch.tensor([[-1.0]], dtype=torch.float64)
    logp = (old_logp + math.log(ratio)).requires_grad_(True)
    terms = policy_loss_per_token(
        logp, old_logp, torch.tensor([adv], dtype=torch.float64),
        clip_low=clip_low, clip_high=clip_high, clip_c=clip_c, clip_enabled=clip_enabled,
    )
    (grad,) = torch.autograd.grad(terms.loss.sum(), logp)
    return terms, float(terms.loss.detach()), float(grad)


def test_positive_advantage_clipped_above():
    terms, loss, grad = _surrogate(+1.0, 1.3)
    assert loss == pytest.approx(-1.28, abs=1e-12)
    assert grad == 0.0
    assert terms.clipped_upper.item() and not terms.clipped_lower.item()


def test_negative_advantage_clipped_below():
    terms, loss, grad = _surrogate(-1.0, 0.7)
    assert loss == pytest.approx(0.8, abs=1e-12)
    assert grad == 0.0
    assert terms.clipped_lower.item() and not terms.clipped_upper.item()


def test_dual_clip_bounds_negative_advantage_loss():
    terms, loss, grad = _surrogate(-1.0, 5.0)
    assert loss == pytest.approx(3.0, abs=1e-12)
    assert grad == 0.0
    assert terms.dual_clipped.item()


def test_ratio_one_gives_minus_advantage_and_minus_grad_logp():
    terms, loss, grad = _surrogate(+1.0, 1.0)
    assert loss == pytest.approx(-1.0, abs=1e-12)
    assert grad == pytest.approx(-1.0, abs=1e-12)  # d(-A·ρ)/dlogp = -A·ρ = -1
    assert not terms.clipped.item()


def test_clip_higher_asymmetry():
    _, loss, grad = _surrogate(+1.0, 1.25)
    assert loss == pytest.approx(-1.25, abs=1e-12)
    assert grad == pytest.approx(-1.25, abs=1e-12)  # not clipped: the gradient flows
    terms, loss, grad = _surrogate(-1.0, 0.75)
    assert loss == pytest.approx(0.8, abs=1e-12)
    assert grad == 0.0 and terms.clipped_lower.item()


def test_clip_disabled_is_plain_importance_weighting():
    terms, loss, grad = _surrogate(-1.0, 5.0, clip_enabled=False)
    assert loss == pytest.approx(5.0, abs=1e-12)
    assert grad == pytest.approx(5.0, abs=1e-12)
    assert not (terms.clipped | terms.dual_clipped).any()


def test_log_ratio_is_clamped_to_20():
    logp = torch.tensor([[100.0]], dtype=torch.float64)
    terms = policy_loss_per_token(logp, torch.zeros_like(logp), torch.tensor([1.0], dtype=torch.float64),
                                  clip_low=0.2, clip_high=0.2, clip_enabled=False)
    assert float(terms.ratio) == pytest.approx(math.exp(20.0))
    assert torch.isfinite(terms.loss).all()


def test_per_token_advantages_are_accepted():
    logp = torch.zeros(1, 2, dtype=torch.float64)
    terms = policy_loss_per_token(logp, logp, torch.tensor([[2.0, -3.0]], dtype=torch.float64), clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(terms.loss, torch.tensor([[-2.0, 3.0]], dtype=torch.float64))


# ---------------------------------------------------------------- KL estimators (§1.7 test 4)


def test_k3_hand_number():
    logp, ref = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[-1.5]], dtype=torch.float64)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(0.1065307, abs=1e-7)


def test_k1_k2_values():
    logp, ref = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[-1.5]], dtype=torch.float64)
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(0.5)
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(0.125)


def test_k3_plus_has_k3_value_and_k2_gradient():
    logp = torch.tensor([[-1.0, -0.2]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -0.9]], dtype=torch.float64)
    value = kl_penalty(logp, ref, "k3+")
    torch.testing.assert_close(value.detach(), kl_penalty(logp, ref, "k3").detach())
    (grad,) = torch.autograd.grad(value.sum(), logp)
    torch.testing.assert_close(grad, (logp - ref).detach())  # d/dlogp ½(logp-ref)² = logp - ref


def test_abs_estimator_is_the_absolute_log_ratio():
    # |(-1.0) - (-1.5)| = 0.5 and |(-1.5) - (-1.0)| = 0.5; gradient sign(logp - ref) = +1, -1.
    logp = torch.tensor([[-1.0, -1.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    value = kl_penalty(logp, ref, "abs")
    torch.testing.assert_close(value.detach(), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(value.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[1.0, -1.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    "estimator, value",
    [
        # logp - ref = -1.0 - (-1.5) = 0.5 and -0.2 - (-0.9) = 0.7
        ("k1+", [0.5, 0.7]),
        ("kl+", [0.5, 0.7]),
        ("abs+", [0.5, 0.7]),
        ("k2+", [0.125, 0.245]),  # ½·0.5², ½·0.7²
        ("mse+", [0.125, 0.245]),
        # e^-0.5 + 0.5 - 1 = 0.1065307, e^-0.7 + 0.7 - 1 = 0.1965853
        ("low_var_kl+", [0.1065307, 0.1965853]),
    ],
)
def test_straight_through_estimators_keep_their_value_with_the_k2_gradient(estimator, value):
    logp = torch.tensor([[-1.0, -0.2]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -0.9]], dtype=torch.float64)
    out = kl_penalty(logp, ref, estimator)
    torch.testing.assert_close(out.detach(), torch.tensor([value], dtype=torch.float64), atol=1e-7, rtol=0)
    (grad,) = torch.autograd.grad(out.sum(), logp)
    # k2's gradient d/dlogp ½(logp - ref)² = logp - ref = [0.5, 0.7]
    torch.testing.assert_close(grad, torch.tensor([[0.5, 0.7]], dtype=torch.float64))


@pytest.mark.parametrize("alias, value", [("kl", 0.5), ("mse", 0.125), ("low_var_kl", 0.1065307)])
def test_verl_estimator_names_are_accepted(alias, value):
    logp, ref = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[-1.5]], dtype=torch.float64)
    assert float(kl_penalty(logp, ref, alias)) == pytest.approx(value, abs=1e-7)


def test_ppo_kl_metric_uses_the_loss_clamp():
    # Token log-ratios logp - old = +30 and -1: ppo_kl = mean(-clamp(., ±20)) = (-20 + 1) / 2 = -9.5
    # (unclamped it would be (-30 + 1) / 2 = -14.5).
    old = torch.tensor([[-31.0, -1.0]], dtype=torch.float64)
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    terms = policy_loss_per_token(logp, old, torch.ones(1, dtype=torch.float64), clip_low=0.2, clip_high=0.2)
    metrics = policy_metrics(terms, logp, old, mask, step_scale_of(mask, 2))
    assert metrics["actor/ppo_kl"] == pytest.approx(-9.5)


def test_k3_guards_keep_extreme_values_finite():
    logp = torch.tensor([[-100.0]], dtype=torch.float64)
    assert float(kl_penalty(logp, torch.zeros_like(logp), "k3")) == 10.0


# ---------------------------------------------------------------- aggregation (§1.7 test 5)


def _two_sequences():
    mask = lengths_mask([2, 4], 4)
    loss = torch.tensor([[1.0, 1.0, 9.0, 9.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)  # padding holds junk
    return loss, mask, step_scale_of(mask, max_response_length=4)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 10 / 6),
        ("token-sum", 10.0),  # 1+1 + 2+2+2+2, no normaliser (verl token-sum)
        ("seq-mean-token-mean", 1.5),
        ("seq-mean-token-sum", 5.0),
        ("dr-grpo", 1.25),
        ("seq-mean-token-sum-norm", 2.5),
    ],
)
def test_aggregation_hand_numbers(mode, expected):
    loss, mask, scale = _two_sequences()
    assert float(aggregate_loss(loss, mask, mode, scale)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_empty_mask_gives_zero_not_nan(mode):
    loss = torch.tensor([[float("nan"), 1.0]], dtype=torch.float64)
    mask = torch.zeros(1, 2, dtype=torch.float64)
    value = aggregate_loss(loss, mask, mode, step_scale_of(mask, 2))
    assert float(value) == 0.0


def test_masked_mean_of_empty_row_is_zero():
    values = torch.ones(2, 3, dtype=torch.float64)
    mask = lengths_mask([0, 2], 3)
    torch.testing.assert_close(masked_mean(values, mask, dim=-1), torch.tensor([0.0, 1.0], dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 5), min_size=1, max_size=7),
    cuts=st.lists(st.integers(0, 7), max_size=4),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 10_000),
)
def test_micro_batch_split_invariance(lengths, cuts, mode, seed):
    """Summing each micro-batch's share (loss and gradients) equals the full-batch loss."""
    gen = torch.Generator().manual_seed(seed)
    n, width = len(lengths), 5
    mask = lengths_mask(lengths, width)
    weight = torch.randn(n, width, generator=gen, dtype=torch.float64)
    param = torch.randn(width, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = step_scale_of(mask, max_response_length=8)

    def loss_tok(rows: slice) -> torch.Tensor:
        return torch.tanh(weight[rows] * param) ** 2  # a nonlinear per-token loss of a shared parameter

    full = aggregate_loss(loss_tok(slice(0, n)), mask, mode, scale)
    (grad_full,) = torch.autograd.grad(full, param)

    bounds = sorted({0, n, *[c for c in cuts if c < n]})
    shares = [aggregate_loss(loss_tok(slice(a, b)), mask[a:b], mode, scale) for a, b in zip(bounds, bounds[1:])]
    split = torch.stack(shares).sum()
    (grad_split,) = torch.autograd.grad(split, param)

    torch.testing.assert_close(split, full, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad_split, grad_full, atol=1e-12, rtol=1e-12)
    assert torch.isfinite(full)


# ---------------------------------------------------------------- gradient check (§1.7 test 6)


def test_gradient_matches_closed_form_on_linear_softmax_model():
    """ratio = 1, token-mean, beta = 0: grad = -(1/N_tok) Σ A_i ∇logp[i,t]; for logits = x·W,
    ∇_W logp(y|x) = x ⊗ (onehot(y) - softmax(x·W))."""
    gen = torch.Generator().manual_seed(0)
    n, width, dim, vocab = 3, 4, 5, 6
    features = torch.randn(n, width, dim, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (n, width), generator=gen)
    mask = lengths_mask([4, 2, 3], width)
    advantages = torch.tensor([0.7, -1.1, 0.4], dtype=torch.float64)
    weights = torch.randn(dim, vocab, generator=gen, dtype=torch.float64, requires_grad=True)

    log_probs = torch.log_softmax(features @ weights, dim=-1)
    logp = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    terms = policy_loss_per_token(logp, logp.detach(), advantages, clip_low=0.2, clip_high=0.2)
    loss = aggregate_loss(terms.loss, mask, "token-mean", step_scale_of(mask, width))
    (grad,) = torch.autograd.grad(loss, weights)

    probs = log_probs.detach().exp()
    score = torch.nn.functional.one_hot(tokens, vocab).to(torch.float64) - probs  # [n, width, vocab]
    coeff = -(advantages[:, None] * mask) / mask.sum()  # [n, width]
    expected = torch.einsum("nt,ntd,ntv->dv", coeff, features, score)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=1e-10)


def test_step_scale_counts_only_non_empty_sequences():
    scale = step_scale_of(lengths_mask([0, 3, 1], 3), 7)
    assert scale == StepScale(tokens=4, sequences=2, max_response_length=7)
