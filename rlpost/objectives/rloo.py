"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv 2402.14740; verl `compute_rloo_outcome_advantage`).

Each completion's baseline is the mean reward of the *other* completions of its prompt:
A_i = r_i - (1/(N-1)) Σ_{j≠i} r_j = N/(N-1)·(r_i - mean_g), for a group of N >= 2. No std division.
The baseline does not contain r_i, so the estimate is unbiased (the mean-baseline advantage
r_i - mean_g is RLOO's times (N-1)/N). The loss is GRPO's clipped surrogate; the published RLOO is
REINFORCE, which has the same gradient at ratio 1 (one update per batch), up to the aggregation.

A completion alone in its group has no other sample to form a baseline: its advantage is 0 (as
GRPO's, §0.4), or its raw reward with `rloo.singleton_advantage: reward` (verl's baseline 0).
All-equal groups give exactly 0.
"""

from __future__ import annotations

from typing import Literal

import torch

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, Metrics
from rlpost.objectives.core import group_statistics
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES


class RlooConfig(Section):
    """Leave-one-out baseline of completions alone in their group."""

    singleton_advantage: Literal["zero", "reward"] = "zero"
    """Advantage of a completion alone in its group: `zero` (no baseline, no signal; as GRPO) or
    `reward` (baseline 0, A = r: verl's RLOO)."""


def leave_one_out_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, *, singleton_reward: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [N], in_group [N] bool): A_i = N/(N-1)·(r_i - mean_g) per group of N >= 2.

    `in_group` marks completions with at least one other in their group (a leave-one-out baseline
    exists). Singletons get 0, or r_i with `singleton_reward`. All-equal groups give exactly 0.
    """
    stats = group_statistics(rewards, group_index)
    size = stats.size[stats.ids]
    in_group = size > 1
    scaled = stats.centred(rewards) * size / (size - 1).clamp(min=1.0)
    singleton = rewards.to(torch.float64) if singleton_reward else torch.zeros_like(scaled)
    advantages = torch.where(in_group, scaled, singleton)
    return advantages.to(rewards.dtype if rewards.is_floating_point() else torch.float32), in_group


@OBJECTIVES.register("rloo", config=RlooConfig, defaults={"normalize_adv_by_std": False}, group_relative=True)
class RLOO(GRPO):
    """A_i = r_i - mean_{j≠i} r_j; loss = GRPO's clipped surrogate (+ optional KL and entropy terms)."""

    name = "rloo"

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        singleton_reward = self.config.rloo.singleton_advantage == "reward"
        advantages, in_group = leave_one_out_advantages(inputs.rewards, inputs.group_index, singleton_reward=singleton_reward)
        metrics = self.advantage_metrics(inputs, advantages)
        baselines = (inputs.rewards.to(torch.float64) - advantages.to(torch.float64))[in_group]
        # The mean leave-one-out baseline; the mean reward when every group is a singleton (none exists).
        metrics["rloo/baseline_mean"] = float(baselines.mean()) if baselines.numel() else 0.0
        metrics["rloo/in_group_frac"] = float(in_group.double().mean()) if in_group.numel() else 0.0
        return advantages, metrics
