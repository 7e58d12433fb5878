"""The learner with its policy on an accelerator, on a machine without one (`tests.learner.accelerator`):
every tensor that meets the model is moved to the model's device, what leaves comes back to the CPU,
and collectives get their tensors on the group's device. Each result is checked against the same
step with the policy on the CPU."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from transformers import LlamaForCausalLM

import rlpost.learner.learner as learner_module
from rlpost.blending.base import BlendPlan
from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.policy import hf_model, lora_layers_by_weight_name
from tests.blending.helpers import make_config, make_learner, scored_groups
from tests.learner.accelerator import DEVICE, MISMATCH, OnAccelerator, SimulatedAccelerator, place_on_accelerator

GRPO_KL = {"name": "grpo", "kl_coef": 0.05, "entropy_coef": 0.01}
OPOB = {"name": "vcpo", "vcpo": {"opob": True, "is_threshold": None}}


def _groups():
    return scored_groups([[True, False, True], [False, True, True, False]], seed=5)


@contextlib.contextmanager
def policy_on(accelerator: bool) -> Iterator[None]:
    """Learners built inside hold their policy on the simulated accelerator (or, for the reference run,
    on the CPU); the objective's reference goes wherever the learner puts it."""
    load_policy = learner_module.load_policy
    place = place_on_accelerator if accelerator else (lambda model: model)
    with pytest.MonkeyPatch.context() as patch, (SimulatedAccelerator() if accelerator else contextlib.nullcontext()):
        patch.setattr(learner_module, "load_policy", lambda *a, **k: place(load_policy(*a, **k)))
        if accelerator:
            patch.setattr(learner_module, "compute_device", lambda: DEVICE, raising=False)
        yield


def _initial(model_path: str) -> dict[str, torch.Tensor]:
    return LlamaForCausalLM.from_pretrained(model_path).state_dict()


def _train(config) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    learner = make_learner(config)
    batch = build_train_batch(_groups(), pad_token_id=0)
    torch.manual_seed(1)  # the rows' shuffle: loading under the simulation draws from the generator differently
    metrics = learner.train_step(batch, prepare_update(learner.objective, batch))
    return metrics, dict(learner.named_weights())


def _blend(config) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    learner = make_learner(config)
    batch = build_train_batch(_groups(), pad_token_id=0)
    plan = BlendPlan("mixed", [0, 1], [0, 1], defer_weights=True, meta_gradient=True, rl_entropy=True, sft_entropy=True)
    metrics, probe = learner.blended_step(
        plan, batch, prepare_update(learner.objective, batch), sft_batch=batch, validation_batch=batch,
        decide=lambda probe: (0.7, 0.3),
    )
    return {**metrics, "probe/rl_entropy": probe.rl_entropy, "probe/val_dot_rl": probe.val_dot_rl}, dict(learner.named_weights())


