"""Prompt samplers: which prompts each step rolls out, and how many rollouts each.

`build_sampler(config.sampler, prompts, prompts_per_step=..., default_n=..., seed=...)` returns
one of `UniformSampler`, `VadeSampler`, `KnapsackSampler`; all share the `PromptSampler`
interface (`next_batch`, `update`, `state_dict`, `load_state_dict`).
"""

from rlpost.samplers.allocation import Allocation, allocate_budgets
from rlpost.samplers.base import EpochOrder, PromptSampler, build_sampler
from rlpost.samplers.budget_solver import solve_budget
from rlpost.samplers.knapsack import KnapsackSampler
from rlpost.samplers.outcomes import binary_outcomes, group_metrics, information_score
from rlpost.samplers.uniform import UniformSampler
from rlpost.samplers.vade import VadeSampler

__all__ = [
    "Allocation",
    "EpochOrder",
    "KnapsackSampler",
    "PromptSampler",
    "UniformSampler",
    "VadeSampler",
    "allocate_budgets",
    "binary_outcomes",
    "build_sampler",
    "group_metrics",
    "information_score",
    "solve_budget",
]
