"""The uniform sampler: the shuffled epoch order, `rollout.n` rollouts per prompt."""

from __future__ import annotations

from rlpost.samplers.base import PromptSampler, register_sampler
from rlpost.types import Prompt


@register_sampler("uniform")
class UniformSampler(PromptSampler):
    """B prompts per step in a seeded per-epoch shuffle, each with `default_n` rollouts."""

    def next_batch(self, step: int) -> list[tuple[Prompt, int]]:
        indices = self.order.take(self.prompts_per_step)
        self.batches_drawn += 1
        return [(self.prompts[i], self.default_n) for i in indices]
