"""Training learns: a scripted reward rises through the real engine, learner and objective in 15 steps.

The policy is the tiny 2-layer random Llama of `tiny_chat_model_path` (SmolLM2's tokenizer), with
its tied embeddings scaled up 20x: at the fixture's scale every one of the 49,152 tokens is about
equally likely, so 15 steps of 32 completions never sample the same tokens twice and nothing can
be reinforced; scaled up, each context has a few hundred likely tokens, as a trained model has.
The reward (tests/support/target_token_reward.py) pays for space-led tokens, 65% of the vocabulary,
so an untrained policy scores about 0.65 with plenty of variance within a group.

The pass margin is derived from the run's own noise, not fixed: a step's mean reward averages
`N` completions, so its sampling standard error is `reward/std / sqrt(N)`; the mean of the first
(last) `K` steps has standard error sqrt(mean of the steps' std^2 / (K * N)), and the test asks
the last-steps mean to exceed the first-steps mean by 3 standard errors of the difference
(a gain that noise alone produces with probability about 0.1%).

Measured while writing it (seed 0, 2 shared CPU cores, about 40-60 s per objective): GRPO went
from 0.682 (first 3 steps) to 0.999 (last 3), margin 0.094; RLOO from 0.673 to 1.000, margin 0.097.
With the advantages' sign deliberately flipped (patched in the process, never committed) the
reward fell instead, GRPO 0.676 -> 0.001 and RLOO 0.668 -> 0.001, and the test failed for both.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlpost.config import load_config
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.e2e.runs import GRPO_CONFIG

pytestmark = pytest.mark.slow

REWARD_FILE = Path(__file__).resolve().parents[1] / "support" / "target_token_reward.py"
STEPS, PROMPTS, SAMPLES, MAX_TOKENS = 15, 4, 8, 16
EDGE_STEPS = 3
"""Steps averaged at each end of the run."""
STANDARD_ERRORS = 3.0
EMBEDDING_SCALE = 20.0


@pytest.fixture(scope="module")
def peaked_tiny_model(tiny_chat_model_path, tmp_path_factory) -> str:
    """The tiny random chat model with its tied embeddings scaled up: a peaked, not uniform, first policy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_path)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(EMBEDDING_SCALE)
    folder = tmp_path_factory.mktemp("peaked-tiny-chat")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_chat_model_path).save_pretrained(folder)
    return str(folder)


def train_on_scripted_reward(model: str, output_dir: Path, objective: str, seed: int = 0) -> list[dict]:
    reward = f"{{name: '{REWARD_FILE}:space_led_share', kwargs: {{max_tokens: {MAX_TOKENS}}}}}"
    overrides = [
        f"model.path={model}", "data.test=null", "data.arithmetic.train_size=64",
        "rollout.engine=hf", f"rollout.n={SAMPLES}", f"rollout.max_new_tokens={MAX_TOKENS}",
        "rollout.temperature=1.0", "rollout.dtype=float32", "learner.backend=torch",
        f"objective.name={objective}", "optimizer.lr=2.0e-2", f"train.steps={STEPS}",
        f"train.prompts_per_step={PROMPTS}", f"train.seed={seed}", f"reward.functions=[{reward}]",
        "reward.correct_reward=null", "reward.num_workers=1", "eval.every_steps=0", "eval.at_start=false",
        "checkpoint.every_steps=0", "checkpoint.at_end=false", "checkpoint.export_final=false",
        "logging.progress_bar=false", "logging.tensorboard=false", f"train.output_dir={output_dir}",
    ]
    TrainingRun(load_config(GRPO_CONFIG, overrides)).fit()
    return read_metrics(output_dir)


def gain_and_margin(records: list[dict]) -> tuple[float, float, float, float]:
    """(first-steps mean reward, last-steps mean reward, their difference, the noise margin it must exceed)."""
    completions = PROMPTS * SAMPLES
    first, last = records[:EDGE_STEPS], records[-EDGE_STEPS:]

    def mean_and_se(part: list[dict]) -> tuple[float, float]:
        mean = sum(r["reward/mean"] for r in part) / len(part)
        variance = sum(r["reward/std"] ** 2 for r in part) / len(part)
        return mean, math.sqrt(variance / (len(part) * completions))

    (first_mean, first_se), (last_mean, last_se) = mean_and_se(first), mean_and_se(last)
    margin = STANDARD_ERRORS * math.sqrt(first_se**2 + last_se**2)
    return first_mean, last_mean, last_mean - first_mean, margin


@pytest.mark.parametrize("objective", ["grpo", "rloo"])
def test_scripted_reward_rises(peaked_tiny_model, tmp_path, objective):
    records = train_on_scripted_reward(peaked_tiny_model, tmp_path / objective, objective)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    first, last, gain, margin = gain_and_margin(records)
    curve = [round(r["reward/mean"], 3) for r in records]
    assert gain > margin, f"{objective}: first {first:.3f}, last {last:.3f}, gain {gain:.3f} <= margin {margin:.3f}: {curve}"
