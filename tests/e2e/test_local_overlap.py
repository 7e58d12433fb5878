"""The local runtime with max_staleness 1: the next batch is generated while the learner trains, one
version behind, and the importance-sampling correction is applied to it."""

from __future__ import annotations

import pytest

from rlpost.config import load_config
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.e2e.runs import GRPO_CONFIG, TINY_RUN, on_tiny_model

pytestmark = pytest.mark.slow


def test_local_run_overlaps_generation_with_training(tmp_path, tiny_chat_model_path):
    config = load_config(GRPO_CONFIG, [
        *TINY_RUN, *on_tiny_model(tiny_chat_model_path), "train.steps=3", "cluster.max_staleness=1", "checkpoint.every_steps=0",
        "checkpoint.at_end=false", "checkpoint.export_final=false", f"train.output_dir={tmp_path}",
    ])
    assert config.cluster.is_mode(config.objective.name) == "token"
    run = TrainingRun(config)
    summary = run.fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    # Batch 0 is generated before any step; batches 1 and 2 while the learner trained 0 and 1.
    assert [r["async/staleness_max"] for r in records] == [0.0, 1.0, 1.0]
    assert summary["run/staleness/1"] == 2 * config.train.prompts_per_step
    for record in records[1:]:
        assert 0 < record["is/weight_max"] <= config.cluster.is_cap
        assert record["is/log_ratio_abs_mean"] > 0, "a batch one version behind differs from the learner's policy"
