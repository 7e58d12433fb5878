"""Config loading: YAML + dotted overrides, and errors that name the key, value and what is allowed."""

import pytest

from rlpost.config import ConfigError, load_config
from rlpost.config.loader import QUICKSTART, apply_override, parse_override


def test_quickstart_loads_with_defaults():
    """No config: the quickstart, an SFT warm-up then HPT (whose RL side is Dr.GRPO) on levels 1-2."""
    config = load_config()
    assert config.model.path == "smollm2-135m-instruct"
    assert (config.objective.name, config.blending.name) == ("dr_grpo", "hpt")
    assert config.blending.sft.warmup_steps == 64 and config.train.steps == 94
    assert config.data.arithmetic.levels == [1, 2]
    assert config.rollout.max_new_tokens == 128


def test_dotted_override_sets_nested_value_with_yaml_typing():
    config = load_config(QUICKSTART, ["objective.clip_high=0.28", "rollout.engine=vllm", "model.lora.enabled=true"])
    assert config.objective.clip_high == pytest.approx(0.28)
    assert config.rollout.engine == "vllm"
    assert config.model.lora.enabled is True


def test_override_of_list_element():
    tree = {"reward": {"functions": [{"name": "math_verify", "weight": 1.0}]}}
    apply_override(tree, *parse_override("reward.functions.0.weight=0.5"))
    assert tree["reward"]["functions"][0]["weight"] == 0.5
    with pytest.raises(ConfigError, match="not an index"):
        apply_override(tree, *parse_override("reward.functions.3.weight=0.5"))


def test_unknown_key_names_key_and_closest_valid_one():
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, ["objective.clip_hihg=0.3"])
    message = str(err.value)
    assert "unknown key 'objective.clip_hihg'" in message
    assert "did you mean 'clip_high'" in message


def test_unknown_section_names_closest_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimiser:\n  lr: 1.0e-5\n")
    with pytest.raises(ConfigError, match="unknown key 'optimiser' \\(did you mean 'optimizer'\\?\\)"):
        load_config(path)


def test_wrong_type_names_key_value_and_expectation():
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, ["train.steps=many"])
    assert "train.steps = 'many'" in str(err.value)
    assert "valid integer" in str(err.value)


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match="rollout.engine = 'tgi' is not allowed; expected 'hf' or 'vllm'"):
        load_config(QUICKSTART, ["rollout.engine=tgi"])


def test_out_of_range_value_names_bound():
    with pytest.raises(ConfigError, match="optimizer.lr = -1"):
        load_config(QUICKSTART, ["optimizer.lr=-1"])


def test_unknown_objective_suggests_registered_name():
    with pytest.raises(ConfigError, match="unknown objective 'grpoo' \\(did you mean 'grpo'\\?\\)"):
        load_config(QUICKSTART, ["objective.name=grpoo"])


def test_group_size_one_with_grpo_is_rejected():
    with pytest.raises(ConfigError, match="rollout.n = 1"):
        load_config(QUICKSTART, ["rollout.n=1"])


@pytest.mark.parametrize("name", ["rloo", "dr_grpo", "gtpo"])
def test_group_size_one_is_rejected_for_group_relative_objectives_without_std(name):
    # These normalise no std (normalize_adv_by_std false by default), yet their baseline is the group's.
    with pytest.raises(ConfigError, match=f"rollout.n = 1 .*objective {name}'s advantages are relative to the group"):
        load_config(QUICKSTART, [f"objective.name={name}", "rollout.n=1"])


def test_verl_loss_and_kl_names_are_accepted():
    config = load_config(QUICKSTART, ["objective.loss_agg=token-sum", "objective.kl_estimator=low_var_kl+"])
    assert config.objective.loss_agg == "token-sum" and config.objective.kl_estimator == "low_var_kl+"
    assert load_config(QUICKSTART, ["objective.kl_estimator=abs"]).objective.kl_estimator == "abs"


def test_unknown_loss_aggregation_explains_verl_091_seq_mean_token_sum_norm():
    with pytest.raises(ConfigError, match="verl 0.9.1's seq-mean-token-sum-norm divides by the sequence count") as err:
        load_config(QUICKSTART, ["objective.loss_agg=seq-mean"])
    assert "it is rlpost's dr-grpo" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_malformed_override():
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        load_config(QUICKSTART, ["objective.clip_high"])


def test_every_field_is_documented():
    from pydantic import BaseModel

    from rlpost.config.schema import RLPostConfig

    undocumented = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
            elif not field.description:
                undocumented.append(prefix + name)

    walk(RLPostConfig, "")
    assert undocumented == []


def test_importing_a_config_leaf_does_not_build_the_schema():
    """`rlpost.config` exports lazily: `Section` comes without torch or the plug-in registries, and a
    plug-in module imported first still ends up in the schema (no half-imported package)."""
    import subprocess
    import sys

    code = (
        "import sys, rlpost.config.base\n"
        "assert 'rlpost.config.schema' not in sys.modules and 'torch' not in sys.modules, 'eager'\n"
        "import rlpost.samplers.allocation\n"
        "from rlpost.config import RLPostConfig\n"
        "assert 'knapsack' in type(RLPostConfig().sampler).model_fields\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
