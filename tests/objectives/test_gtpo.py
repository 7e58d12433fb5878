"""GTPO (ALGORITHMS.md §5.6): conflict masks, δ weights, n_conf, entropy filter, both rule sets."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import sequence_token_means, step_scale_of
from rlpost.objectives.gtpo import conflict_counts, conflict_deltas, conflict_masks, end_aligned
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import advantage_inputs, lengths_mask

TOKENS = torch.tensor([[10, 20, 30], [10, 21, 30], [11, 20, 30], [10, 20, 31]])
REWARDS = [1.0, 0.0, 1.0, 0.0]
POSITIVE = torch.tensor([True, False, True, False])
NEGATIVE = ~POSITIVE


def _masks():
    return conflict_masks(TOKENS, torch.ones(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long), POSITIVE, NEGATIVE)


def test_conflict_masks_hand_table():
    masks = _masks()
    assert masks.forward.int().tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]]
    assert masks.backward.int().tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1], [0, 0, 0]]


def test_deltas_hand_table():
    mask = torch.ones(4, 3, dtype=torch.float64)
    product = conflict_deltas(_masks(), POSITIVE, NEGATIVE, mask, weight=2.0, combine="product")
    assert product.tolist() == [[4, 4, 4], [0, 1, 0], [1, 2, 2], [0, 0, 1]]
    maximum = conflict_deltas(_masks(), POSITIVE, NEGATIVE, mask, weight=2.0, combine="max")
    assert maximum.tolist() == [[2, 2, 2], [0, 1, 0], [1, 2, 2], [0, 0, 1]]


def test_conflict_counts_code_and_union():
    assert conflict_counts(_masks(), "code").tolist() == [3, 1, 2, 2]
    assert conflict_counts(_masks(), "union").tolist() == [3, 2, 2, 2]
    assert conflict_counts(_masks(), "none").tolist() == [1, 1, 1, 1]


def _objective(**gtpo):
    return get_objective("gtpo")(ObjectiveConfig(name="gtpo", gtpo=gtpo), max_response_length=3)


def _step(objective, entropies=(0.5, 0.5, 0.5, 0.5), tokens=TOKENS, rewards=REWARDS, lengths=(3, 3, 3, 3)):
    mask = lengths_mask(list(lengths), tokens.shape[1])
    adv_inputs = advantage_inputs(rewards, [0] * len(rewards), lengths=list(lengths), token_ids=tokens, mask=mask)
    advantages, metrics = objective.compute_advantages(adv_inputs)
    weights = objective.token_weights(adv_inputs)
    old_logp = -torch.rand(len(rewards), tokens.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inputs = LossInputs(
        logp=old_logp.clone().requires_grad_(True),
        old_logp=old_logp,
        advantages=advantages,
        mask=mask,
        entropy=torch.tensor(entropies, dtype=torch.float64).unsqueeze(-1).expand_as(mask).clone(),
        token_weights=weights,
    )
    return inputs, metrics


def _per_completion(objective, inputs):
    return sequence_token_means(objective.policy_terms(inputs).loss, inputs.mask).detach()


def test_faithful_rules_reproduce_the_code_total():
    objective = _objective(faithful=True)
    inputs, _ = _step(objective)
    per_completion = _per_completion(objective, inputs)
    torch.testing.assert_close(per_completion, torch.tensor([-0.6, 0.1833333, -0.375, 0.0916667], dtype=torch.float64), atol=1e-6, rtol=0)
    loss, _ = objective.compute_loss(inputs, step_scale_of(inputs.mask, 3))
    assert float(loss.detach()) == pytest.approx(-0.7, abs=1e-6)


def test_product_rule_with_true_union_count():
    objective = _objective(delta_combine="product", conflict_norm="union")
    inputs, _ = _step(objective)
    per_completion = _per_completion(objective, inputs)
    assert float(per_completion[1]) == pytest.approx(0.091667, abs=1e-6)
    assert float(per_completion.sum()) == pytest.approx(-0.791667, abs=1e-6)


def test_recommended_rules():
    """max rule: c1's δ = [2,2,2], so ℓ = [-0.3, 0.55/6, -0.375, 0.55/6]; seq-mean-token-mean averages them."""
    objective = _objective()
    inputs, _ = _step(objective)
    per_completion = _per_completion(objective, inputs)
    torch.testing.assert_close(per_completion, torch.tensor([-0.3, 0.55 / 6, -0.375, 0.55 / 6], dtype=torch.float64))
    loss, _ = objective.compute_loss(inputs, step_scale_of(inputs.mask, 3))
    assert float(loss.detach()) == pytest.approx((-0.3 + 0.55 / 6 - 0.375 + 0.55 / 6) / 4, abs=1e-12)


