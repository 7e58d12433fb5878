"""Off-policy corrections at the optimizer step: a skipped VCPO step moves nothing, and tokens an
IS rejection removes leave the step's normalisers, not only its loss."""

from __future__ import annotations

import torch

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.learner import Learner
from rlpost.learner.step import optimizer_step
from rlpost.objectives.offpolicy import wrap_objective
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups


def _learner(tiny_model_path: str, objective=None) -> Learner:
    config = RLPostConfig.model_validate({
        "model": {"path": tiny_model_path},
        "learner": {"backend": "torch", "mixed_precision": "no", "micro_batch_size": 4},
        "optimizer": {"lr": 1e-2, "grad_clip": None},
        "rollout": {"max_new_tokens": 8},
    })
    objective = objective or get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    return Learner(config, tiny_model_path, objective, total_steps=4)


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in learner.named_weights()}


def _backward_once(learner: Learner) -> None:
    batch = build_train_batch(make_groups(1, sizes=[2]), pad_token_id=0)
    logits = learner.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits.float().pow(2).mean().backward()


def test_a_zero_learning_rate_factor_skips_the_step(tiny_model_path):
    learner = _learner(tiny_model_path)
    before, epoch = _weights(learner), learner.scheduler.last_epoch
    _backward_once(learner)
    grad_norm, lr = optimizer_step(learner.optimizer, learner.scheduler, None, learner.module, learner.config, 0.0)
    assert (grad_norm, lr) == (0.0, 0.0)
    assert all(torch.equal(before[name], tensor) for name, tensor in _weights(learner).items())
    assert all(p.grad is None for p in learner.module.parameters()), "the skipped step's gradients are dropped"
    assert learner.optimizer.state_dict()["state"] == {}, "Adam's moments must not move"
    assert learner.scheduler.last_epoch == epoch
    # The same call with factor 1 does step: the test above is not vacuous.
    _backward_once(learner)
    optimizer_step(learner.optimizer, learner.scheduler, None, learner.module, learner.config, 1.0)
    assert any(not torch.equal(before[name], tensor) for name, tensor in _weights(learner).items())
    assert learner.scheduler.last_epoch == epoch + 1


def test_rejected_tokens_leave_the_step_normalisers(tiny_model_path):
    probe = _learner(tiny_model_path)
    objective = wrap_objective(get_objective("grpo")(probe.config.objective, 8), "mask", cap=1.5)
    learner = _learner(tiny_model_path, objective)
    batch = build_train_batch(make_groups(2, sizes=[3, 3], seed=1), pad_token_id=0)
    old = learner.frozen_logprobs(learner.module, batch)
    mask = batch.response_mask.clone()
    # The longest sequence was sampled by a policy e^2 times less likely on its first two tokens:
    # ratio e^2 > cap 1.5, so both are rejected.
    row = int(mask.sum(dim=1).argmax())
    behaviour = old.clone()
    behaviour[row, :2] -= 2.0
    batch.behaviour_logp = behaviour
    counted = []
    original = learner.step_scale
    learner.step_scale = lambda b, rows: counted.append(original(b, rows)) or counted[-1]
    learner.train_step(batch, prepare_update(objective, batch))
    rejected = int(mask[row, :2].sum())
    assert rejected == 2
    assert counted[0].tokens == int(mask.sum()) - rejected
