"""A learning-rate factor of 0 (VCPO's skipped step) moves nothing on every backend: under DeepSpeed
ZeRO 0-3, fp32 or bf16, the weights, the fp32 master weights and Adam's moments and step count stay
bit-identical, the step's gradients are dropped, and the next step is the one it would have been."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import build_train_batch
from rlpost.learner.learner import Learner
from rlpost.learner.step import optimizer_step, updates_switched_off
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups

pytest.importorskip("deepspeed")

BACKENDS = {  # (ZeRO stage, model dtype)
    "zero0-bf16": (0, "bfloat16"),
    "zero0-fp32": (0, "float32"),
    "zero2-fp32": (2, "float32"),
    "zero2-bf16": (2, "bfloat16"),
    "zero3-fp32": (3, "float32"),
}


def _learner(tiny_model_path: str, stage: int, dtype: str) -> Learner:
    config = RLPostConfig.model_validate({
        "model": {"path": tiny_model_path, "dtype": dtype},
        "learner": {"backend": "deepspeed", "zero_stage": stage, "mixed_precision": "no", "micro_batch_size": 4},
        "optimizer": {"lr": 1e-2, "grad_clip": 1.0},
        "rollout": {"max_new_tokens": 8},
    })
    torch.manual_seed(0)
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    return Learner(config, tiny_model_path, objective, total_steps=4)


def _backward(learner: Learner, seed: int, scale: float = 1.0) -> None:
    """One accumulated gradient through the engine (two micro-batches, the second closes the step)."""
    batch = build_train_batch(make_groups(1, sizes=[4], seed=seed), pad_token_id=0).to(learner.device)
    for rows, is_last in ((slice(0, 2), False), (slice(2, 4), True)):
        logits = learner.module(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows]).logits
        learner.backward(scale * logits.float().pow(2).mean(), is_last)


def _step(learner: Learner, lr_factor: float) -> tuple[float, float]:
    return optimizer_step(learner.optimizer, learner.scheduler, learner.engine, learner.module, learner.config, lr_factor)


def _state(learner: Learner) -> dict:
    """Weights (gathered under ZeRO-3), the fp32 master weights the optimizer updates, its moments and
    step counts, and the schedule."""
    basic = learner.engine.basic_optimizer
    masters = [p for group in basic.param_groups for p in group["params"]]
    return {
        "weights": {name: tensor.clone() for name, tensor in learner.named_weights()},
        "masters": [p.detach().clone() for p in masters],
        "moments": [{k: v.clone() if torch.is_tensor(v) else v for k, v in basic.state[p].items()} for p in masters],
        "schedule": learner.scheduler.last_epoch,
    }


def _assert_identical(before: dict, after: dict) -> None:
    assert before["schedule"] == after["schedule"]
    for name, tensor in before["weights"].items():
        assert torch.equal(after["weights"][name], tensor), name
    for master, moved in zip(before["masters"], after["masters"], strict=True):
        assert torch.equal(master, moved)
    for state, moved in zip(before["moments"], after["moments"], strict=True):
        assert state.keys() == moved.keys() and {"exp_avg", "exp_avg_sq", "step"} <= state.keys()
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(moved[key]), torch.as_tensor(value)), key


@pytest.mark.deepspeed
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_zero_learning_rate_factor_moves_nothing_and_drops_the_gradients(tiny_model_path, backend):
    stage, dtype = BACKENDS[backend]
    skipping, plain = _learner(tiny_model_path, stage, dtype), _learner(tiny_model_path, stage, dtype)
    for learner in (skipping, plain):  # a first real step: Adam's moments exist and are not zero
        _backward(learner, seed=1)
        _step(learner, 1.0)
    before = _state(skipping)
    micro_steps = skipping.engine.micro_steps
    _backward(skipping, seed=2, scale=1e3)  # a large gradient, which must not reach any later step
    returned = _step(skipping, 0.0)
    _assert_identical(before, _state(skipping))
    assert returned == (0.0, 0.0)
    assert skipping.engine.micro_steps == micro_steps + 1, "the engine closed the step as after an update"

    for learner in (skipping, plain):  # the next step is the one of a learner that never saw the skipped one
        _backward(learner, seed=3)
        _step(learner, 1.0)
    after, want = _state(skipping), _state(plain)
    assert after["schedule"] == before["schedule"] + 1
    assert any(not torch.equal(after["weights"][n], t) for n, t in before["weights"].items()), "the next step moves"
    for name, tensor in want["weights"].items():
        assert torch.equal(after["weights"][name], tensor), name
    for state, expected in zip(after["moments"], want["moments"], strict=True):
        for key, value in expected.items():
            assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), key


def test_updates_switched_off_restores_the_step_method():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # wraps optimizer.step
    wrapped = optimizer.__dict__.get("step")
    param.grad = torch.ones(2)
    with updates_switched_off(optimizer):
        optimizer.step()
    assert torch.equal(param, torch.ones(2)) and not optimizer.state
    assert optimizer.__dict__.get("step") is wrapped
    optimizer.step()
    scheduler.step()
    assert not torch.equal(param, torch.ones(2))
