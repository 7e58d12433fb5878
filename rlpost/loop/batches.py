"""Planning the generation of training batches: prompts, rounds, seeds, group filtering.

Batch b is planned (its prompts drawn) once the learner has reached b - max_staleness. A round's
requests are split into units for the engines; their scored groups come back in any order and are
assembled in unit order. With a group filter (DAPO's dynamic sampling) rounds repeat until enough
groups are kept. The sampler sees every round's groups (`update`) in round order.

A group filter with a `carry` (DAPO's `carry_surplus`) hands batch b's surplus groups to batch b + 1.
Batches are then settled in index order: batch b + 1 decides whether it is complete, or needs another
round, only once batch b is complete and its carried groups are known, whatever order the rounds
finish in, so the batches are the same on every run and on a resumed one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from rlpost.loop.setup import round_seed
from rlpost.rollout.common import derive_seed
from rlpost.runtime.buffer import WorkUnit, plannable
from rlpost.runtime.executor import Generated
from rlpost.types import Group


@dataclass
class BatchState:
    """Everything generated so far for one training batch."""

    batch_index: int
    group_filter: Any = None
    """A DAPO-style collector (`ready`, `round_size`, `add_groups`, `take`) or None."""
    rounds: list[dict[int, Generated | None]] = field(default_factory=list)
    """Per round: unit position -> its scored unit (None while generating)."""
    sampler_metrics: list[dict[str, float]] = field(default_factory=list)
    reward_metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """(completions, metrics) of every scored unit."""
    groups: list[Group] = field(default_factory=list)
    """Groups accepted so far, in round and unit order."""
    filter_metrics: dict[str, float] = field(default_factory=dict)
    complete: bool = False

    def round_done(self) -> bool:
        return bool(self.rounds) and all(result is not None for result in self.rounds[-1].values())

    def round_results(self) -> list[Generated]:
        last = self.rounds[-1]
        return [last[position] for position in sorted(last)]  # type: ignore[misc]


class BatchPlanner:
    """The batches in flight, from the first drawn prompt to a complete set of groups."""

    def __init__(self, sampler: Any, objective: Any, prompts_per_step: int, seed: int, prompts_per_unit: int | None):
        self.sampler = sampler
        self.objective = objective
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.prompts_per_unit = prompts_per_unit
        self.batches: dict[int, BatchState] = {}
        self.next_index = 0
        self.unit_ids = 0
        self.sampler_snapshots: dict[int, dict] = {}
        """The sampler's state before batch b was drawn: a checkpoint at version b saves it, so a
        resumed run redraws the batches that were in flight."""

    def start_at(self, version: int) -> None:
        self.next_index = version

    def plan(self, version: int, max_staleness: int, total_steps: int, engines: int) -> list[WorkUnit]:
        """The units of every batch that may be planned now (index <= version + max_staleness)."""
        units: list[WorkUnit] = []
        while plannable(self.next_index, version, max_staleness, total_steps):
            index = self.next_index
            self.sampler_snapshots[index] = copy.deepcopy(self.sampler.state_dict())
            batch = BatchState(index, group_filter=self.objective.group_filter(self.prompts_per_step))
            self.batches[index] = batch
            units += self._plan_round(batch, max_staleness, engines)
            self.next_index += 1
        return units

    def _plan_round(self, batch: BatchState, max_staleness: int, engines: int) -> list[WorkUnit]:
        round_index = len(batch.rounds)
        minimum = batch.group_filter.round_size if batch.group_filter is not None else 1
        requests: list = []
        while len(requests) < minimum:
            requests.extend(self.sampler.next_batch(batch.batch_index))
        seed = round_seed(self.seed, batch.batch_index, round_index)
        per_unit = self.prompts_per_unit or math.ceil(len(requests) / max(engines, 1))
        chunks = [requests[start : start + per_unit] for start in range(0, len(requests), per_unit)]
        batch.rounds.append({})
        units = []
        for position, chunk in enumerate(chunks):
            self.unit_ids += 1
            units.append(WorkUnit(
                unit_id=self.unit_ids, batch_index=batch.batch_index, round_index=round_index, position=position,
                prompts=[prompt for prompt, _ in chunk], n_per_prompt=[n for _, n in chunk],
                seed=seed if len(chunks) == 1 else derive_seed(seed, position),
                min_version=batch.batch_index - max_staleness,
            ))
            batch.rounds[-1][position] = None
        return units

    def on_generated(self, event: Generated, max_staleness: int, engines: int) -> list[WorkUnit]:
        """Record a scored unit; the next round's units when its round finished without enough groups."""
        unit = event.unit
        batch = self.batches[unit.batch_index]
        batch.rounds[unit.round_index][unit.position] = event
        if unit.round_index != len(batch.rounds) - 1 or not batch.round_done():
            return []
        results = batch.round_results()
        groups = [group for result in results for group in result.groups]
        batch.sampler_metrics.append(self.sampler.update(groups))
        batch.reward_metrics.extend((result.unit.num_completions, result.reward_metrics) for result in results)
        if batch.group_filter is None:
            batch.groups, batch.complete = groups, True
            return []
        batch.group_filter.add_groups(groups)
        return self._settle(batch, max_staleness, engines)

    def _settle(self, batch: BatchState, max_staleness: int, engines: int) -> list[WorkUnit]:
        """Decide a filtered batch whose last round is done: complete it, or plan its next round. With a
        carry it first waits for the previous batch, then takes that batch's surplus; once complete it
        carries its own surplus on and settles the next batch if that one waits for it."""
        group_filter = batch.group_filter
        carry = getattr(group_filter, "carry", None)
        if carry is not None and group_filter.awaiting_carry:
            previous = self.batches.get(batch.batch_index - 1)
            if previous is not None and not previous.complete:
                return []
            group_filter.receive(carry.get(batch.batch_index))
        if not group_filter.ready:
            return self._plan_round(batch, max_staleness, engines)
        batch.groups, batch.filter_metrics = group_filter.take()
        batch.complete = True
        if carry is None:
            return []
        batch.filter_metrics.update(
            carry.put(batch.batch_index + 1, group_filter.surplus, max_staleness, group_filter.prompts_per_step)
        )
        following = self.batches.get(batch.batch_index + 1)
        if following is not None and not following.complete and following.round_done():
            return self._settle(following, max_staleness, engines)
        return []

    def take(self, index: int) -> BatchState | None:
        """Batch `index` once complete (removed from the planner), else None. Its carried groups are
        forgotten then: a checkpoint after this step keeps only those of the batches to come."""
        batch = self.batches.get(index)
        if batch is None or not batch.complete:
            return None
        carry = getattr(batch.group_filter, "carry", None)
        if carry is not None:
            carry.forget_through(index)
        return self.batches.pop(index)

    def sampler_state(self, version: int) -> dict:
        """The sampler state a checkpoint at `version` saves; forgets older snapshots."""
        for index in [b for b in self.sampler_snapshots if b < version]:
            del self.sampler_snapshots[index]
        return self.sampler_snapshots.get(version, self.sampler.state_dict())
