"""SRFT: the entropy-aware SFT weight by hand, the plan, the probe round trip and the shipped config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlpost.blending import BlendProbe, build_controller, get_controller
from rlpost.blending.controllers.srft import sft_weight
from rlpost.config import load_config
from rlpost.config.blending import BlendingConfig
from tests.blending.test_controllers import group, stats

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def controller(**section):
    return build_controller(BlendingConfig.model_validate({"name": "srft", "srft": section}), seed=0)


def test_sft_weight_by_hand():
    # 0.5 * exp(-ln 2) = 0.25; 0.5 * exp(0) = 0.5; 0.5 * exp(-1) = 0.1839397; no entropy measured: the coefficient
    assert sft_weight(math.log(2), 0.5) == pytest.approx(0.25)
    assert sft_weight(0.0, 0.5) == 0.5
    assert sft_weight(1.0, 0.5) == pytest.approx(0.1839397, abs=1e-7)
    assert sft_weight(None, 0.5) == 0.5


def test_every_question_trains_both_sides_with_deferred_weights():
    srft = controller()
    plan = srft.plan(stats(0, [group([False] * 4), group([True, False, True, False])]))
    assert plan.rl_groups == [0, 1] and plan.sft_groups == [0, 1] and plan.step_type == "mixed"
    assert plan.defer_weights and plan.sft_entropy and plan.rl_entropy
    assert get_controller("srft").combines_gradients


def test_decide_and_observe():
    # H_demo = ln 2 -> w_sft = 0.25, w_rl = rl_coef = 0.8.
    srft = controller(rl_coef=0.8)
    srft.plan(stats(0, [group([True, False])]))
    probe = BlendProbe(lr=1e-6, sft_entropy=math.log(2), rl_entropy=1.5)
    assert srft.decide(probe) == pytest.approx((0.8, 0.25))
    metrics = srft.observe(probe)
    assert metrics["srft/sft_weight"] == pytest.approx(0.25) and metrics["srft/sft_entropy"] == pytest.approx(math.log(2))
    assert metrics["srft/rl_entropy"] == 1.5 and metrics["srft/rl_weight"] == 0.8
    assert srft.state_dict() == {"steps_done": 1}


def test_shipped_config_is_luffy_plus_the_sft_term():
    config = load_config(CONFIGS / "srft.yaml")
    assert config.objective.name == "luffy" and config.objective.luffy.gamma == 0.1
    assert (config.blending.srft.sft_coef, config.blending.srft.rl_coef) == (0.5, 1.0)
