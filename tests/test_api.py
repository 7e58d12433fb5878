"""The Python API (`rlpost.train`, `rlpost.evaluate`, `rlpost.build_config`): configs built in Python,
overrides as keyword arguments, and reward functions passed as callables that the workers cannot import."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import rlpost
from rlpost.api import ShippedReward, UsageError
from rlpost.config import ConfigError, load_config
from rlpost.config.loader import parse_override
from rlpost.io.metrics import read_metrics
from tests.e2e.runs import GRPO_CONFIG, TINY_RUN

# A function as a notebook cell defines it: its module is __main__, which no worker can import.
NOTEBOOK = {"__name__": "__main__"}
exec("def says_four(prompt, completion, *, answer, **row):\n    return float('4' in completion)\n", NOTEBOOK)


def test_import_rlpost_loads_neither_torch_nor_the_api():
    code = "import sys, rlpost; print('torch' in sys.modules, 'rlpost.api' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False", "False"]


def test_overrides_as_dotted_keys_and_section_dicts_match_the_cli():
    built = rlpost.build_config(None, train={"steps": 3, "seed": 7}, **{"rollout.n": 4, "reward.functions.0.weight": 0.5})
    expected = load_config(None, ["train.steps=3", "train.seed=7", "rollout.n=4", "reward.functions.0.weight=0.5"])
    assert built == expected
    assert built.train.output_dir == expected.train.output_dir  # a section dict merges, it does not replace


def test_config_object_dict_and_path_are_accepted(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {steps: 2}\n")
    from_path = rlpost.build_config(path)
    assert rlpost.build_config(from_path) is from_path
    assert rlpost.build_config({"train": {"steps": 2}}) == from_path
    assert rlpost.build_config(from_path, **{"train.steps": 5}).train.steps == 5


def test_bad_override_and_bad_config_type_are_named():
    with pytest.raises(ConfigError, match="train.stepz"):
        rlpost.build_config(None, **{"train.stepz": 3})
    with pytest.raises(ConfigError, match="not int"):
        rlpost.build_config(3)


def test_callables_become_named_rewards_that_travel_by_value():
    config = rlpost.build_config(None, reward_functions=[NOTEBOOK["says_four"], ("boxed_format", 0.2)])
    assert [(f.name, f.weight) for f in config.reward.functions] == [("says_four", 1.0), ("boxed_format", 0.2)]
    restored = pickle.loads(pickle.dumps(ShippedReward(NOTEBOOK["says_four"])))
    assert restored("p", "it is 4", answer="4") == 1.0
    # The same function keeps its name; a new function of the same name (a cell run again) gets another.
    assert rlpost.build_config(None, reward_functions=[NOTEBOOK["says_four"]]).reward.functions[0].name == "says_four"
    again = {"__name__": "__main__"}
    exec("def says_four(prompt, completion, **row):\n    return 0.0\n", again)
    assert rlpost.build_config(None, reward_functions=[again["says_four"]]).reward.functions[0].name == "says_four-2"


def test_reward_entry_dict_with_a_callable_name_keeps_its_kwargs():
    config = rlpost.build_config(None, reward_functions=[{"name": NOTEBOOK["says_four"], "weight": 0.5,
                                                          "kwargs": {"answer": "4"}}])
    assert (config.reward.functions[0].name, config.reward.functions[0].kwargs) == ("says_four", {"answer": "4"})


def test_evaluate_returns_the_summary_and_writes_the_details(tiny_chat_model_path: str, tmp_path: Path):
    summary = rlpost.evaluate(tiny_chat_model_path, "arithmetic", limit=2, max_new_tokens=4, dtype="float32",
                              out=tmp_path / "eval.json")
    assert summary["problems"] == 2 and 0.0 <= summary["pass@1"] <= 1.0
    assert len(summary["result"]["problems"]) == 2
    assert json.loads((tmp_path / "eval.json").read_text())["pass@1"] == summary["pass@1"]


def test_reward_that_is_no_callable_and_eval_settings_out_of_range_are_named():
    with pytest.raises(UsageError, match="neither a callable"):
        rlpost.build_config(None, reward_functions=[42])
    with pytest.raises(UsageError, match="evaluate: samples = 0: must be at least 1"):
        rlpost.evaluate("/never/loaded", samples=0)


def test_three_steps_through_the_python_api(tmp_path: Path, tiny_chat_model_path: str):
    overrides = {".".join(keys): value for keys, value in map(parse_override, TINY_RUN)}
    overrides.update({"model.path": tiny_chat_model_path, "rollout.engine": "hf"})
    # Nothing below reads a checkpoint or the export: 1.6 GB of writes spared.
    overrides.update({"checkpoint.every_steps": 0, "checkpoint.at_end": False, "checkpoint.export_final": False})
    summary = rlpost.train(
        GRPO_CONFIG, reward_functions=[("math_verify", 1.0), (NOTEBOOK["says_four"], 0.1)],
        train={"steps": 3, "output_dir": str(tmp_path / "run")}, **overrides,
    )
    assert summary["run/seconds_per_step"] > 0
    assert 0.0 <= summary["reward/component/says_four"] <= 1.0
    assert summary["reward/failures/exception"] == 0.0  # the notebook function ran in the workers
    assert [record["step"] for record in read_metrics(tmp_path / "run")] == [1, 2, 3]
