"""SFT warm-up before the first rollout (`blending.sft.warmup_steps`).

Supervised steps on the rows' worked solutions teach a small model the answer format and the
arithmetic of the task far more cheaply than RL can: a warm-up step is one learner pass over
`warmup_demos` demonstrations, with nothing generated (on the built-in task, 64 SFT steps of 16
demonstrations took SmolLM2-135M from 0.07 to 0.33 held-out pass@1 in about 5 CPU-minutes, where 30 HPT
steps took 17 to reach 0.23). RL then starts from a policy whose groups have reward variance.

The step is an SFT-only blended step (`BlendPlan.sft_only`), the same learner path SASR's and AMFT's
warm-ups take, so it runs on every runtime. Its demonstrations depend only on the step index (a fixed
shuffled order of the train split), so a resumed run trains on the same ones.
"""

from __future__ import annotations

import random
from typing import Any

from rlpost.blending.base import BlendPlan
from rlpost.blending.demos import Demonstrations
from rlpost.blending.runner import BlendUpdate
from rlpost.runtime.executor import LearnerRequest
from rlpost.types import Prompt


class SftWarmup:
    """The warm-up steps' demonstrations and learner requests."""

    def __init__(self, steps: int, demos_per_step: int, prompts: list[Prompt], demos: Demonstrations, seed: int,
                 lr_scale: float = 1.0):
        self.steps = steps
        self.lr_scale = lr_scale
        self.demos_per_step = demos_per_step
        self.order = list(prompts)
        random.Random(f"sft-warmup-{seed}").shuffle(self.order)
        self.demos = demos

    def prompts(self, step: int) -> list[Prompt]:
        """The prompts whose solutions step `step` trains on: the next `demos_per_step` of the order, cycled."""
        start = step * self.demos_per_step
        return [self.order[(start + i) % len(self.order)] for i in range(self.demos_per_step)]

    def request(self, step: int) -> tuple[LearnerRequest, dict[str, float]]:
        """The SFT-only optimizer step `step` and its metrics."""
        prompts = self.prompts(step)
        plan = BlendPlan.sft_only(len(prompts), lr_scale=self.lr_scale)
        update = BlendUpdate(plan, controller=None, sft_batch=self.demos.batch(prompts), validation_batch=None)
        return LearnerRequest(step, None, None, blend=update), {"warmup/sft_step": 1.0, "warmup/demos": float(len(prompts))}


def build_warmup(config: Any, train_prompts: list[Prompt], demos: Demonstrations | None) -> SftWarmup | None:
    """The run's warm-up, or None when `blending.sft.warmup_steps` is 0."""
    sft = config.blending.sft
    if sft.warmup_steps == 0:
        return None
    if demos is None:
        raise ValueError("blending.sft.warmup_steps needs the demonstration builder (rlpost.loop.parts builds it)")
    lr_scale = sft.warmup_lr / config.optimizer.lr if sft.warmup_lr is not None else 1.0
    return SftWarmup(sft.warmup_steps, sft.warmup_demos, train_prompts, demos, config.train.seed, lr_scale)
