"""Planning batches: which batches may be drawn, how a round splits into units, seeds, rounds of a
group filter. The real uniform sampler and DAPO's dynamic sampling; groups scored by hand."""

from __future__ import annotations

from rlpost.config.objective import ObjectiveConfig
from rlpost.config.sampler import SamplerConfig
from rlpost.loop.batches import BatchPlanner
from rlpost.loop.setup import round_seed
from rlpost.objectives.registry import get_objective
from rlpost.rollout.common import derive_seed
from rlpost.runtime.executor import Generated
from rlpost.samplers import build_sampler
from rlpost.types import Completion, Group, Prompt

SEED = 3
PROMPTS = [Prompt(prompt_id=f"p{i}", text=f"q{i}", token_ids=[i], row={"question": f"q{i}", "answer": "1"})
           for i in range(12)]


def _planner(objective: str = "grpo", prompts_per_step: int = 2, per_unit: int | None = None) -> BatchPlanner:
    sampler = build_sampler(SamplerConfig(), PROMPTS, prompts_per_step=prompts_per_step, default_n=2, seed=SEED)
    objective_config = ObjectiveConfig(name=objective)
    return BatchPlanner(sampler, get_objective(objective)(objective_config, 16), prompts_per_step, SEED, per_unit)


def _scored(unit, rewards_per_prompt: list[list[float]]) -> Generated:
    groups = []
    for prompt, rewards in zip(unit.prompts, rewards_per_prompt, strict=True):
        completions = [Completion(token_ids=[1], text="x", logprobs=[-0.1], finish_reason="stop") for _ in rewards]
        groups.append(Group(prompt, completions, rewards=list(rewards), correct=[r > 0 for r in rewards]))
    return Generated(unit, groups, {"reward/mean": 0.5}, engine_version=0, rollout_seconds=0.0, reward_seconds=0.0)


def test_batches_are_planned_up_to_max_staleness_ahead():
    planner = _planner()
    first = planner.plan(version=0, max_staleness=0, total_steps=3, engines=1)
    assert [(u.batch_index, u.min_version, u.seed) for u in first] == [(0, 0, round_seed(SEED, 0, 0))]
    assert planner.plan(version=0, max_staleness=0, total_steps=3, engines=1) == []  # batch 1 waits for version 1
    ahead = planner.plan(version=0, max_staleness=2, total_steps=3, engines=1)
    assert [(u.batch_index, u.min_version) for u in ahead] == [(1, -1), (2, 0)]
    assert planner.plan(version=2, max_staleness=2, total_steps=3, engines=1) == []  # no batch 3 of 3 steps


def test_a_round_is_split_over_engines_with_derived_seeds():
    planner = _planner(prompts_per_step=4)
    units = planner.plan(version=0, max_staleness=0, total_steps=1, engines=2)
    assert [len(u.prompts) for u in units] == [2, 2]
    seed = round_seed(SEED, 0, 0)
    assert [u.seed for u in units] == [derive_seed(seed, 0), derive_seed(seed, 1)]
    assert [u.position for u in units] == [0, 1]
    # Scored out of order, assembled in unit order.
    assert planner.on_generated(_scored(units[1], [[1, 0], [0, 1]]), 0, 2) == []
    assert planner.take(0) is None
    planner.on_generated(_scored(units[0], [[1, 1], [0, 0]]), 0, 2)
    batch = planner.take(0)
    assert [g.prompt.prompt_id for g in batch.groups] == [p.prompt_id for u in units for p in u.prompts]
    assert planner.take(0) is None  # taken once


def test_a_group_filter_plans_rounds_until_enough_groups_are_kept():
    planner = _planner(objective="dapo")
    (unit,) = planner.plan(version=0, max_staleness=0, total_steps=1, engines=1)
    # Accuracy all equal in both groups: DAPO keeps neither and asks for round 1.
    (again,) = planner.on_generated(_scored(unit, [[1, 1], [0, 0]]), 0, 1)
    assert (again.round_index, again.seed) == (1, round_seed(SEED, 0, 1))
    assert planner.take(0) is None
    assert planner.on_generated(_scored(again, [[1, 0], [0, 1]]), 0, 1) == []
    batch = planner.take(0)
    assert [g.prompt.prompt_id for g in batch.groups] == [p.prompt_id for p in again.prompts]
    assert batch.filter_metrics["train/num_gen_batches"] == 2
    assert len(batch.sampler_metrics) == 2  # the sampler saw both rounds


def test_the_checkpointed_sampler_state_is_the_one_before_batches_in_flight():
    planner = _planner()
    before = planner.sampler.state_dict()
    planner.plan(version=0, max_staleness=1, total_steps=3, engines=1)  # draws batches 0 and 1
    after_one = planner.sampler_snapshots[1]
    assert planner.sampler_state(0) == before
    assert planner.sampler_state(1) == after_one and 0 not in planner.sampler_snapshots
    assert planner.sampler_state(2) == planner.sampler.state_dict()  # nothing in flight: the current state
