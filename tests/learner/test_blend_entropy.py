"""AMFT compares the policy's entropy on demonstrations and on rollouts: both are measured the same way
(temperature 1), whatever the rollout temperature."""

from __future__ import annotations

import pytest

from rlpost.blending.base import BlendPlan
from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.blend import mean_entropy
from rlpost.learner.learner import Learner
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups


def test_rl_and_sft_entropies_are_measured_alike(tiny_model_path):
    config = RLPostConfig.model_validate({
        "model": {"path": tiny_model_path},
        "learner": {"backend": "torch", "mixed_precision": "no", "micro_batch_size": 3},
        "rollout": {"max_new_tokens": 8, "temperature": 0.7},
    })
    objective = get_objective("grpo")(config.objective, 8)
    learner = Learner(config, tiny_model_path, objective, total_steps=1)
    batch = build_train_batch(make_groups(2, sizes=[3, 3], seed=2), pad_token_id=0)
    at_rollout_temperature = mean_entropy(learner, batch, temperature=0.7)
    plan = BlendPlan(step_type="hybrid", rl_groups=[0, 1], sft_groups=[0, 1], rl_entropy=True, sft_entropy=True)
    # The same sequences on both sides: the two measurements must agree.
    _, probe = learner.blended_step(plan, batch, prepare_update(objective, batch), sft_batch=batch)
    assert probe.rl_entropy == pytest.approx(probe.sft_entropy, rel=1e-5)
    assert probe.rl_entropy != pytest.approx(at_rollout_temperature, rel=1e-3), "temperature must matter here"
