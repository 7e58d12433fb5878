"""Objective plug-ins: registry entries, method defaults, sub-sections, and the shipped configs/<method>.yaml.

The method lists come from the registry, so a new objective is covered by adding its file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from rlpost.config.base import Section
from rlpost.config.loader import load_config
from rlpost.config.objective import ObjectiveConfig, ObjectiveKnobs, check_method_defaults
from rlpost.objectives.base import Objective
from rlpost.objectives.registry import CAPABILITIES, OBJECTIVES, get_objective, has_capability, objective_names
from rlpost.registry import Registry

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METHODS = objective_names()
# grpo's published settings are the shared knobs' own defaults; the quickstart is its config.
SHIPPED = [name for name in METHODS if name != "grpo"]


def test_registry_holds_every_objective_module():
    assert {"grpo", "dr_grpo", "dapo", "gspo", "bnpo", "gtpo", "vcpo"} <= set(METHODS)


@pytest.mark.parametrize("method", SHIPPED)
def test_shipped_config_loads_and_builds_its_objective(method):
    config = load_config(CONFIGS / f"{method}.yaml")
    assert config.objective.name == method
    objective = get_objective(method)(config.objective, config.rollout.max_new_tokens)
    assert isinstance(objective, Objective) and objective.name == method
    for knob, value in OBJECTIVES.entry(method).defaults.items():  # the file states the method's published settings
        assert getattr(config.objective, knob) == value, knob


@pytest.mark.parametrize("method", METHODS)
def test_registered_name_is_the_class_name_attribute(method):
    assert get_objective(method).name == method


@pytest.mark.parametrize("method", METHODS)
def test_method_section_is_the_registered_config(method):
    section = OBJECTIVES.entry(method).config
    if section is None:
        assert method not in ObjectiveConfig.model_fields
    else:
        assert isinstance(getattr(ObjectiveConfig(name=method), method), section)


def test_method_defaults_fill_only_unset_knobs():
    assert ObjectiveConfig(name="gspo").clip_low == 3e-4
    assert ObjectiveConfig(name="gspo", clip_low=0.1).clip_low == 0.1
    assert ObjectiveConfig(name="grpo").loss_agg == "token-mean"
    assert ObjectiveConfig(name="dapo").clip_high == 0.28
    assert ObjectiveConfig(name="dapo", clip_high=0.2).clip_high == 0.2


def test_method_defaults_name_shared_knobs_only():
    for entry in OBJECTIVES.entries():
        assert set(entry.defaults) <= set(ObjectiveKnobs.model_fields), entry.name


def test_unknown_method_knob_is_an_error():
    with pytest.raises(ValidationError, match="overlong_bufer"):
        ObjectiveConfig(name="dapo", dapo={"overlong_bufer": 3})


def test_capabilities_declared_beside_the_code():
    assert has_capability("vcpo", "corrects_off_policy") and has_capability("vcpo", "own_gradient_path")
    assert not has_capability("grpo", "corrects_off_policy") and not has_capability("dapo", "own_gradient_path")
    with pytest.raises(KeyError, match="unknown objective capability 'corrects_offpolicy'"):
        has_capability("vcpo", "corrects_offpolicy")
    for entry in OBJECTIVES.entries():
        assert set(entry.capabilities) <= set(CAPABILITIES), entry.name


@pytest.mark.parametrize("method", METHODS)
def test_only_objectives_declaring_own_gradient_path_take_it(method):
    section = {"vcpo": {"opob": True}} if method == "vcpo" else {}
    objective = get_objective(method)(ObjectiveConfig(name=method, **section), 8)
    assert objective.per_trajectory_baseline == has_capability(method, "own_gradient_path")


def test_vcpo_takes_its_own_path_only_with_opob():
    assert not get_objective("vcpo")(ObjectiveConfig(name="vcpo"), 8).per_trajectory_baseline


def test_schema_complete_whichever_objective_module_is_imported_first():
    # The schema imports every objective module; an objective imported first must still get its section.
    code = "import rlpost.objectives.dapo\nfrom rlpost.config.objective import ObjectiveConfig\nprint(ObjectiveConfig(name='dapo').dapo.max_gen_batches)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "10"


def test_registry_refuses_an_unknown_capability_flag():
    registry = Registry("objective", capabilities=CAPABILITIES)
    with pytest.raises(ValueError, match="'typo': unknown capabilities corrects_offpolicy; known: corrects_off_policy, group_relative, own_gradient_path"):
        registry.register("typo", corrects_offpolicy=True)
    registry.register("fine", corrects_off_policy=True)(object)
    assert registry.entry("fine").capabilities == {"corrects_off_policy": True}


def test_method_defaults_of_unknown_knobs_are_refused():
    # Against a section without the shared knobs, bnpo's four defaults name nothing that exists.
    with pytest.raises(TypeError, match="objective 'bnpo' sets defaults of unknown shared knobs: clip_c, clip_high, clip_low, loss_agg"):
        check_method_defaults(Section)
