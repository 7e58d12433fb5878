"""DAPO's carried surplus in the batch planner: batch b's surplus groups open batch b + 1, batches settle in
index order whatever order their rounds finish in, stale groups are dropped, and the carry survives a
checkpoint (the loop's objective state) so a resumed run draws the same batch. Groups scored by hand."""

from __future__ import annotations

import json

import pytest

from rlpost.config import ConfigError, load_config
from rlpost.config.objective import ObjectiveConfig
from rlpost.config.sampler import SamplerConfig
from rlpost.loop.batches import BatchPlanner
from rlpost.objectives.registry import get_objective
from rlpost.preflight import check_combinations
from rlpost.runtime.executor import Generated
from rlpost.samplers import build_sampler
from rlpost.types import Completion, Group, Prompt
from tests.e2e.runs import GRPO_CONFIG

SEED = 5
PROMPTS = [Prompt(prompt_id=f"p{i}", text=f"q{i}", token_ids=[i], row={"question": f"q{i}", "answer": "1"})
           for i in range(12)]
CARRY = {"carry_surplus": True, "gen_batch_prompts": 4, "max_gen_batches": 3}
"""Rounds of 4 prompts (two draws of the uniform sampler) for batches of 2 groups."""


def _planner(sampler_state: dict | None = None, objective_state: dict | None = None) -> BatchPlanner:
    sampler = build_sampler(SamplerConfig(), PROMPTS, prompts_per_step=2, default_n=2, seed=SEED)
    if sampler_state is not None:
        sampler.load_state_dict(sampler_state)
    objective = get_objective("dapo")(ObjectiveConfig(name="dapo", dapo=CARRY), 16)
    if objective_state is not None:
        objective.load_state_dict(objective_state)
    return BatchPlanner(sampler, objective, 2, SEED, None)


def _scored(unit, accuracy: list[list[int]], version: int) -> Generated:
    groups = []
    for prompt, values in zip(unit.prompts, accuracy, strict=True):
        completions = [Completion([1], "x", [-0.5], "stop", policy_version=version) for _ in values]
        groups.append(Group(prompt, completions, rewards=[float(v) for v in values], correct=[v > 0 for v in values]))
    return Generated(unit, groups, {"reward/mean": 0.5}, engine_version=version, rollout_seconds=0.0, reward_seconds=0.0)


def _ids(groups) -> list[str]:
    return [group.prompt.prompt_id for group in groups]


def test_carrying_is_refused_without_staleness_allowance():
    config = load_config(GRPO_CONFIG, ["objective.name=dapo", "objective.dapo.carry_surplus=true", "cluster.max_staleness=0"])
    with pytest.raises(ConfigError, match="set cluster.max_staleness >= 1"):
        check_combinations(config)
    check_combinations(config.model_copy(update={"cluster": config.cluster.model_copy(update={"max_staleness": 1})}))


def test_surplus_of_batch_0_opens_batch_1_even_when_batch_1_finishes_first():
    planner = _planner()
    first, second = planner.plan(version=0, max_staleness=1, total_steps=3, engines=1)
    assert (first.batch_index, second.batch_index) == (0, 1) and len(first.prompts) == 4
    # Batch 1's round ends first with 2 informative groups: it waits for batch 0's surplus.
    assert planner.on_generated(_scored(second, [[1, 0], [0, 1], [1, 1], [0, 0]], version=0), 1, 1) == []
    assert planner.take(1) is None
    # Batch 0: three groups informative, two train, the third is carried into batch 1 (staleness 1 <= 1).
    assert planner.on_generated(_scored(first, [[1, 0], [0, 1], [1, 0], [1, 1]], version=0), 1, 1) == []
    batch0 = planner.take(0)
    assert _ids(batch0.groups) == [prompt.prompt_id for prompt in first.prompts[:2]]
    assert batch0.filter_metrics["dapo/surplus_groups_carried"] == 1.0
    assert batch0.filter_metrics["dapo/carried_groups"] == 0.0
    batch1 = planner.take(1)
    assert _ids(batch1.groups) == [first.prompts[2].prompt_id, second.prompts[0].prompt_id]
    assert batch1.groups[0].policy_version == 0  # the carried group keeps the version that generated it
    assert batch1.filter_metrics["dapo/carried_groups"] == 1.0
    # Batch 1's own surplus (generated at version 0) would be 2 versions stale in batch 2: dropped.
    assert batch1.filter_metrics["dapo/surplus_groups_stale"] == 1.0
    assert planner.objective.carry.get(2) == []


