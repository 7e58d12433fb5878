"""Prompt samplers: which prompts each step rolls out, and how many rollouts each.

`build_sampler(config.sampler, prompts, prompts_per_step=..., default_n=..., seed=...)` returns
the sampler registered under `config.name` (`SAMPLERS`: `UniformSampler`, `VadeSampler`,
`KnapsackSampler`, ...); all share the `PromptSampler` interface (`next_batch`, `update`,
`state_dict`, `load_state_dict`). A new sampler is one module of this package with a
`@register_sampler("name", config=ItsSection)` class.
"""

from rlpost.samplers.allocation import Allocation, KnapsackConfig, allocate_budgets
from rlpost.samplers.base import SAMPLERS, EpochOrder, PromptSampler, register_sampler
from rlpost.samplers.budget_solver import solve_budget
from rlpost.samplers.factory import build_sampler
from rlpost.samplers.knapsack import KnapsackSampler
from rlpost.samplers.outcomes import binary_outcomes, group_metrics, information_score
from rlpost.samplers.uniform import UniformSampler
from rlpost.samplers.vade import VadeConfig, VadeSampler

__all__ = [
    "SAMPLERS",
    "Allocation",
    "EpochOrder",
    "KnapsackConfig",
    "KnapsackSampler",
    "PromptSampler",
    "UniformSampler",
    "VadeConfig",
    "VadeSampler",
    "allocate_budgets",
    "binary_outcomes",
    "build_sampler",
    "group_metrics",
    "information_score",
    "register_sampler",
    "solve_budget",
]
