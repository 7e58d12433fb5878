"""Each objective's shipped config trains 3 steps end to end on the real model (tiny budget)."""

from __future__ import annotations

import math

import pytest

from rlpost.config import load_config
from rlpost.io.metrics import read_metrics
from rlpost.trainer import Trainer
from tests.e2e.test_trainer import TINY_RUN

pytestmark = pytest.mark.slow

METHOD_CONFIGS = ["dr_grpo", "dapo", "gspo", "bnpo", "gtpo", "vcpo"]
# The tiny run's 12-token limit is shorter than DAPO's 32-token overlong buffer.
SCALED_DOWN = {"dapo": ["objective.dapo.overlong_buffer=4"]}


@pytest.mark.parametrize("method", METHOD_CONFIGS)
def test_method_config_trains_three_steps(tmp_path, smollm2_path, method):
    config = load_config(
        f"configs/{method}.yaml",
        [*TINY_RUN, "rollout.engine=hf", "train.steps=3", "checkpoint.every_steps=0", f"train.output_dir={tmp_path}",
         *SCALED_DOWN.get(method, [])],
    )
    assert config.objective.name == method
    Trainer(config).fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert math.isfinite(record["actor/loss"])
        assert math.isfinite(record["actor/grad_norm"])
        assert record["policy/version"] == record["step"]
    assert (tmp_path / "final" / "config.json").is_file()
