"""docs/config.md is `rlpost config fields --format markdown`; `config fields` and `config show` explain the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlpost.cli import main
from rlpost.config import ConfigError, load_config
from rlpost.config.schema import RLPostConfig
from rlpost.io.config_reference import annotated_yaml, field_rows, render_fields, sections

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_current():
    assert REFERENCE.read_text() == render_fields(fmt="markdown"), (
        "docs/config.md is out of date: run `rlpost config fields --format markdown > docs/config.md`")


def test_every_field_of_every_section_is_documented_plugin_sections_included():
    listed = sections()
    assert {"objective.dapo", "sampler.vade", "blending.amft", "reward.functions[]", "rollout.vllm"} <= set(listed)
    text = render_fields(fmt="markdown")
    for key, (model, _) in listed.items():
        for row in field_rows(model, key):
            assert f"| `{row.key}` |" in text, f"{row.key} is not in the reference"
            assert row.doc, f"{row.key} has no docstring"
    assert sum(len(field_rows(model, key)) for key, (model, _) in listed.items()) > 100


def test_one_section_in_the_terminal_and_an_unknown_one(capsys):
    assert main(["config", "fields", "rollout.vllm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[rollout.vllm]") and "tensor_parallel_size: int, >= 1 = 1" in out
    with pytest.raises(ConfigError, match="no section 'rolout' \\(did you mean 'rollout'\\?\\)"):
        render_fields("rolout")


def test_show_marks_changed_values_against_the_chosen_methods_defaults_and_stays_loadable():
    config = load_config(None, ["objective.name=dapo", "train.steps=3"])
    text = annotated_yaml(config)
    assert "  steps: 3  # default: 40\n" in text
    assert "  name: dapo  # default: grpo\n" in text
    assert "  clip_high: 0.28\n" in text  # dapo's own default, not a change
    assert RLPostConfig.model_validate(yaml.safe_load(text)) == config
