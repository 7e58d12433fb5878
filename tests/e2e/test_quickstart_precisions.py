"""The quickstart's own engine and precisions in a short run: its SFT warm-up (one step here), then an
HPT step with vLLM bf16 rollouts and the DeepSpeed learner in bf16 mixed precision, the real rewards.
Only the sizes are cut down."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rlpost.config import load_config
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.runtime.helpers import RUNTIME_DIR

pytest.importorskip("vllm")
pytest.importorskip("deepspeed")

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.deepspeed]

SMALLER = [
    "train.steps=2", "blending.sft.warmup_steps=1", "blending.sft.warmup_demos=4", "train.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=32",
    "rollout.vllm.enforce_eager=true", "rollout.vllm.kv_cache_space_gib=1", "learner.micro_batch_size=4",
    "data.test=null", "checkpoint.every_steps=0", "checkpoint.at_end=false", "logging.progress_bar=false",
    "logging.tensorboard=false", "data.arithmetic.train_size=16", "optimizer.lr=1e-4", "optimizer.warmup_steps=0",
    # The quickstart's reward, plus one with spread in every group so that the RL step surely has a gradient.
    "reward.functions=[{name: math_verify, weight: 1.0}, "
    f"{{name: '{RUNTIME_DIR / 'rewards.py'}:text_length_reward', weight: 0.1}}]",
]


def test_quickstart_engine_and_precisions_train(tmp_path, smollm2_path):
    config = load_config("configs/quickstart.yaml", [*SMALLER, f"train.output_dir={tmp_path}"])
    assert (config.rollout.engine, config.rollout.dtype) == ("vllm", "bfloat16")
    assert (config.learner.backend, config.learner.mixed_precision) == ("deepspeed", "bf16")
    TrainingRun(config).fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    warmup, hpt = records
    assert warmup["warmup/sft_step"] == 1.0 and "reward/mean" not in warmup
    assert torch.isfinite(torch.tensor([warmup["sft/nll"], warmup["actor/grad_norm"]])).all() and warmup["actor/grad_norm"] > 0
    # HPT trains SFT on a question none of whose rollouts is correct, RL on the others: either loss is there.
    losses = [hpt[key] for key in ("actor/loss", "sft/nll") if key in hpt]
    assert losses and torch.isfinite(torch.tensor([*losses, hpt["actor/grad_norm"]])).all()
    assert hpt["actor/grad_norm"] > 0, "no gradient: the run would not have moved"
    exported = load_file(tmp_path / "final" / "model.safetensors")
    initial = load_file(f"{smollm2_path}/model.safetensors")
    moved = [name for name in initial if not torch.equal(initial[name], exported[name].to(initial[name].dtype))]
    assert moved, "the exported policy equals the initial model"
