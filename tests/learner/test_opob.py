"""VCPO's OPOB path in the learner (ALGORITHMS.md §6.3) against a by-hand computation on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from rlpost.learner.batch import build_train_batch, prepare_update
from tests.blending.helpers import (
    PAD,
    assert_gradients_close,
    capture_gradients,
    completion_logps,
    fresh_model,
    gradients_of,
    make_config,
    make_learner,
    scored_groups,
)

BEHAVIOUR_LOGP = -1.0  # what `scored_groups` reports as the engine's log-prob of every token


def opob_gradient_by_hand(model, groups, *, use_is_weights: bool) -> dict[str, torch.Tensor]:
    """Σ_g Σ_i ((R_i - b_g)/σ_g)·g_i with g_i the gradient of trajectory i's unclipped seq-mean-token-mean
    loss at advantage 1, and b_g = Σ W_i R_i / Σ W_i, W_i = (|o_i|·‖g_i‖)²·w_i², w_i = exp(Σ_t logp - behaviour)."""
    sequences = sum(group.size for group in groups)
    total: dict[str, torch.Tensor] = {}
    for group in groups:
        rewards = torch.tensor(group.rewards, dtype=torch.float64)
        gradients, weights = [], []
        for completion in group.completions:
            logp, _ = completion_logps(model, group.prompt.token_ids, completion.token_ids)
            loss = -torch.exp(logp - logp.detach()).sum() / logp.numel() / sequences
            grads = gradients_of(model, loss)
            sq_norm = sum(float(g.double().pow(2).sum()) for g in grads.values()) * logp.numel() ** 2
            log_w = float((logp.detach().double() - BEHAVIOUR_LOGP).sum()) if use_is_weights else 0.0
            gradients.append(grads)
            weights.append(sq_norm * math.exp(2 * log_w))
        weights = torch.tensor(weights, dtype=torch.float64)
        baseline = float((weights * rewards).sum() / weights.sum())
        sigma = float(rewards.std(unbiased=False))
        for reward, grads in zip(rewards.tolist(), gradients, strict=True):
            coefficient = (reward - baseline) / (sigma if sigma > 1e-8 else 1.0)
            for name, g in grads.items():
                total[name] = total.get(name, torch.zeros_like(g)) + coefficient * g
    return total


@pytest.mark.parametrize("use_is_weights", [True, False])
def test_opob_update_matches_the_hand_computation(tiny_model_path, use_is_weights):
    # Unequal groups, one with all-equal rewards (its coefficients are all 0).
    groups = scored_groups([[True, False, True, False], [True, True, False, False, True], [False, False, False]], seed=3)
    config = make_config(
        tiny_model_path,
        objective={"name": "vcpo", "vcpo": {"opob": True, "is_threshold": None, "opob_use_is_weights": use_is_weights}},
        micro_batch_size=2,
    )
    learner = make_learner(config)
    expected = opob_gradient_by_hand(fresh_model(tiny_model_path), groups, use_is_weights=use_is_weights)
    captured = capture_gradients(learner)
    batch = build_train_batch(groups, PAD)
    metrics = learner.train_step(batch, prepare_update(learner.objective, batch))
    assert len(captured) == 1
    assert_gradients_close(captured[0], expected, rtol=1e-4, atol=1e-7)
    assert metrics["vcpo/opob_skipped"] == 0.0
    assert "vcpo/opob_baseline_mean" in metrics and math.isfinite(metrics["actor/loss"])


def test_opob_is_off_by_default_and_gives_grpo_gradients(tiny_model_path):
    config = make_config(tiny_model_path, objective={"name": "vcpo"})
    assert not make_learner(config).objective.per_trajectory_baseline


def test_opob_refuses_a_kl_or_entropy_term(tiny_model_path):
    config = make_config(tiny_model_path, objective={"name": "vcpo", "kl_coef": 0.1, "vcpo": {"opob": True}})
    with pytest.raises(ValueError, match="objective.vcpo.opob needs objective.kl_coef = 0"):
        make_learner(config)
