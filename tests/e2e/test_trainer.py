"""End to end: train, checkpoint, resume exactly and export (the tiny model: the loop's mechanics), and
evaluate the real SmolLM2 model from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from rlpost.config import load_config
from rlpost.io.checkpoint import latest_checkpoint
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.e2e.runs import GRPO_CONFIG, ONLY_THE_LAST_CHECKPOINT, TINY_RUN, on_tiny_model

pytestmark = pytest.mark.slow


def _train(tmp_path, name: str, *overrides: str) -> list[dict]:
    config = load_config(GRPO_CONFIG, [*TINY_RUN, f"train.output_dir={tmp_path / name}", *overrides])
    TrainingRun(config).fit()
    return read_metrics(tmp_path / name)


def _comparable(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("perf/")}


def test_resumed_run_matches_uninterrupted_run(tmp_path, tiny_chat_model_path):
    tiny = on_tiny_model(tiny_chat_model_path)
    uninterrupted = _train(tmp_path, "a", *tiny, "train.steps=3", *ONLY_THE_LAST_CHECKPOINT, "checkpoint.at_end=false")
    first_part = _train(tmp_path, "b", *tiny, "train.steps=2", *ONLY_THE_LAST_CHECKPOINT)
    assert [r["step"] for r in first_part] == [1, 2]
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "ckpt-00000002"
    resumed = _train(tmp_path, "b", *tiny, "train.steps=3")
    assert [r["step"] for r in resumed] == [1, 2, 3], "the resumed run must append step 3 only"
    assert all(record["actor/grad_norm"] > 0 for record in uninterrupted), "a run without gradient compares nothing"
    assert _comparable(resumed[-1]) == _comparable(uninterrupted[-1])
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "final")
    assert final.config.vocab_size == 49152


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, tiny_chat_model_path):
    from rlpost.io.checkpoint import CheckpointError

    tiny = on_tiny_model(tiny_chat_model_path)
    _train(tmp_path, "c", *tiny, "train.steps=1", *ONLY_THE_LAST_CHECKPOINT)
    with pytest.raises(CheckpointError, match="different config"):
        _train(tmp_path, "c", *tiny, "train.steps=2", "objective.clip_high=0.28")


def test_cli_eval_writes_pass_at_k_json(tmp_path, smollm2_path):
    data = tmp_path / "problems.jsonl"
    data.write_text("\n".join(json.dumps({"q": f"What is {a} + {a}?", "a": str(2 * a)}) for a in (1, 2, 3)) + "\n")
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "eval", "--model", smollm2_path, "--data", str(data),
         "--question-field", "q", "--answer-field", "a", "--samples", "2", "--max-new-tokens", "24",
         "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert summary["problems"] == 3 and set(summary) >= {"pass@1", "pass@2", "boxed_rate"}
    assert 0.0 <= summary["pass@1"] <= summary["pass@2"] <= 1.0
    assert len(saved["result"]["problems"]) == 3
    assert all(problem["samples"] == 2 for problem in saved["result"]["problems"])
