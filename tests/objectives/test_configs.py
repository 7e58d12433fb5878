"""Objective config: method defaults, sub-sections, and the shipped configs/<method>.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlpost.config.loader import load_config
from rlpost.config.objective import METHOD_DEFAULTS, ObjectiveConfig
from rlpost.objectives.base import Objective
from rlpost.objectives.registry import get_objective, objective_names

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METHODS = ["dr_grpo", "dapo", "gspo", "bnpo", "gtpo", "vcpo"]


@pytest.mark.parametrize("method", METHODS)
def test_shipped_config_loads_and_builds_its_objective(method):
    config = load_config(CONFIGS / f"{method}.yaml")
    assert config.objective.name == method
    objective = get_objective(method)(config.objective, config.rollout.max_new_tokens)
    assert isinstance(objective, Objective) and objective.name == method
    for knob, value in METHOD_DEFAULTS[method].items():  # the file states the method's published settings
        assert getattr(config.objective, knob) == value, knob


def test_every_registered_objective_has_a_module():
    for name in objective_names():
        assert get_objective(name).name == name


def test_method_defaults_fill_only_unset_knobs():
    assert ObjectiveConfig(name="gspo").clip_low == 3e-4
    assert ObjectiveConfig(name="gspo", clip_low=0.1).clip_low == 0.1
    assert ObjectiveConfig(name="grpo").loss_agg == "token-mean"


def test_unknown_method_knob_is_an_error():
    with pytest.raises(ValidationError, match="overlong_bufer"):
        ObjectiveConfig(name="dapo", dapo={"overlong_bufer": 3})
