"""DAPO: clip-higher, token-level loss, overlong reward shaping, dynamic sampling.

ALGORITHMS.md §2 (verl DAPO recipe). The loss is GRPO's with the method defaults of
registered method defaults (clip 0.2/0.28, dual clip 10, token-mean); this module adds

- `overlong_penalty` / `DAPO.shape_rewards`: the soft overlong punishment added to the reward;
- `DAPO.sequences_in_loss`: the optional overlong filter (truncated completions leave the loss);
- `filter_groups` and `DynamicSampler`: dynamic sampling, pure helpers the trainer drives.

How the trainer runs dynamic sampling (one training step):

    sampler = DynamicSampler.from_config(cfg.objective.dapo, cfg.train.prompts_per_step)
    while not sampler.ready:                       # raises DynamicSamplingExhausted (on_exhausted=raise)
        groups = generate_and_score(next_prompts(sampler.round_size))
        sampler.add(groups, [filter_values(g, cfg.objective.dapo.filter_metric) for g in groups])
    groups, metrics = sampler.take()               # exactly prompts_per_step whole groups (fewer only
                                                   # with on_exhausted=proceed); log the metrics
    ... rewards -> objective.shape_rewards -> compute_advantages on these groups only ...

Filtering uses the raw accuracy (or total score) of each group, before `shape_rewards`, so the
overlong penalty never makes a group look informative (§2.2: use `acc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, Metrics
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES
from rlpost.types import Group

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import ObjectiveConfig

DEFAULT_BUFFER_FRACTION = 0.2
"""Overlong buffer as a fraction of L_max when unset: the recipe's 4096 of 20480."""


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, penalty_factor: float = 1.0) -> torch.Tensor:
    """Soft overlong punishment per sequence, [N] lengths -> [N] penalties in [-penalty_factor, 0].

    0 up to L_max - buffer, then a linear ramp reaching -penalty_factor at L_max (verl
    DAPORewardManager). The floor at -penalty_factor stands for the paper's -1 beyond L_max,
    which the code never reaches because generation stops at L_max.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer must be in 1..L_max={max_length}, got {buffer}")
    exceed = lengths.to(torch.float64) - (max_length - buffer)
    penalty = torch.clamp(-exceed / buffer * penalty_factor, max=0.0)
    return torch.clamp(penalty, min=-penalty_factor)


class DapoConfig(Section):
    """Overlong reward shaping and dynamic sampling."""

    overlong_shaping: bool = True
    """Add the soft overlong penalty to the reward of completions longer than L_max - overlong_buffer."""
    overlong_buffer: int | None = Field(None, ge=1)
    """Length of the penalty ramp L_cache in tokens; null uses 20% of L_max (the recipe's 4096 of 20480)."""
    overlong_penalty_factor: float = Field(1.0, ge=0)
    """Penalty at L_max (the ramp goes from 0 to -penalty_factor across the buffer)."""
    overlong_filter: bool = False
    """Exclude truncated completions from the loss (paper option; off in the recipe and the best paper run)."""
    filter_groups: bool = True
    """Dynamic sampling: drop groups whose filter metric is the same for all completions, sample more prompts."""
    filter_metric: Literal["acc", "score"] = "acc"
    """Value whose within-group spread decides if a group is kept: `acc` (correctness; the recipe) or `score` (total reward)."""
    gen_batch_prompts: int | None = Field(None, ge=1)
    """Prompts generated per dynamic-sampling round; null uses train.prompts_per_step (the recipe uses 3x)."""
    max_gen_batches: int = Field(10, ge=0)
    """Generation rounds allowed per step before giving up (0: unlimited)."""
    on_exhausted: Literal["raise", "proceed"] = "raise"
    """When max_gen_batches rounds keep too few groups: stop with an error (the recipe) or train on the groups kept."""


# §2.3 (verl DAPO recipe): clip-higher, dual clip 10, token-level loss.
@OBJECTIVES.register(
    "dapo", config=DapoConfig, defaults={"clip_low": 0.2, "clip_high": 0.28, "clip_c": 10.0, "loss_agg": "token-mean"},
    group_relative=True,
)
class DAPO(GRPO):
    name = "dapo"

    def __init__(self, config: ObjectiveConfig, max_response_length: int):
        super().__init__(config, max_response_length)
        dapo = config.dapo
        self.overlong_buffer = dapo.overlong_buffer or max(1, round(DEFAULT_BUFFER_FRACTION * max_response_length))
        if dapo.overlong_shaping and self.overlong_buffer > max_response_length:
            raise ValueError(
                f"objective.dapo.overlong_buffer={self.overlong_buffer} exceeds rollout.max_new_tokens="
                f"{max_response_length}: every completion would be penalised"
            )

    def shape_rewards(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        dapo = self.config.dapo
        if not dapo.overlong_shaping:
            return inputs.rewards, {}
        penalty = overlong_penalty(
            inputs.response_lengths, self.max_response_length, self.overlong_buffer, dapo.overlong_penalty_factor
        )
        metrics = {
            "dapo/overlong_reward_mean": float(penalty.mean()) if penalty.numel() else 0.0,
            "dapo/overlong_frac": float((penalty < 0).double().mean()) if penalty.numel() else 0.0,
        }
        return inputs.rewards + penalty.to(inputs.rewards.dtype), metrics

    def sequences_in_loss(self, inputs: AdvantageInputs) -> torch.Tensor | None:
        return ~inputs.truncated if self.config.dapo.overlong_filter else None

    def group_filter(self, prompts_per_step: int) -> DynamicSampler | None:
        return DynamicSampler.from_config(self.config.dapo, prompts_per_step) if self.config.dapo.filter_groups else None


# ---------------------------------------------------------------------------------------------
# dynamic sampling (torch-free)


def filter_groups(groups_values: Sequence[Sequence[float]]) -> list[bool]:
    """Keep mask of dynamic sampling: a group is kept iff its values are not all equal
    (population std > 0) or it has a single member (the recipe keeps those).
    groups_values: one list of filter values (e.g. accuracies) per group."""
    return [len(values) == 1 or max(values) != min(values) for values in groups_values]


def filter_values(group: Group, metric: Literal["acc", "score"] = "acc") -> list[float]:
    """The values of `group` that `filter_groups` compares: accuracy (recommended) or total reward."""
    if metric == "acc":
        return [float(c) for c in group.correct]
    return [float(r) for r in group.rewards]


class DynamicSamplingExhausted(RuntimeError):
    """max_gen_batches rounds kept fewer informative groups than a step needs (data too hard or too easy)."""


G = TypeVar("G")


class DynamicSampler(Generic[G]):
    """Collects informative groups over generation rounds until one step's worth is kept.

    Stateless across steps (`take` resets it), so it needs no checkpointing. Groups are kept
    whole and in arrival order; surplus groups of the last round are dropped and counted
    (caching them would make the next step off-policy, §2.4).
    """

    def __init__(
        self,
        prompts_per_step: int,
        *,
        max_gen_batches: int = 10,
        on_exhausted: Literal["raise", "proceed"] = "raise",
        round_size: int | None = None,
        filter_metric: Literal["acc", "score"] = "acc",
    ):
        if prompts_per_step < 1:
            raise ValueError("prompts_per_step must be >= 1")
        self.prompts_per_step = prompts_per_step
        self.max_gen_batches = max_gen_batches
        self.on_exhausted = on_exhausted
        self.round_size = round_size or prompts_per_step
        """Prompts the trainer should generate per round."""
        self.filter_metric = filter_metric
        self._reset()

    @classmethod
    def from_config(cls, config: DapoConfig, prompts_per_step: int) -> DynamicSampler:
        return cls(
            prompts_per_step,
            max_gen_batches=config.max_gen_batches,
            on_exhausted=config.on_exhausted,
            round_size=config.gen_batch_prompts,
            filter_metric=config.filter_metric,
        )

    def _reset(self) -> None:
        self._kept: list[G] = []
        self.rounds = 0
        self._generated = 0
        self._solve_all = 0
        self._solve_none = 0

    @property
    def exhausted(self) -> bool:
        """No more rounds allowed (max_gen_batches <= 0 means unlimited, as in verl)."""
        return self.max_gen_batches > 0 and self.rounds >= self.max_gen_batches

    @property
    def ready(self) -> bool:
        """Enough groups are kept, or rounds ran out and the sampler may proceed with fewer."""
        return len(self._kept) >= self.prompts_per_step or (self.exhausted and self.on_exhausted == "proceed")

    @property
    def kept(self) -> int:
        return len(self._kept)

    def add(self, groups: Sequence[G], values: Sequence[Sequence[float]]) -> list[bool]:
        """Record one generation round; returns its keep mask. Raises `DynamicSamplingExhausted`
        when this was the last allowed round, too few groups are kept, and on_exhausted=raise."""
        if len(groups) != len(values):
            raise ValueError(f"{len(groups)} groups but {len(values)} value lists")
        keep = filter_groups(values)
        self.rounds += 1
        self._generated += len(groups)
        self._solve_all += sum(1 for v in values if min(v) > 0)
        self._solve_none += sum(1 for v in values if max(v) <= 0)
        self._kept.extend(group for group, k in zip(groups, keep) if k)
        if not self.ready and self.exhausted:
            raise DynamicSamplingExhausted(
                f"dynamic sampling kept {len(self._kept)} of {self.prompts_per_step} groups after "
                f"{self.rounds} generation rounds (objective.dapo.max_gen_batches); the data may be too hard "
                "or too easy. Raise max_gen_batches, or set objective.dapo.on_exhausted=proceed"
            )
        return keep

    def add_groups(self, groups: Sequence[Group]) -> list[bool]:
        """`add` with each group's values read by `filter_values` under this sampler's metric."""
        return self.add(groups, [filter_values(group, self.filter_metric) for group in groups])

    def take(self) -> tuple[list[G], Metrics]:
        """The step's groups (at most prompts_per_step) and the round metrics; resets the sampler."""
        if not self.ready:
            raise RuntimeError("take() before ready: keep adding generation rounds")
        batch = self._kept[: self.prompts_per_step]
        generated = max(self._generated, 1)
        metrics: Metrics = {
            "train/num_gen_batches": float(self.rounds),
            "dapo/groups_generated": float(self._generated),
            "dapo/kept_group_frac": len(self._kept) / generated,
            "dapo/surplus_groups_dropped": float(len(self._kept) - len(batch)),
            "dapo/short_batch": float(len(batch) < self.prompts_per_step),
            "dapo/gen_solve_all": self._solve_all / generated,
            "dapo/gen_solve_none": self._solve_none / generated,
        }
        self._reset()
        return batch, metrics
