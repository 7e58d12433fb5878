"""Config values that would train nonsense are refused at load time, naming the key and why."""

import pytest

from rlpost.config import ConfigError, load_config
from tests.e2e.runs import GRPO_CONFIG


def refused(override: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(GRPO_CONFIG, [override])
    return str(err.value)


@pytest.mark.parametrize("value", ["1", "1.5"])
def test_clip_low_at_or_above_one_is_refused(value):
    # 1 - clip_low <= 0: a ratio floor that no positive ratio can reach.
    message = refused(f"objective.clip_low={value}")
    assert f"objective.clip_low = {value}: must be in [0, 1)" in message
    assert "1 - clip_low" in message


def test_clip_low_just_below_one_is_accepted():
    assert load_config(GRPO_CONFIG, ["objective.clip_low=0.99"]).objective.clip_low == 0.99


def test_clip_high_far_out_of_range_is_refused():
    message = refused("objective.clip_high=20")
    assert "objective.clip_high = 20: must be in [0, 10]" in message
    assert "objective.clip: false" in message
    assert load_config(GRPO_CONFIG, ["objective.clip_high=10"]).objective.clip_high == 10


@pytest.mark.parametrize("value", [".nan", ".inf", "0", "-1e-6"])
def test_learning_rate_must_be_finite_and_positive(value):
    assert "must be a finite number > 0" in refused(f"optimizer.lr={value}")


@pytest.mark.parametrize("betas", ["[0.9,1.0]", "[-0.1,0.999]", "[0.9,.nan]"])
def test_adam_betas_outside_zero_one_are_refused(betas):
    message = refused(f"optimizer.betas={betas}")
    assert "optimizer.betas = " in message and "each beta must be in [0, 1)" in message


def test_adam_betas_at_zero_are_accepted():
    assert load_config(GRPO_CONFIG, ["optimizer.betas=[0.0,0.0]"]).optimizer.betas == (0.0, 0.0)


@pytest.mark.parametrize("value", ["-1.0e-8", ".inf"])
def test_adam_eps_negative_or_infinite_is_refused(value):
    assert "optimizer.eps = " in (message := refused(f"optimizer.eps={value}"))
    assert "must be a finite number >= 0" in message


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_reward_weight_must_be_finite(value):
    message = refused(f"reward.functions.1.weight={value}")
    assert "reward.functions.1.weight = " in message and "must be a finite number" in message


def test_negative_reward_weight_is_allowed():
    assert load_config(GRPO_CONFIG, ["reward.functions.1.weight=-0.5"]).reward.functions[1].weight == -0.5


@pytest.mark.parametrize(("value", "meant"), [("atuo", "auto"), ("Auto", "auto"), ("nevr", "never")])
def test_resume_typo_names_key_allowed_values_and_closest(value, meant):
    message = refused(f"train.resume={value}")
    assert f"train.resume = {value!r}: is not 'auto', 'never' or a checkpoint folder (did you mean {meant!r}?)" in message


def test_resume_boolean_is_refused_with_allowed_values():
    assert "train.resume = False: must be 'auto', 'never' or a checkpoint folder" in refused("train.resume=false")


def test_resume_folder_is_accepted(tmp_path):
    folder = tmp_path / "step_000010"
    assert load_config(GRPO_CONFIG, [f"train.resume={folder}"]).train.resume == str(folder)  # checked when the run resumes
    assert load_config(GRPO_CONFIG, ["train.resume=never"]).train.resume == "never"


def test_is_correction_auto_consults_the_objective_capability():
    async_run = ["cluster.runtime=ray", "cluster.max_staleness=1"]
    assert load_config(GRPO_CONFIG, async_run).cluster.is_mode("grpo") == "token"
    assert load_config(GRPO_CONFIG, async_run).cluster.is_mode("vcpo") == "none"  # registered corrects_off_policy
    assert load_config(GRPO_CONFIG, ["cluster.runtime=ray"]).cluster.is_mode("vcpo") == "none"


def test_registered_method_section_unknown_key_names_key_and_closest():
    message = refused("objective.rloo.singleton=reward")
    assert "unknown key 'objective.rloo.singleton' (did you mean 'singleton_advantage'?); valid keys in objective.rloo: singleton_advantage" in message
    assert "unknown key 'objective.rlo' (did you mean 'rloo'?)" in refused("objective.rlo.singleton_advantage=reward")
