"""Shared builders for the sampler tests: prompts, scored groups, a simulated policy."""

from __future__ import annotations

import numpy as np

from rlpost.samplers.base import PromptSampler
from rlpost.types import Completion, Group, Prompt


def make_prompts(count: int, prefix: str = "q") -> list[Prompt]:
    return [Prompt(prompt_id=f"{prefix}{i}", text=f"question {i}", token_ids=[i]) for i in range(count)]


def make_group(prompt: Prompt, outcomes: list[int], rewards: list[float] | None = None) -> Group:
    """A scored group: one completion per outcome, reward = outcome unless given."""
    completions = [Completion(token_ids=[1], text="x", logprobs=[0.0], finish_reason="stop") for _ in outcomes]
    return Group(
        prompt=prompt,
        completions=completions,
        rewards=[float(o) for o in outcomes] if rewards is None else list(rewards),
        correct=[bool(o) for o in outcomes],
    )


def simulate_groups(batch: list[tuple[Prompt, int]], rates: dict[str, float], step: int, seed: int = 7) -> list[Group]:
    """Bernoulli(rate) outcomes, keyed on the step so a resumed run sees the same ones."""
    rng = np.random.default_rng([seed, step])
    return [make_group(prompt, (rng.random(n) < rates[prompt.prompt_id]).astype(int).tolist()) for prompt, n in batch]


def run_steps(
    sampler: PromptSampler, rates: dict[str, float], steps: range
) -> tuple[list[list[tuple[str, int]]], list[dict[str, float]]]:
    """Draw, score and update for each step; returns the batches (ids and budgets) and metrics."""
    batches, metrics = [], []
    for step in steps:
        batch = sampler.next_batch(step)
        batches.append([(prompt.prompt_id, n) for prompt, n in batch])
        metrics.append(sampler.update(simulate_groups(batch, rates, step)))
    return batches, metrics
