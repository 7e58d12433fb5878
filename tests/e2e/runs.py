"""Override lists shared by the end-to-end tests: a tiny budget, and the tiny model that keeps a run in seconds.

`TINY_RUN` keeps the config's model (SmolLM2 by default) and shrinks the budget. `on_tiny_model(path)`
switches to a random 2-layer Llama with SmolLM2's tokenizer (the `tiny_chat_model_path` fixture) and a
reward it earns about half the time (completions of even length), so every group has reward spread,
the policy gradient is never zero and the weights really move. Tests whose subject is the real model
(its precisions, its engine, its answers) keep SmolLM2; tests of the loop's mechanics use the tiny one.
"""

from __future__ import annotations

from pathlib import Path

PARITY_REWARD = Path(__file__).resolve().parents[1] / "blending" / "parity_reward.py"
GRPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "grpo.yaml"
"""GRPO on the quickstart's model and task: the base of every method's config (the quickstart itself adds
an SFT warm-up and HPT), and the config of the tests of the loop's mechanics."""

TINY_RUN = [
    "train.prompts_per_step=2",
    "rollout.n=3",
    "rollout.max_new_tokens=12",
    "rollout.dtype=float32",
    "learner.backend=torch",
    "eval.num_problems=3",
    "eval.every_steps=0",
    "eval.at_start=false",
    "checkpoint.every_steps=1",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "data.arithmetic.train_size=50",
    "data.arithmetic.test_size=10",
]

# Checkpoints and exports a comparison does not read: each costs seconds of disk writes.
ONLY_THE_LAST_CHECKPOINT = ["checkpoint.every_steps=0", "checkpoint.export_final=false"]


def on_tiny_model(model_path: str) -> list[str]:
    """Overrides that train the tiny random model with the HF engine on the parity reward (about half the completions earn 1)."""
    return [
        f"model.path={model_path}",
        "rollout.engine=hf",  # vLLM's CPU attention has no kernel for the tiny model's head size (8)
        f"reward.functions=[{{name: '{PARITY_REWARD}:parity'}}]",
        "reward.correct_reward=null",
        "reward.num_workers=1",
        "optimizer.lr=1.0e-3",
    ]
