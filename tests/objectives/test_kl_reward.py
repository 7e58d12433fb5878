"""KL in the reward (objective.kl_in_reward): the per-token k1 penalty, PPO's controllers, and the learner
applying both. Numbers computed by hand."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.schema import RLPostConfig
from rlpost.objectives.kl_reward import (
    KLController,
    k1_kl,
    penalized_advantages,
    reward_to_go,
    sequence_mean_sums,
)

# Two sequences: 3 valid tokens, then 2 valid tokens and a pad.
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
REF = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_k1_is_old_minus_reference_on_valid_tokens():
    # row 0: -1+1.5, -2+1, -0.5+0.5; row 1: -1+2, 0, pad (would be 3) -> 0
    assert k1_kl(OLD, REF, MASK).tolist() == [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]


def test_reward_to_go_sums_the_penalty_from_each_token_to_the_end():
    kl = k1_kl(OLD, REF, MASK)
    # row 0: 0.5-1+0, -1+0, 0; row 1: 1+0, 0, pad 0
    assert reward_to_go(kl, MASK).tolist() == [[-0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]


def test_penalized_advantages_subtract_beta_times_the_reward_to_go():
    kl = k1_kl(OLD, REF, MASK)
    advantages = penalized_advantages(torch.tensor([1.0, -0.5]), kl, MASK, coef=0.1)
    # row 0: 1 - 0.1*(-0.5), 1 - 0.1*(-1), 1 - 0; row 1: -0.5 - 0.1*1, -0.5 - 0, pad keeps -0.5
    torch.testing.assert_close(advantages, torch.tensor([[1.05, 1.1, 1.0], [-0.6, -0.5, -0.5]]))
    # per-token advantages in: the penalty is subtracted token by token
    per_token = penalized_advantages(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), kl, MASK, coef=1.0)
    torch.testing.assert_close(per_token, torch.tensor([[1.5, 3.0, 3.0], [-1.0, 0.0, 0.0]]))


def test_the_step_mean_kl_is_the_mean_of_each_sequences_token_mean():
    kl = k1_kl(OLD, REF, MASK)
    total, sequences = sequence_mean_sums(kl, MASK)
    # row 0: (0.5 - 1 + 0)/3 = -1/6; row 1: (1 + 0)/2 = 1/2; a masked-out row does not count
    assert sequences == 2 and total == pytest.approx(-1 / 6 + 1 / 2)
    empty = torch.zeros(1, 3)
    total, sequences = sequence_mean_sums(torch.cat([kl, empty]), torch.cat([MASK, empty]))
    assert sequences == 2 and total == pytest.approx(1 / 3)


def test_adaptive_controller_follows_ppos_proportional_rule():
    controller = KLController(0.1, "adaptive", target_kl=0.1, horizon=100)
    # error = clip(0.15/0.1 - 1) = 0.2 (the bound): beta = 0.1 * (1 + 0.2 * 10/100) = 0.102
    assert controller.update(0.15, 10) == pytest.approx(0.102)
    # error = 0.09/0.1 - 1 = -0.1: beta = 0.102 * (1 - 0.1 * 10/100) = 0.10098
    assert controller.update(0.09, 10) == pytest.approx(0.10098)
    # error = -1 clipped to -0.2: beta = 0.10098 * (1 - 0.2 * 50/100) = 0.090882
    assert controller.update(0.0, 50) == pytest.approx(0.090882)
    # far above target, error clipped to +0.2
    assert controller.update(5.0, 100) == pytest.approx(0.090882 * 1.2)


def test_fixed_controller_never_moves_and_state_round_trips():
    fixed = KLController(0.05, "fixed")
    assert fixed.update(10.0, 1000) == 0.05
    adaptive = KLController(0.1, "adaptive", target_kl=0.1, horizon=100)
    adaptive.update(0.15, 10)
    restored = KLController(0.1, "adaptive", target_kl=0.1, horizon=100)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value == pytest.approx(0.102)


def test_config_section_defaults_off_and_builds_the_controller():
    config = RLPostConfig.model_validate({})
    assert not config.objective.kl_in_reward.enabled
    assert KLController.from_config(config.objective.kl_in_reward) is None
    on = RLPostConfig.model_validate(
        {"objective": {"kl_in_reward": {"enabled": True, "type": "adaptive", "init_coef": 0.2, "target_kl": 0.05}}}
    )
    controller = KLController.from_config(on.objective.kl_in_reward)
    assert (controller.value, controller.kind, controller.target_kl, controller.horizon) == (0.2, "adaptive", 0.05, 10000)
    with pytest.raises(ValueError, match="init_coef"):
        RLPostConfig.model_validate({"objective": {"kl_in_reward": {"enabled": True, "init_coef": 0.0}}})


# ---- the learner -------------------------------------------------------------------------------


def _learner(tiny_model_path: str, **kl_in_reward):
    from rlpost.learner.learner import Learner
    from rlpost.objectives.registry import get_objective

    config = RLPostConfig.model_validate({
        "model": {"path": tiny_model_path},
        "learner": {"backend": "torch", "mixed_precision": "no", "micro_batch_size": 16},
        "optimizer": {"lr": 1e-3, "grad_clip": None},
        "rollout": {"max_new_tokens": 8},
        "objective": {"kl_in_reward": {"enabled": True, **kl_in_reward}},
    })
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    torch.manual_seed(0)
    learner = Learner(config, config.model.path, objective, total_steps=3)
    with torch.no_grad():  # a reference that differs from the policy, so the KL is not 0
        for param in learner.reference.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return learner, objective


def _by_hand(advantages: list[float], old: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, beta: float):
    """A_t = A - beta * sum_{s>=t} (old_s - ref_s), and the mean over sequences of the token-mean KL, in loops."""
    expected = torch.zeros_like(old)
    means = []
    for i, advantage in enumerate(advantages):
        length = int(mask[i].sum())
        kl = [float(old[i, t] - ref[i, t]) for t in range(length)]
        for t in range(old.shape[1]):
            expected[i, t] = advantage - beta * sum(kl[t:])
        means.append(sum(kl) / length)
    return expected, sum(means) / len(means)


def test_learner_folds_the_penalty_into_the_advantages_the_loss_sees(tiny_model_path):
    from rlpost.learner.batch import build_train_batch, prepare_update
    from tests.conftest import make_groups

    learner, objective = _learner(tiny_model_path, init_coef=0.5, type="adaptive", target_kl=0.01, horizon=100)
    assert learner.reference is not None, "KL in the reward loads the reference even with kl_coef 0"
    batch = build_train_batch(make_groups(2, sizes=[3, 3], seed=1), pad_token_id=0)
    targets = prepare_update(objective, batch)
    old = learner.frozen_logprobs(learner.module, batch)
    ref = learner.frozen_logprobs(learner.reference, batch)
    expected, mean_kl = _by_hand(targets.advantages.tolist(), old, ref, batch.response_mask, beta=0.5)
    seen = []
    compute_loss = objective.compute_loss
    objective.compute_loss = lambda inputs, scale: seen.append(inputs.advantages.detach().cpu()) or compute_loss(inputs, scale)

    metrics = learner.train_step(batch, targets)

    mask = batch.response_mask.bool()
    torch.testing.assert_close(torch.cat(seen)[mask], expected[mask], rtol=1e-5, atol=1e-6)
    assert metrics["kl_reward/coef"] == 0.5
    assert metrics["kl_reward/mean_kl"] == pytest.approx(mean_kl, rel=1e-5)
    error = min(max(mean_kl / 0.01 - 1, -0.2), 0.2)
    assert learner.kl_reward.value == pytest.approx(0.5 * (1 + error * 6 / 100), rel=1e-6)


def test_learner_checkpoint_restores_the_coefficient(tiny_model_path, tmp_path):
    learner, _ = _learner(tiny_model_path, type="adaptive")
    learner.kl_reward.value = 0.0123
    learner.save_state(tmp_path / "learner")
    resumed, _ = _learner(tiny_model_path, type="adaptive")
    assert resumed.kl_reward.value == 0.001
    resumed.load_state(tmp_path / "learner")
    assert resumed.kl_reward.value == 0.0123
