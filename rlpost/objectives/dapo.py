"""DAPO: clip-higher, token-level loss, overlong reward shaping, dynamic sampling.

ALGORITHMS.md §2 (verl DAPO recipe). The loss is GRPO's with the method defaults of
registered method defaults (clip 0.2/0.28, dual clip 10, token-mean); this module adds

- `overlong_penalty` / `DAPO.shape_rewards`: the soft overlong punishment added to the reward;
- `DAPO.sequences_in_loss`: the optional overlong filter (truncated completions leave the loss);
- `filter_groups` and `DynamicSampler`: dynamic sampling, pure helpers the trainer drives;
- `SurplusCarry`: the optional buffer of kept groups beyond a step's prompts (`carry_surplus`).

How the trainer runs dynamic sampling (one training step):

    sampler = DynamicSampler.from_config(cfg.objective.dapo, cfg.train.prompts_per_step)
    while not sampler.ready:                       # raises DynamicSamplingExhausted (on_exhausted=raise)
        groups = generate_and_score(next_prompts(sampler.round_size))
        sampler.add(groups, [filter_values(g, cfg.objective.dapo.filter_metric) for g in groups])
    groups, metrics = sampler.take()               # exactly prompts_per_step whole groups (fewer only
                                                   # with on_exhausted=proceed); log the metrics
    ... rewards -> objective.shape_rewards -> compute_advantages on these groups only ...

With `carry_surplus`, the kept groups beyond prompts_per_step are not dropped: they go first into
the next batch (`rlpost.loop.batches.BatchPlanner` hands them over, in batch order). They keep the
policy version that generated them, so the staleness rule (`cluster.max_staleness`) and the
importance-sampling correction treat them as the stale groups they are; groups that would exceed
max_staleness in the next batch are dropped when carried, so carrying needs max_staleness >= 1.

Filtering uses the raw accuracy (or total score) of each group, before `shape_rewards`, so the
overlong penalty never makes a group look informative (§2.2: use `acc`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import torch
from pydantic import Field, model_validator

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, Metrics
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES
from rlpost.types import Completion, Group, Prompt

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
    carry_surplus: bool = False
    """Carry kept groups beyond prompts_per_step into the next batch (first in it) instead of dropping them. Off
    as in the paper and the verl recipe: carried groups are one step staler than the batch they join, so they
    count against cluster.max_staleness (>= 1 required) and get its importance-sampling correction."""
    carry_max_groups: int | None = Field(None, ge=1)
    """Most groups carried into a batch (the newest are kept); null: prompts_per_step."""

    @model_validator(mode="after")
    def _carry_needs_filtering(self) -> DapoConfig:
        if self.carry_surplus and not self.filter_groups:
            raise ValueError("carry_surplus carries the surplus of dynamic sampling: it needs filter_groups: true")
        return self


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
        self._carry: SurplusCarry | None = None

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
        if not self.config.dapo.filter_groups:
            return None
        return DynamicSampler.from_config(self.config.dapo, prompts_per_step, carry=self.carry)

    @property
    def carry(self) -> SurplusCarry | None:
        """The buffer of surplus groups (`carry_surplus`), shared by this objective's samplers, or None.

        The loop's instance holds it, so it is checkpointed with the loop's objective state."""
        dapo = self.config.dapo
        if not (dapo.carry_surplus and dapo.filter_groups):
            return None
        if self._carry is None:
            self._carry = SurplusCarry(dapo.carry_max_groups)
        return self._carry

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "carry": self.carry.state_dict()} if self.carry is not None else super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({key: value for key, value in state.items() if key != "carry"})
        if self.carry is not None and "carry" in state:
            self.carry.load_state_dict(state["carry"])


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
    (caching them makes the next step off-policy, §2.4), unless a `carry` is given: the sampler
    then waits (`awaiting_carry`) until `receive` hands it the groups carried from the previous
    batch, which come first in its batch, and leaves its own surplus in `surplus` after `take`
    for the trainer to carry on (`SurplusCarry.put`).
    """

    def __init__(
        self,
        prompts_per_step: int,
        *,
        max_gen_batches: int = 10,
        on_exhausted: Literal["raise", "proceed"] = "raise",
        round_size: int | None = None,
        filter_metric: Literal["acc", "score"] = "acc",
        carry: SurplusCarry | None = None,
    ):
        if prompts_per_step < 1:
            raise ValueError("prompts_per_step must be >= 1")
        self.prompts_per_step = prompts_per_step
        self.max_gen_batches = max_gen_batches
        self.on_exhausted = on_exhausted
        self.round_size = round_size or prompts_per_step
        """Prompts the trainer should generate per round."""
        self.filter_metric = filter_metric
        self.carry = carry
        """The buffer of surplus groups between batches, or None (surplus dropped)."""
        self.surplus: list[G] = []
        """Kept groups beyond prompts_per_step of the last `take` (carried on when `carry` is set)."""
        self._reset()

    @classmethod
    def from_config(cls, config: DapoConfig, prompts_per_step: int, carry: SurplusCarry | None = None) -> DynamicSampler:
        return cls(
            prompts_per_step,
            max_gen_batches=config.max_gen_batches,
            on_exhausted=config.on_exhausted,
            round_size=config.gen_batch_prompts,
            filter_metric=config.filter_metric,
            carry=carry,
        )

    def _reset(self) -> None:
        self._kept: list[G] = []
        self._carried: list[G] = []
        self.awaiting_carry = self.carry is not None
        """True until `receive` was called for this batch (with carrying on)."""
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
        """Enough groups are kept (carried ones included), or rounds ran out and the sampler may proceed
        with fewer; never while the carried groups are awaited."""
        if self.awaiting_carry:
            return False
        return self.kept >= self.prompts_per_step or (self.exhausted and self.on_exhausted == "proceed")

    @property
    def kept(self) -> int:
        return len(self._carried) + len(self._kept)

    def receive(self, carried: Sequence[G]) -> None:
        """The groups carried from the previous batch (possibly none): they come first in this batch.
        Raises `DynamicSamplingExhausted` like `add` when rounds already ran out."""
        self._carried = list(carried)
        self.awaiting_carry = False
        self._check_exhausted()

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
        self._check_exhausted()
        return keep

    def _check_exhausted(self) -> None:
        if not self.awaiting_carry and not self.ready and self.exhausted:
            raise DynamicSamplingExhausted(
                f"dynamic sampling kept {self.kept} of {self.prompts_per_step} groups after "
                f"{self.rounds} generation rounds (objective.dapo.max_gen_batches); the data may be too hard "
                "or too easy. Raise max_gen_batches, or set objective.dapo.on_exhausted=proceed"
            )

    def add_groups(self, groups: Sequence[Group]) -> list[bool]:
        """`add` with each group's values read by `filter_values` under this sampler's metric."""
        return self.add(groups, [filter_values(group, self.filter_metric) for group in groups])

    def take(self) -> tuple[list[G], Metrics]:
        """The step's groups (at most prompts_per_step) and the round metrics; resets the sampler."""
        if not self.ready:
            raise RuntimeError("take() before ready: keep adding generation rounds")
        groups = self._carried + self._kept
        batch, self.surplus = groups[: self.prompts_per_step], groups[self.prompts_per_step :]
        generated = max(self._generated, 1)
        metrics: Metrics = {
            "train/num_gen_batches": float(self.rounds),
            "dapo/groups_generated": float(self._generated),
            "dapo/kept_group_frac": len(self._kept) / generated,
            "dapo/surplus_groups_dropped": float(len(self.surplus)) if self.carry is None else 0.0,
            "dapo/short_batch": float(len(batch) < self.prompts_per_step),
            "dapo/gen_solve_all": self._solve_all / generated,
            "dapo/gen_solve_none": self._solve_none / generated,
        }
        if self.carry is not None:
            metrics["dapo/carried_groups"] = float(min(len(self._carried), len(batch)))
        self._reset()
        return batch, metrics


