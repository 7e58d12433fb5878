"""The shipped blending configs load on top of GRPO's (configs/grpo.yaml) and build their controllers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlpost.blending import build_controller, controller_names
from rlpost.config import load_config
from rlpost.config.errors import ConfigError
from rlpost.preflight import check_combinations

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", controller_names())
def test_config_extends_grpos(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    grpo = load_config(CONFIGS / "grpo.yaml")
    assert config.blending.name == name
    assert build_controller(config.blending, seed=config.train.seed).name == name
    for section in ("model", "data", "reward", "rollout", "optimizer", "learner"):
        assert getattr(config, section) == getattr(grpo, section), section
    assert config.train.steps == grpo.train.steps and config.train.output_dir == f"runs/{name}"
    assert config.learner.updates_per_batch == 1


def test_hpt_config_is_the_authors_rl_loss():
    config = load_config(CONFIGS / "hpt.yaml")
    objective = config.objective
    assert (objective.name, objective.normalize_adv_by_std, objective.clip) == ("dr_grpo", False, False)
    assert objective.loss_agg == "seq-mean-token-sum-norm" and objective.kl_coef == 0.0
    assert objective.dr_grpo.truncated_reward is None
    assert (config.blending.hpt.gate, config.blending.hpt.sft_coef) == (0, 1.0)


def test_amft_config_can_combine_gradients():
    """AMFT rewrites gradients: configs/grpo.yaml's learner must be torch, or DeepSpeed stage 0 in float32."""
    config = load_config(CONFIGS / "amft.yaml")
    learner = config.learner
    assert learner.backend == "torch" or (learner.zero_stage == 0 and config.model.dtype == "float32")
    assert config.blending.amft.warmup_steps < config.train.steps



def test_hpt_with_dapo_dynamic_sampling_is_refused():
    """DAPO's filter drops the all-wrong groups HPT routes to SFT before HPT sees them."""
    config = load_config(CONFIGS / "hpt.yaml", ["objective.name=dapo"])
    assert config.objective.dapo.filter_groups  # DAPO's default
    with pytest.raises(ConfigError) as error:
        check_combinations(config)
    message = str(error.value)
    assert "blending.name='hpt'" in message and "objective.dapo.filter_groups" in message
    assert "never-solved" in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("hpt", ["objective.name=dapo", "objective.dapo.filter_groups=false"]),  # every group reaches HPT
        ("sasr", ["objective.name=dapo"]),  # a coin flip per step: no branch depends on scores
        ("amft", ["objective.name=dapo"]),  # every group enters both losses
    ],
)
def test_blending_runs_where_the_filter_empties_no_branch(name, overrides):
    config = load_config(CONFIGS / f"{name}.yaml", overrides)
    assert config.objective.name == "dapo" and config.blending.name == name
    assert check_combinations(config) is None
