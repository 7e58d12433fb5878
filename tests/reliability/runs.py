"""Tiny training runs for the reliability tests, in a subprocess of the `rlpost` CLI (optionally with a fault).

The model is a random 2-layer Llama with SmolLM2's tokenizer (the `tiny_chat_model_path` fixture); the parity
reward gives about half the completions a point, so every step moves the weights and a step trained twice
or skipped would change every later metric.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.runs import TINY_RUN as TRAINER_TINY_RUN
from tests.e2e.runs import on_tiny_model
from tests.reliability.faults import FAULT_ENV, Fault

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "grpo.yaml"
STEPS = 4
CHECKPOINT_EVERY = 2


def tiny_run(model: str, output_dir: Path, *overrides: str) -> list[str]:
    """Overrides of a 4-step run checkpointed every 2 steps, without evaluation; later overrides win."""
    return [
        *TRAINER_TINY_RUN,
        *on_tiny_model(model),
        "learner.mixed_precision=no",
        "data.test=null",
        "train.threads=1",
        f"train.steps={STEPS}",
        f"checkpoint.every_steps={CHECKPOINT_EVERY}",
        f"train.output_dir={output_dir}",
        *overrides,
    ]


SUBPROCESS_TIMEOUT = 900
"""Seconds an `rlpost` process may run: a hang guard (a tiny run takes seconds), not a speed limit."""


def rlpost(*args: str, fault: Fault | None = None) -> subprocess.CompletedProcess:
    """`rlpost ARGS` in a fresh process, with `fault` injected (see faults.py); never raises on failure
    (except `subprocess.TimeoutExpired` for a process that hangs; it is killed)."""
    env = {key: value for key, value in os.environ.items() if key != FAULT_ENV}
    env["PYTHONPATH"] = str(REPO)
    if fault is not None:
        env[FAULT_ENV] = fault.spec
    return subprocess.run(
        [sys.executable, "-m", "tests.reliability.faults", *args],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=SUBPROCESS_TIMEOUT,
    )


def train(overrides: list[str], fault: Fault | None = None) -> subprocess.CompletedProcess:
    return rlpost("train", str(QUICKSTART), *overrides, fault=fault)


def comparable(records: list[dict]) -> list[dict]:
    """Metric records without the timing, throughput and memory metrics (`perf/*`), which differ run to run."""
    return [{key: value for key, value in record.items() if not key.startswith("perf/")} for record in records]
