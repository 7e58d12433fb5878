"""The fused log-prob op and the plain full-logits path train identically (same seed, same steps)."""

from __future__ import annotations

import pytest

from rlpost.config import load_config
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.e2e.runs import GRPO_CONFIG, TINY_RUN, on_tiny_model

pytestmark = pytest.mark.slow

COMPARED = ["actor/loss", "actor/grad_norm", "actor/pg_loss", "reward/mean", "response_length/mean"]


def _run(tmp_path, model_path: str, fused: bool) -> list[dict]:
    folder = tmp_path / f"fused-{fused}"
    config = load_config(
        GRPO_CONFIG,
        [*TINY_RUN, *on_tiny_model(model_path), "train.steps=3", "learner.mixed_precision=no", "checkpoint.every_steps=0", "checkpoint.at_end=false",
         f"learner.fused_logprobs={str(fused).lower()}", "learner.logprob_chunk_size=7", f"train.output_dir={folder}"],
    )
    TrainingRun(config).fit()
    return read_metrics(folder)


def test_fused_and_plain_logprobs_give_the_same_training_run(tmp_path, tiny_chat_model_path):
    # The tiny model keeps SmolLM2's 49152-token vocabulary: chunks of 7 tokens over full-vocabulary logits.
    fused, plain = _run(tmp_path, tiny_chat_model_path, True), _run(tmp_path, tiny_chat_model_path, False)
    assert len(fused) == len(plain) == 3
    assert any(abs(record["actor/grad_norm"]) > 0 for record in plain), "a run without gradient compares nothing"
    for a, b in zip(fused, plain, strict=True):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
