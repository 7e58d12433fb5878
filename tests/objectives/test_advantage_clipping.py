"""The reward normalisation / clipping and advantage clipping every objective shares, and the entropy
bonus, by hand: the functions, the knobs' defaults, and the one place they are applied (prepare_update)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from rlpost.config.objective import ObjectiveConfig
from rlpost.learner.batch import TrainBatch, prepare_update
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import clip_advantages, condition_rewards, step_scale_of
from rlpost.objectives.registry import get_objective
from tests.objectives.helpers import lengths_mask

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # mean 0.5, population std 0.5


def test_batch_normalisation():
    # (r - 0.5)/0.5 = [1, -1, -1, 1]; the logged reward stays the raw one (mean 0.5, std 0.5).
    rewards, metrics = condition_rewards(REWARDS, "batch")
    torch.testing.assert_close(rewards, torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    assert metrics == pytest.approx(
        {"reward/mean": 0.5, "reward/std": 0.5, "reward_norm/mean": 0.5, "reward_norm/std": 0.5}
    )


def test_batch_std_scales_only():
    # r/0.5 = [2, 0, 0, 2]: 0/1 rewards keep their sign.
    rewards, _ = condition_rewards(REWARDS, "batch_std")
    torch.testing.assert_close(rewards, torch.tensor([2.0, 0.0, 0.0, 2.0], dtype=torch.float64))


def test_constant_batch():
    constant = torch.tensor([2.0, 2.0, 2.0])
    assert torch.equal(condition_rewards(constant, "batch")[0], torch.zeros(3))
    assert torch.equal(condition_rewards(constant, "batch_std")[0], constant)


def test_reward_clip_alone_and_after_normalisation():
    # [3, -1, 0, 2] clipped to ±1.5: [1.5, -1, 0, 1.5], 2 of 4 clipped.
    rewards, metrics = condition_rewards(torch.tensor([3.0, -1.0, 0.0, 2.0]), clip=1.5)
    assert rewards.tolist() == [1.5, -1.0, 0.0, 1.5] and metrics["reward_clip/frac"] == 0.5
    # normalised [1, -1, -1, 1] clipped to ±0.9: all 4 clipped.
    rewards, metrics = condition_rewards(REWARDS, "batch", clip=0.9)
    torch.testing.assert_close(rewards, torch.tensor([0.9, -0.9, -0.9, 0.9], dtype=torch.float64))
    assert metrics["reward_clip/frac"] == 1.0


def test_off_by_default_is_the_identity():
    rewards, metrics = condition_rewards(REWARDS)
    assert rewards is REWARDS and metrics == {}
    advantages, metrics = clip_advantages(REWARDS, None)
    assert advantages is REWARDS and metrics == {}
    config = ObjectiveConfig()
    assert (config.reward_normalization, config.reward_clip, config.advantage_clip) == ("none", None, None)


def test_advantage_clip_per_sequence_and_per_token():
    # [0.5, -3, 2] to ±1: [0.5, -1, 1], 2 of 3 sequences clipped.
    advantages, metrics = clip_advantages(torch.tensor([0.5, -3.0, 2.0]), 1.0)
    assert advantages.tolist() == [0.5, -1.0, 1.0] and metrics["adv_clip/frac"] == pytest.approx(2 / 3)
    # Per token, padding (9.0) not counted: 2 of the 3 valid tokens clipped.
    advantages, metrics = clip_advantages(torch.tensor([[0.5, 3.0], [-2.0, 9.0]]), 1.0, lengths_mask([2, 1], 2))
    assert advantages.tolist() == [[0.5, 1.0], [-1.0, 1.0]] and metrics["adv_clip/frac"] == pytest.approx(2 / 3)


def test_bounds_must_be_positive():
    with pytest.raises(ValidationError, match="advantage_clip"):
        ObjectiveConfig(advantage_clip=0.0)
    with pytest.raises(ValidationError, match="reward_clip"):
        ObjectiveConfig(reward_clip=-1.0)
    with pytest.raises(ValidationError, match="reward_normalization"):
        ObjectiveConfig(reward_normalization="running")


def batch_of(rewards: list[float]) -> TrainBatch:
    n = len(rewards)
    return TrainBatch(
        input_ids=torch.ones(n, 2, dtype=torch.long),
        attention_mask=torch.ones(n, 2, dtype=torch.long),
        response_index=torch.ones(n, 1, dtype=torch.long),
        response_mask=torch.ones(n, 1),
        response_ids=torch.ones(n, 1, dtype=torch.long),
        behaviour_logp=torch.full((n, 1), -1.0),
        group_index=torch.zeros(n, dtype=torch.long),
        rewards=torch.tensor(rewards),
        correct=torch.tensor([r > 0 for r in rewards]),
        truncated=torch.zeros(n, dtype=torch.bool),
        policy_version=torch.zeros(n, dtype=torch.long),
        reward_components={},
    )


def test_prepare_update_applies_the_switches_to_any_objective():
    # RLOO on one group of 4: A = 4/3 (r - mean). Raw [1, 0, 0, 1]: ±(4/3)(0.5) = ±2/3.
    rloo = get_objective("rloo")
    targets = prepare_update(rloo(ObjectiveConfig(name="rloo"), 4), batch_of([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(targets.advantages, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # Batch-normalised rewards [1, -1, -1, 1]: ±(4/3)(1) = ±4/3; clipped to ±1, every sequence clipped.
    config = ObjectiveConfig(name="rloo", reward_normalization="batch", advantage_clip=1.0)
    targets = prepare_update(rloo(config, 4), batch_of([1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(targets.advantages, torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert targets.metrics["adv_clip/frac"] == 1.0
    assert targets.metrics["adv/max"] == pytest.approx(4 / 3)  # the estimator's, before the clip
    assert targets.metrics["reward/mean"] == pytest.approx(0.5)  # the task's reward, not the normalised one
    assert targets.metrics["reward_norm/std"] == pytest.approx(0.5)


def test_entropy_bonus_is_subtracted_with_the_loss_aggregation():
    # A = 0 (no policy-gradient term), entropies 0.5, 1.5 | 2.0 on 3 valid tokens, token-mean:
    # loss = -0.1 * (0.5 + 1.5 + 2.0)/3 = -0.133333; actor/entropy = 4/3.
    objective = get_objective("grpo")(ObjectiveConfig(entropy_coef=0.1), 4)
    assert objective.needs_entropy and not get_objective("grpo")(ObjectiveConfig(), 4).needs_entropy
    mask = lengths_mask([2, 1], 2)
    logp = torch.full((2, 2), -1.0, dtype=torch.float64, requires_grad=True)
    inputs = LossInputs(
        logp=logp,
        old_logp=logp.detach().clone(),
        advantages=torch.zeros(2, dtype=torch.float64),
        mask=mask,
        entropy=torch.tensor([[0.5, 1.5], [2.0, 7.0]], dtype=torch.float64),
    )
    loss, metrics = objective.compute_loss(inputs, step_scale_of(mask, 4))
    assert float(loss.detach()) == pytest.approx(-0.4 / 3)
    assert metrics["actor/entropy"] == pytest.approx(4 / 3)