# ---------------------------------------------------------------------------------------------
# the buffer of surplus groups (carry_surplus)


class SurplusCarry:
    """Kept groups beyond a batch's prompts_per_step, held for the next batch (`objective.dapo.carry_surplus`).

    `put(b + 1, ...)` stores batch b's surplus for batch b + 1, minus the groups that would be staler
    than max_staleness when batch b + 1 trains (at learner version b + 1) and, beyond the bound, the
    oldest; `get(b + 1)` reads it. Entries stay until batch b + 1 is trained (`forget_through`), so a
    checkpoint at version v holds the groups batch v starts from, and a resumed run redraws it exactly.
    """

    def __init__(self, max_groups: int | None = None):
        self.max_groups = max_groups
        """Most groups carried into one batch; None: that batch's prompts_per_step."""
        self.pending: dict[int, list[Group]] = {}

    def put(self, target: int, groups: Sequence[Group], max_staleness: int, prompts_per_step: int) -> Metrics:
        """Carry `groups` into batch `target`; the metrics of what was carried and dropped."""
        fresh = [group for group in groups if target - group.policy_version <= max_staleness]
        limit = self.max_groups or prompts_per_step
        carried = fresh[-limit:] if len(fresh) > limit else fresh
        self.pending[target] = carried
        return {
            "dapo/surplus_groups_carried": float(len(carried)),
            "dapo/surplus_groups_dropped": float(len(groups) - len(carried)),
            "dapo/surplus_groups_stale": float(len(groups) - len(fresh)),
        }

    def get(self, target: int) -> list[Group]:
        return list(self.pending.get(target, []))

    def forget_through(self, index: int) -> None:
        """Drop the entries of batches <= `index` (trained)."""
        for target in [t for t in self.pending if t <= index]:
            del self.pending[target]

    def state_dict(self) -> dict[str, Any]:
        return {"pending": {str(t): [group_to_dict(g) for g in groups] for t, groups in self.pending.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = {int(t): [group_from_dict(g) for g in groups] for t, groups in state.get("pending", {}).items()}


def group_to_dict(group: Group) -> dict[str, Any]:
    """A JSON-ready copy of a scored group (checkpoints)."""
    return dataclasses.asdict(group)


def group_from_dict(data: dict[str, Any]) -> Group:
    return Group(
        prompt=Prompt(**data["prompt"]),
        completions=[Completion(**completion) for completion in data["completions"]],
        rewards=list(data["rewards"]),
        reward_components={name: list(values) for name, values in data["reward_components"].items()},
        correct=list(data["correct"]),
    )
