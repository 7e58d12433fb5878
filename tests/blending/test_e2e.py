"""End to end: each blending config trains for 3 steps (the tiny model on the parity reward, so rollouts
succeed and fail and both branches run), and a resumed run continues the
controller's schedule exactly (run 2 steps, resume to 3, compare with an uninterrupted 3-step run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlpost.blending import build_controller
from rlpost.config import load_config
from rlpost.io.checkpoint import latest_checkpoint
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.e2e.runs import TINY_RUN as TRAINER_TINY_RUN
from tests.e2e.runs import on_tiny_model

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# The trainer e2e tests' tiny run; later overrides win (the blends need longer demonstrations).
TINY_RUN = [
    *TRAINER_TINY_RUN,
    "rollout.max_new_tokens=16",
    "rollout.engine=hf",
    "train.threads=1",
    "reward.num_workers=1",
]

# Short schedules so that 3 steps exercise warm-up, hybrid steps and (AMFT) meta-gradient steps.
SHORT = {
    "sasr": ["blending.sasr.warmup_steps=1"],
    "hpt": [],
    "amft": ["blending.amft.warmup_steps=1", "blending.amft.meta_update_freq=1", "blending.amft.validation_size=4",
             "blending.amft.entropy_lr=0.05"],
    "srft": [],
}


# With the parity reward (about half the rollouts succeed), these make the 3 steps of the resume test
# take both branches of the controller's decision after the restart point as well as before it.
RESUME = {
    "sasr": ["blending.sasr.seed=1"],  # draws 0.13 (hybrid SFT step: G_last moves), then 0.85 (RL)
    "hpt": ["blending.hpt.gate=1"],  # questions with at most 1 of 3 rollouts right go to SFT
    "amft": [],
    "srft": [],
}


def _train(tmp_path: Path, run: str, name: str, *overrides: str) -> list[dict]:
    config = load_config(CONFIGS / f"{name}.yaml", [*TINY_RUN, *SHORT[name], f"train.output_dir={tmp_path / run}", *overrides])
    TrainingRun(config).fit()
    return read_metrics(tmp_path / run)


def _comparable(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("perf/")}


def _controller_state(run_dir: Path) -> dict:
    folder = latest_checkpoint(run_dir / "checkpoints")
    return json.loads((folder / "trainer.json").read_text())["blending"]


@pytest.mark.parametrize("name", ["sasr", "hpt", "amft", "srft"])
def test_config_trains_end_to_end(tmp_path, tiny_chat_model_path, name):
    records = _train(tmp_path, "run", name, *on_tiny_model(tiny_chat_model_path), "train.steps=3")
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert math.isfinite(record["actor/grad_norm"]) and math.isfinite(record["actor/loss"])
        assert record["blend/rl_weight"] > 0 or record["blend/sft_weight"] > 0
        if record["blend/sft_weight"] > 0:
            assert record["sft/tokens"] > 0 and math.isfinite(record["sft/loss"])
    assert 0.0 <= records[-1]["eval/accuracy"] <= 1.0
    first = records[0]
    if name == "sasr":
        assert first["sasr/warmup"] == 1.0 and first["sasr/step_type"] == 1.0
        assert first["sasr/G_warmup"] == first["actor/grad_norm"]
        assert all(r["sasr/p_sft"] >= 0.05 and r["sasr/p_sft"] <= 0.95 for r in records[1:])
    if name == "hpt":
        for r in records:
            assert r["hpt/sft_questions"] + r["hpt/rl_questions"] == 2
            assert r["blend/sft_sequences"] == r["hpt/sft_questions"]
            assert r["blend/rl_sequences"] == r["hpt/rollout_rows"]
    if name == "amft":
        assert first["amft/warmup"] == 1.0 and first["blend/rl_weight"] == 0.0
        for r in records[1:]:
            assert r["amft/meta_step"] == 1.0 and math.isfinite(r["amft/val_loss"])
            assert 0.05 <= r["amft/mu"] <= 0.95 and r["blend/sft_weight"] == pytest.approx(r["amft/mu"])
    assert (tmp_path / "run" / "final" / "config.json").is_file()


@pytest.mark.parametrize("name", ["sasr", "hpt", "amft", "srft"])
def test_resume_continues_the_controller_schedule(tmp_path, tiny_chat_model_path, name):
    model = [*on_tiny_model(tiny_chat_model_path), *RESUME[name]]
    uninterrupted = _train(tmp_path, "a", name, *model, "train.steps=3")
    first_part = _train(tmp_path, "b", name, *model, "train.steps=2")
    assert [r["step"] for r in first_part] == [1, 2]
    resumed = _train(tmp_path, "b", name, *model, "train.steps=3")
    assert [r["step"] for r in resumed] == [1, 2, 3], "the resumed run must append step 3 only"
    assert _comparable(resumed[-1]) == _comparable(uninterrupted[-1])
    state = _controller_state(tmp_path / "a")
    assert _controller_state(tmp_path / "b") == state
    config = load_config(CONFIGS / f"{name}.yaml", [*SHORT[name], *RESUME[name]])
    assert state != build_controller(config.blending, seed=config.train.seed).state_dict(), "the state must have moved"
    assert state["steps_done"] == 3
    if name == "sasr":
        assert state["g_warmup"] == uninterrupted[0]["actor/grad_norm"]
        assert [r["sasr/step_type"] for r in uninterrupted] == [1.0, 1.0, 0.0]
        assert state["g_last"] == uninterrupted[1]["actor/grad_norm"] != state["g_warmup"]
        assert uninterrupted[2]["sasr/p_sft"] != 0.5, "step 3's probability depends on the restored G_last"
    if name == "hpt":
        routed = [(r["hpt/sft_questions"], r["hpt/rl_questions"]) for r in uninterrupted]
        assert any(sft > 0 for sft, _ in routed) and any(rl > 0 for _, rl in routed)
    if name == "amft":
        assert state["target_entropy"] == uninterrupted[1]["amft/H_target"] and state["hybrid_steps"] == 2
        assert state["mu"] == uninterrupted[2]["amft/mu"] != config.blending.amft.initial_mu
