"""LoRA weight export: `Learner.named_weights` hands out the merged weights without touching the policy."""

from __future__ import annotations

import copy

import pytest
import torch

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.learner import Learner
from rlpost.learner.policy import hf_model
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups


@pytest.fixture
def trained_lora_learner(tiny_model_path) -> Learner:
    """A LoRA learner (plain torch backend, dropout on) after one step: B is no longer zero, so
    merging really changes the adapted weights."""
    config = RLPostConfig.model_validate(
        {
            "model": {"path": tiny_model_path, "lora": {"enabled": True, "r": 4, "dropout": 0.1}},
            "learner": {"backend": "torch", "mixed_precision": "no"},
            "optimizer": {"lr": 1e-2, "grad_clip": None},
            "rollout": {"max_new_tokens": 8},
        }
    )
    torch.manual_seed(0)
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    learner = Learner(config, tiny_model_path, objective, total_steps=1)
    batch = build_train_batch(make_groups(2, sizes=[4, 4], seed=1), pad_token_id=0)
    learner.train_step(batch, prepare_update(objective, batch))
    return learner


def _policy_state(learner: Learner) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in learner.model.state_dict().items()}


def test_exported_weights_equal_peft_merge_and_unload(trained_lora_learner) -> None:
    # Held until the export has finished: what a consumer reading them later (a transport) sees.
    exported = dict(trained_lora_learner.named_weights())
    merged = copy.deepcopy(trained_lora_learner.model).merge_and_unload().state_dict()
    assert list(exported) == list(merged), "the plain model's Hugging Face names, in order"
    for name, tensor in merged.items():
        assert torch.equal(exported[name], tensor), name
    base = {name.replace(".base_layer.", "."): tensor for name, tensor in hf_model(trained_lora_learner.model).state_dict().items()}
    changed = [name for name in exported if not torch.equal(exported[name], base[name])]
    adapted = [name for name in exported if name.split(".")[-2].endswith("proj")]
    assert adapted and changed == adapted, "exactly the adapted projections carry their adapters"


def test_export_leaves_the_policy_bit_identical(trained_lora_learner) -> None:
    before = _policy_state(trained_lora_learner)
    for _ in range(2):
        assert sum(1 for _ in trained_lora_learner.named_weights()) > 0
    after = _policy_state(trained_lora_learner)
    assert list(after) == list(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