def test_a_batch_short_of_groups_after_the_carry_plans_another_round():
    planner = _planner()
    first, second = planner.plan(version=0, max_staleness=1, total_steps=2, engines=1)
    planner.on_generated(_scored(first, [[1, 0], [0, 1], [1, 0], [0, 0]], version=0), 1, 1)  # one group carried
    planner.take(0)
    # Batch 1's round keeps nothing: with the carried group it has 1 of 2, so round 1 is planned.
    (again,) = planner.on_generated(_scored(second, [[1, 1], [0, 0], [1, 1], [0, 0]], version=1), 1, 1)
    assert (again.batch_index, again.round_index) == (1, 1)
    assert planner.on_generated(_scored(again, [[0, 1], [1, 1], [0, 0], [1, 1]], version=1), 1, 1) == []
    batch = planner.take(1)
    assert _ids(batch.groups) == [first.prompts[2].prompt_id, again.prompts[0].prompt_id]
    assert batch.filter_metrics["train/num_gen_batches"] == 2.0 and batch.filter_metrics["dapo/carried_groups"] == 1.0


def test_the_carry_survives_a_checkpoint_and_the_resumed_batch_is_the_same():
    def run_to_batch_1(planner: BatchPlanner, start: int):
        planner.start_at(start)
        units = planner.plan(version=start, max_staleness=1, total_steps=3, engines=1)
        by_batch = {unit.batch_index: unit for unit in units}
        return by_batch

    planner = _planner()
    units = run_to_batch_1(planner, 0)
    planner.on_generated(_scored(units[0], [[1, 0], [0, 1], [1, 0], [0, 0]], version=0), 1, 1)
    planner.take(0)  # batch 0 trains; a checkpoint at version 1 saves the states below
    sampler_state = planner.sampler_state(1)
    objective_state = json.loads(json.dumps(planner.objective.state_dict()))
    assert list(objective_state["carry"]["pending"]) == ["1"]
    planner.on_generated(_scored(units[1], [[1, 0], [0, 1], [1, 1], [1, 0]], version=1), 1, 1)
    original = planner.take(1)

    resumed = _planner(sampler_state, objective_state)
    again = run_to_batch_1(resumed, 1)
    assert again[1].prompts == units[1].prompts and again[1].seed == units[1].seed
    resumed.on_generated(_scored(again[1], [[1, 0], [0, 1], [1, 1], [1, 0]], version=1), 1, 1)
    batch = resumed.take(1)
    assert batch.groups == original.groups and batch.filter_metrics == original.filter_metrics


@pytest.mark.slow
def test_dapo_with_carried_surplus_trains_three_async_steps(tmp_path, tiny_chat_model_path):
    from pathlib import Path

    from rlpost.config import load_config
    from rlpost.io.metrics import read_metrics
    from rlpost.loop import TrainingRun
    from tests.e2e.runs import TINY_RUN, on_tiny_model

    config = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "dapo.yaml",
        [*TINY_RUN, *on_tiny_model(tiny_chat_model_path), "train.steps=3", "checkpoint.every_steps=0",
         "checkpoint.at_end=false", f"train.output_dir={tmp_path}", "objective.dapo.overlong_buffer=4",
         "objective.dapo.carry_surplus=true", "objective.dapo.gen_batch_prompts=4", "cluster.max_staleness=1"],
    )
    TrainingRun(config).fit()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert "dapo/carried_groups" in record and "dapo/surplus_groups_carried" in record
        assert record["async/dropped_groups"] == 0  # carried groups too stale were dropped when carried, not here
        assert record["rollout/groups"] == 2
    assert records[0]["dapo/carried_groups"] == 0  # nothing before the first batch