STEPS = {
    "rl-kl-entropy-2-updates": (_train, {"objective": GRPO_KL, "updates_per_batch": 2}),
    "opob": (_train, {"objective": OPOB}),
    "blended-deferred-meta-gradient": (_blend, {"objective": GRPO_KL}),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_a_step_with_the_policy_on_an_accelerator_matches_the_cpu(tiny_model_path, name):
    step, settings = STEPS[name]
    config = make_config(tiny_model_path, micro_batch_size=3, **settings)
    with policy_on(accelerator=False):
        expected_metrics, expected_weights = step(config)
    with policy_on(accelerator=True):
        metrics, weights = step(config)
    moved = max(float((expected_weights[n] - tensor).abs().max()) for n, tensor in _initial(tiny_model_path).items())
    assert moved > 1e-4, "the step must change the weights for the comparison to mean anything"
    for key, value in expected_metrics.items():
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert list(weights) == list(expected_weights)
    for weight_name, tensor in expected_weights.items():
        assert weights[weight_name].device.type == "cpu" and not isinstance(weights[weight_name], OnAccelerator)
        torch.testing.assert_close(weights[weight_name], tensor, rtol=1e-5, atol=1e-7)


def test_lora_merged_export_comes_back_to_the_cpu(tiny_model_path):
    dumped = make_config(tiny_model_path).model_dump()
    config = RLPostConfig.model_validate({**dumped, "model": {**dumped["model"], "lora": {"enabled": True, "r": 4}}})
    with policy_on(accelerator=True):
        learner = make_learner(config)
        layers = lora_layers_by_weight_name(hf_model(learner.module))
        expected = {}
        for name, layer in layers.items():
            with torch.no_grad():
                layer.lora_B["default"].weight.fill_(0.01)  # B starts at 0: the merge would change nothing
            base, a, b = (w.detach().cpu() for w in (layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight))
            expected[name.replace(".base_layer.", ".")] = base + layer.scaling["default"] * (b @ a)
        exported = dict(learner.named_weights())
    assert set(expected) < set(exported) and len(expected) == 7 * 2  # seven projections in each of two layers
    for name, tensor in exported.items():
        assert type(tensor) is torch.Tensor and tensor.device.type == "cpu", name
    for name, tensor in expected.items():
        torch.testing.assert_close(exported[name], tensor, rtol=1e-6, atol=1e-7)


def test_on_device_export_stays_on_the_accelerator(tiny_model_path):
    """The GPU transports (NCCL broadcast, CUDA IPC) take the weights where the model holds them: no
    host round trip; the default export is still on the CPU."""
    with policy_on(accelerator=True):
        learner = make_learner(make_config(tiny_model_path))
        on_device = {name: tensor.detach().clone() for name, tensor in learner.named_weights(on_device=True)}
        on_cpu = dict(learner.named_weights())
    assert set(on_device) == set(on_cpu) and len(on_cpu) > 10
    for name, tensor in on_device.items():
        assert tensor.device.type != "cpu", name
        torch.testing.assert_close(tensor.cpu(), on_cpu[name], rtol=0, atol=0)


class _TwoRankGroup:
    """Stands in for a process group of two ranks holding the same data, on the accelerator: records
    the device of every tensor handed to a collective."""

    def __init__(self, monkeypatch):
        self.devices: list[torch.device] = []
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)
        monkeypatch.setattr(dist, "all_gather", self.all_gather)
        monkeypatch.setattr(dist, "all_gather_object", lambda out, value, group=None: out.__setitem__(slice(None), [value] * len(out)))
        monkeypatch.setattr("rlpost.learner.distributed.group_device", lambda: DEVICE, raising=False)

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        self.devices.append(tensor.device)
        if op == dist.ReduceOp.SUM:
            tensor.mul_(2)

    def all_gather(self, parts, tensor, group=None, async_op=False):
        self.devices += [tensor.device] + [part.device for part in parts]
        for part in parts:
            part.copy_(tensor)


def test_collectives_get_their_tensors_on_the_groups_device(tiny_model_path, monkeypatch):
    """Under NCCL a collective's tensors must be on the GPU: the step's normalisers, update counts and
    the gathered log-probs of VCPO's learning-rate scale go there and come back."""
    config = make_config(tiny_model_path, micro_batch_size=3, objective={"name": "vcpo", "vcpo": {"is_threshold": None}})
    learner = make_learner(config)
    batch = build_train_batch(_groups(), pad_token_id=0)
    targets = prepare_update(learner.objective, batch)
    # Both "ranks" hold the same rows: the scale from the gathered rows is the one from this rank's
    # rows, under the policy before the step.
    expected, _ = learner.objective.lr_scale(
        {"logp": learner.frozen_logprobs(learner.module, batch), "behaviour_logp": batch.behaviour_logp, "mask": batch.response_mask}
    )
    group = _TwoRankGroup(monkeypatch)
    with SimulatedAccelerator():
        metrics = learner.train_step(batch, targets)
    assert group.devices and set(group.devices) == {DEVICE}
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())
    assert metrics["staleness/ess_lr_scale"] == pytest.approx(expected, rel=1e-6)


def test_the_simulated_accelerator_refuses_a_cpu_batch_as_cuda_does(tiny_model_path):
    """The tool the tests above rely on: the policy on the accelerator and its input on the CPU fail."""
    with policy_on(accelerator=True):
        learner = make_learner(make_config(tiny_model_path))
        batch = build_train_batch(_groups(), pad_token_id=0)
        with pytest.raises(RuntimeError, match=MISMATCH):
            learner.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        logits = learner.module(input_ids=batch.input_ids.to(DEVICE), attention_mask=batch.attention_mask.to(DEVICE)).logits
        assert logits.device == DEVICE and logits.cpu().isfinite().all()