def test_entropy_filter_zeroes_a_high_entropy_completion():
    objective = _objective(faithful=True)
    inputs, _ = _step(objective, entropies=(0.8, 0.5, 0.5, 0.5))
    per_completion = _per_completion(objective, inputs)
    assert float(per_completion[0]) == 0.0
    loss, metrics = objective.compute_loss(inputs, step_scale_of(inputs.mask, 3))
    assert float(loss.detach()) == pytest.approx(-0.7 + 0.6, abs=1e-6)
    assert metrics["gtpo/entropy_filtered_frac"] == pytest.approx(0.25)


def test_faithful_gradient_is_the_weighted_score():
    """ratio = exp(logp - sg(logp)): d loss / d logp[i,t] = -(A'_i/|o_i|)·δ[i,t]/n_conf_i."""
    objective = _objective(faithful=True)
    inputs, _ = _step(objective)
    loss, _ = objective.compute_loss(inputs, step_scale_of(inputs.mask, 3))
    (grad,) = torch.autograd.grad(loss, inputs.logp)
    shaped = torch.tensor([0.45, -0.55, 0.45, -0.55], dtype=torch.float64)
    expected = -(shaped / 3).unsqueeze(-1) * inputs.token_weights
    torch.testing.assert_close(grad, expected)


def test_equal_rewards_give_no_conflicts_and_zero_loss():
    objective = _objective()
    inputs, metrics = _step(objective, rewards=[1.0, 1.0, 1.0, 1.0])
    assert torch.equal(inputs.token_weights, inputs.mask)
    loss, _ = objective.compute_loss(inputs, step_scale_of(inputs.mask, 3))
    assert float(loss.detach()) == 0.0
    assert metrics["gtpo/n_conf_max"] == 1.0


def test_backward_alignment_uses_each_sequence_end_and_ignores_padding():
    tokens = torch.tensor([[5, 7, 9, 0], [6, 9, 0, 0]])  # both end in 9, at different positions
    masks = conflict_masks(tokens, lengths_mask([3, 2], 4), torch.zeros(2, dtype=torch.long),
                           torch.tensor([True, False]), torch.tensor([False, True]))
    assert masks.backward.int().tolist() == [[0, 0, 1, 0], [0, 1, 0, 0]]
    assert masks.forward.int().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]  # padding id 0 never conflicts
    lengths = torch.tensor([3, 2])
    assert torch.equal(end_aligned(end_aligned(tokens, lengths), lengths)[:, :2], tokens[:, :2])


def test_groups_do_not_conflict_across_each_other():
    tokens = torch.tensor([[1, 2], [1, 2]])
    masks = conflict_masks(tokens, torch.ones(2, 2, dtype=torch.float64), torch.tensor([0, 1]),
                           torch.tensor([True, False]), torch.tensor([False, True]))
    assert not masks.forward.any() and not masks.backward.any()


def test_gtpo_refuses_a_reference_model_and_asks_for_entropy():
    with pytest.raises(ValueError, match="reference"):
        get_objective("gtpo")(ObjectiveConfig(name="gtpo", kl_coef=0.1), 3)
    objective = _objective()
    assert objective.needs_entropy and objective.needs_token_ids and not objective.needs_reference
