"""`learner.fused_ops`: the objectives' per-token surrogate goes through the fused op on the training path,
and the switch changes nothing in a training step (loss, metrics, gradients, updated weights)."""

from __future__ import annotations

import pytest
import torch

import rlpost.ops.policy_loss as policy_loss_module
from rlpost.config.schema import RLPostConfig
from rlpost.learner.accumulate import fused_ops_enabled
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.learner import Learner
from rlpost.objectives.offpolicy import wrap_objective
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups

# Every objective family whose loss is a clipped surrogate: GRPO's, DAPO's dual clip, GSPO's sequence
# ratio, VCPO's unclipped IS-weighted form, GTPO's per-token advantages, RLOO's baseline, Clip-Cov's and
# KL-Cov's token selections. (CISPO's loss, -sg(clip(r))·A·log π, is no clipped surrogate: it stays eager.)
OBJECTIVES = {
    "grpo": {"name": "grpo", "kl_coef": 0.05, "entropy_coef": 0.01},
    "dapo": {"name": "dapo"},
    "gspo": {"name": "gspo"},
    "vcpo": {"name": "vcpo"},
    "gtpo": {"name": "gtpo", "gtpo": {"entropy_threshold": 10.0}},  # the tiny model's entropy is ~4.8
    "rloo": {"name": "rloo"},
    "clip_cov": {"name": "clip_cov"},
    "kl_cov": {"name": "kl_cov"},
}


def _learner(tiny_model_path: str, objective: dict, fused_ops, updates: int = 2) -> tuple[Learner, object]:
    config = RLPostConfig.model_validate({
        "model": {"path": tiny_model_path},
        "learner": {"backend": "torch", "mixed_precision": "no", "micro_batch_size": 3, "fused_ops": fused_ops,
                    "updates_per_batch": updates},
        "optimizer": {"lr": 0.1, "grad_clip": None},  # a large first update: the second one's ratios clip
        "rollout": {"max_new_tokens": 8},
        "objective": objective,
    })
    torch.manual_seed(0)
    built = get_objective(config.objective.name)(config.objective, config.rollout.max_new_tokens)
    if objective["name"] == "grpo":  # and through the IS-correction wrapper
        built = wrap_objective(built, "token", cap=2.0)
    return Learner(config, tiny_model_path, built, total_steps=2), built


def _train(tiny_model_path: str, objective: dict, fused_ops) -> tuple[dict, list, dict]:
    """(metrics, the gradients of each optimizer step, the weights after the step) of one train step:
    two updates, so the second one's ratios differ from 1 and the clips act."""
    learner, built = _learner(tiny_model_path, objective, fused_ops)
    grads: list[list[torch.Tensor]] = []
    step = learner._optimizer_step

    def record_then_step(lr_factor: float):
        grads.append([p.grad.clone() if p.grad is not None else None for p in learner.module.parameters()])
        return step(lr_factor)

    learner._optimizer_step = record_then_step
    batch = build_train_batch(make_groups(3, sizes=[4, 3, 4], seed=5), pad_token_id=0)
    torch.manual_seed(1)  # the updates' row order
    metrics = learner.train_step(batch, prepare_update(built, batch))
    weights = {name: tensor.clone() for name, tensor in learner.named_weights()}
    return metrics, grads, weights


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_the_switch_changes_nothing_in_a_training_step(tiny_model_path, objective):
    plain = _train(tiny_model_path, OBJECTIVES[objective], False)
    fused = _train(tiny_model_path, OBJECTIVES[objective], True)
    metrics, grads, weights = plain
    assert metrics.keys() == fused[0].keys()
    for key, value in metrics.items():
        assert fused[0][key] == value, key
    assert len(grads) == len(fused[1]) == 2
    assert any(g is not None and g.abs().max() > 0 for step_grads in grads for g in step_grads)
    for step_grads, fused_step_grads in zip(grads, fused[1], strict=True):
        for g, f in zip(step_grads, fused_step_grads, strict=True):
            assert (g is None and f is None) or torch.equal(g, f)
    for name, tensor in weights.items():
        assert torch.equal(fused[2][name], tensor), name


def _count_op_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = policy_loss_module.fused_policy_loss

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(policy_loss_module, "fused_policy_loss", counting)
    return calls


@pytest.mark.parametrize("objective", ["grpo", "gspo"])
def test_the_learner_calls_the_fused_op_when_the_switch_is_on(tiny_model_path, monkeypatch, objective):
    """Once per micro-batch (11 rows in micro-batches of 3, two updates of 6 and 5 rows: 2 + 2), only when on."""
    calls = _count_op_calls(monkeypatch)
    _train(tiny_model_path, OBJECTIVES[objective], True)
    assert calls[0] == 4
    calls[0] = 0
    _train(tiny_model_path, OBJECTIVES[objective], False)
    assert calls[0] == 0


def test_auto_turns_the_op_on_on_cuda_only():
    assert RLPostConfig().learner.fused_ops == "auto"
    assert fused_ops_enabled("auto", torch.device("cuda", 0))
    assert not fused_ops_enabled("auto", torch.device("cpu"))
    assert fused_ops_enabled(True, torch.device("cpu")) and not fused_ops_enabled(False, torch.device("cuda"))
    for value in (True, False, "auto"):
        assert RLPostConfig.model_validate({"learner": {"fused_ops": value}}).learner.fused_ops == value
    with pytest.raises(ValueError):
        RLPostConfig.model_validate({"learner": {"fused_ops": "sometimes"}})
