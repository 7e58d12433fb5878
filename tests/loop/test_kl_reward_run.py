"""configs/kl_reward.yaml trains 3 steps end to end (the tiny budget of tests/e2e/test_method_configs.py):
the KL-in-reward metrics are logged every step and the adaptive coefficient moves after each step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlpost.config import load_config
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.e2e.runs import TINY_RUN, on_tiny_model

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "kl_reward.yaml"


def test_kl_reward_config_trains_three_steps(tmp_path, tiny_chat_model_path):
    config = load_config(
        CONFIG,
        [*TINY_RUN, *on_tiny_model(tiny_chat_model_path), "train.steps=3", "checkpoint.every_steps=0",
         "checkpoint.at_end=false", f"train.output_dir={tmp_path}"],
    )
    assert config.objective.kl_in_reward.enabled and config.objective.kl_in_reward.type == "adaptive"
    TrainingRun(config).fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    coefs = [r["kl_reward/coef"] for r in records]
    assert coefs[0] == config.objective.kl_in_reward.init_coef
    for record in records:
        assert math.isfinite(record["actor/loss"]) and math.isfinite(record["kl_reward/mean_kl"])
    # the step mean KL of step 1 is 0 (policy == reference), so beta shrinks by 20% * 6 sequences / 1000
    assert coefs[1] == pytest.approx(coefs[0] * (1 - 0.2 * 6 / 1000))
    assert records[0]["kl_reward/mean_kl"] == pytest.approx(0.0, abs=1e-6)


def test_a_resumed_run_continues_with_the_checkpointed_coefficient(tmp_path, tiny_chat_model_path):
    from tests.e2e.runs import ONLY_THE_LAST_CHECKPOINT

    def train(name: str, *overrides: str) -> list[dict]:
        config = load_config(CONFIG, [*TINY_RUN, *on_tiny_model(tiny_chat_model_path), f"train.output_dir={tmp_path / name}",
                                      "objective.kl_in_reward.horizon=10", *overrides])
        TrainingRun(config).fit()
        return read_metrics(tmp_path / name)

    uninterrupted = train("a", "train.steps=3", *ONLY_THE_LAST_CHECKPOINT, "checkpoint.at_end=false")
    train("b", "train.steps=2", *ONLY_THE_LAST_CHECKPOINT)
    resumed = train("b", "train.steps=3")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    coefs = [r["kl_reward/coef"] for r in uninterrupted]
    assert coefs[2] != coefs[0], "horizon 10 moves beta visibly: a reset to init_coef would show"
    for key in ("kl_reward/coef", "kl_reward/mean_kl", "actor/loss", "actor/grad_norm"):
        assert resumed[-1][key] == uninterrupted[-1][key], key
