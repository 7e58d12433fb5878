"""Knapsack RL sampler: epoch-order prompts, knapsack-allocated rollout budgets (ALGORITHMS.md §11).

Each step takes the next B prompts of the shuffled epoch order and splits B * rollout.n rollouts
among them with `allocate_budgets`, from each prompt's history (§11.2):

- outcomes are the completions' `correct` flags as 0/1 (the reference maps rewards -1 -> 0);
- p_hat is the success rate of the prompt's previous visit; a visit with fewer than
  `reward_buffer_length` outcomes is extended with the most recent earlier ones up to that many;
- the estimate is valid once the prompt has `min_buffer_length` outcomes in total.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlpost.samplers.allocation import Allocation, KnapsackConfig, allocate_budgets
from rlpost.samplers.base import PromptSampler, register_sampler
from rlpost.samplers.outcomes import binary_outcomes
from rlpost.types import Group, Prompt


def visit_estimate(recent: list[int], outcomes: list[int], buffer_length: int) -> tuple[float, list[int]]:
    """p_hat after a visit with `outcomes`, and the new buffer of the last `buffer_length` outcomes.

    `recent` holds the prompt's latest outcomes before this visit (oldest first).
    """
    buffer = (recent + outcomes)[-buffer_length:]
    window = outcomes if len(outcomes) >= buffer_length else buffer
    return float(np.mean(window)), buffer


@register_sampler("knapsack", config=KnapsackConfig)
class KnapsackSampler(PromptSampler):
    """B prompts per step in epoch order, with unequal rollout budgets summing to B * n."""

    def __init__(
        self,
        prompts: list[Prompt],
        *,
        prompts_per_step: int,
        default_n: int,
        seed: int,
        config: KnapsackConfig | None = None,
    ) -> None:
        super().__init__(prompts, prompts_per_step=prompts_per_step, default_n=default_n, seed=seed)
        self.config = config or KnapsackConfig()
        for key in ("min_n", "negative_n", "positive_n"):
            value = getattr(self.config, key)
            if value > default_n:
                raise ValueError(
                    f"sampler.knapsack.{key} ({value}) exceeds rollout.n ({default_n}): "
                    "base allocations must fit in the per-prompt budget"
                )
        self._reset_history()

    def _reset_history(self) -> None:
        size = len(self.prompts)
        self.p_hat = np.zeros(size)
        self.count = np.zeros(size, dtype=np.int64)
        self.recent: dict[int, list[int]] = {}

    def next_batch(self, step: int) -> list[tuple[Prompt, int]]:
        indices = self.order.take(self.prompts_per_step)
        self.batches_drawn += 1
        valid = self.count[indices] >= self.config.min_buffer_length
        allocation = allocate_budgets(valid, self.p_hat[indices], n=self.default_n, config=self.config)
        self.pending_metrics = self._allocation_metrics(allocation, valid, self.p_hat[indices])
        # A prompt with budget 0 (negative_n or positive_n = 0) is skipped this step.
        return [(self.prompts[i], int(k)) for i, k in zip(indices, allocation.budgets, strict=True) if k > 0]

    @staticmethod
    def _allocation_metrics(allocation: Allocation, valid: np.ndarray, p_hat: np.ndarray) -> dict[str, float]:
        """§11.7 keys, plus the p_hat histogram in four bins (unknown, 0, (0, 1), 1)."""
        budgets = allocation.budgets
        return {
            "sampler/knapsack/max_budget": float(budgets.max()),
            "sampler/knapsack/min_budget": float(budgets.min()),
            "sampler/knapsack/covered_prompts": float(np.sum(budgets > 0)),
            "sampler/knapsack/fallback": float(allocation.fallback),
            "sampler/knapsack/fallback_effective_ratio": float(allocation.fallback_effective_ratio),
            "sampler/knapsack/unknown_prompts": float(np.sum(~valid)),
            "sampler/knapsack/p_hat_zero": float(np.sum(valid & (p_hat == 0.0))),
            "sampler/knapsack/p_hat_mid": float(np.sum(allocation.eligible)),
            "sampler/knapsack/p_hat_one": float(np.sum(valid & (p_hat == 1.0))),
            "sampler/knapsack/p_hat_mean": float(p_hat[valid].mean()) if valid.any() else 0.0,
        }

    def _learn(self, groups: list[Group]) -> dict[str, float]:
        for index, group in zip(self._indices_of(groups), groups, strict=True):
            outcomes = binary_outcomes(group)
            if not outcomes:
                continue
            self.p_hat[index], self.recent[index] = visit_estimate(
                self.recent.get(index, []), outcomes, self.config.reward_buffer_length
            )
            self.count[index] += len(outcomes)
        return {}

    def estimate(self, prompt_id: str) -> tuple[bool, float, int]:
        """(valid, p_hat, count) of a prompt: the reference's reward state."""
        index = self.index_of[prompt_id]
        count = int(self.count[index])
        return count >= self.config.min_buffer_length, float(self.p_hat[index]), count

    def _extra_state(self) -> dict[str, Any]:
        return {
            "history": {
                self.prompts[i].prompt_id: {
                    "p_hat": float(self.p_hat[i]),
                    "count": int(self.count[i]),
                    "recent": list(self.recent[i]),
                }
                for i in sorted(self.recent)
            }
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._reset_history()
        for prompt_id, entry in state["history"].items():
            index = self.index_of[prompt_id]
            self.p_hat[index] = float(entry["p_hat"])
            self.count[index] = int(entry["count"])
            self.recent[index] = [int(x) for x in entry["recent"]]
