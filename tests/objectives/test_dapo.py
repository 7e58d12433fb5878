"""DAPO (ALGORITHMS.md §2.6) and Dr.GRPO (§1.3, §1.7)."""

from __future__ import annotations

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.dapo import (
    DynamicSampler,
    DynamicSamplingExhausted,
    SurplusCarry,
    filter_groups,
    filter_values,
    overlong_penalty,
)
from rlpost.objectives.registry import get_objective
from rlpost.types import Completion, Group, Prompt
from tests.objectives.helpers import advantage_inputs


@pytest.mark.parametrize("length, expected", [(10000, 0.0), (16384, 0.0), (18432, -0.5), (20480, -1.0)])
def test_overlong_penalty_hand_numbers(length, expected):
    penalty = overlong_penalty(torch.tensor([length]), max_length=20480, buffer=4096, penalty_factor=1.0)
    assert float(penalty) == pytest.approx(expected, abs=1e-12)


def test_overlong_penalty_factor_scales_the_ramp_and_floors_it():
    penalty = overlong_penalty(torch.tensor([18432, 30000]), max_length=20480, buffer=4096, penalty_factor=0.5)
    torch.testing.assert_close(penalty, torch.tensor([-0.25, -0.5], dtype=torch.float64))


def test_shape_rewards_adds_the_penalty_from_response_lengths():
    config = ObjectiveConfig(name="dapo", dapo={"overlong_buffer": 4096})
    objective = get_objective("dapo")(config, max_response_length=20480)
    inputs = advantage_inputs([1.0, -1.0, 1.0], [0, 0, 0], lengths=[100, 18432, 20480])
    shaped, metrics = objective.shape_rewards(inputs)
    torch.testing.assert_close(shaped, torch.tensor([1.0, -1.5, 0.0], dtype=torch.float64))
    assert metrics["dapo/overlong_frac"] == pytest.approx(2 / 3)
    assert metrics["dapo/overlong_reward_mean"] == pytest.approx(-0.5)


def test_default_buffer_is_a_fifth_of_l_max_and_an_oversized_buffer_is_rejected():
    objective = get_objective("dapo")(ObjectiveConfig(name="dapo"), max_response_length=20480)
    assert objective.overlong_buffer == 4096
    with pytest.raises(ValueError, match="overlong_buffer"):
        get_objective("dapo")(ObjectiveConfig(name="dapo", dapo={"overlong_buffer": 200}), max_response_length=128)


def test_overlong_filter_excludes_truncated_sequences():
    inputs = advantage_inputs([1.0, 0.0], [0, 0], truncated=[True, False])
    plain = get_objective("dapo")(ObjectiveConfig(name="dapo"), 64)
    filtering = get_objective("dapo")(ObjectiveConfig(name="dapo", dapo={"overlong_filter": True}), 64)
    assert plain.sequences_in_loss(inputs) is None
    assert filtering.sequences_in_loss(inputs).tolist() == [False, True]


def test_dapo_method_defaults_and_explicit_values_win():
    config = ObjectiveConfig(name="dapo")
    assert (config.clip_low, config.clip_high, config.clip_c, config.loss_agg) == (0.2, 0.28, 10.0, "token-mean")
    assert ObjectiveConfig(name="dapo", clip_high=0.3).clip_high == 0.3


def test_clip_higher_asymmetry_through_the_objective():
    objective = get_objective("dapo")(ObjectiveConfig(name="dapo"), 4)
    ratios = torch.tensor([[1.25, 0.75]], dtype=torch.float64)
    logp = ratios.log().requires_grad_(True)
    inputs = LossInputs(logp=logp, old_logp=torch.zeros_like(ratios), advantages=torch.tensor([[1.0, -1.0]], dtype=torch.float64),
                        mask=torch.ones(1, 2, dtype=torch.float64))
    loss, metrics = objective.compute_loss(inputs, step_scale_of(inputs.mask, 4))
    assert float(loss.detach()) == pytest.approx((-1.25 + 0.8) / 2, abs=1e-12)  # token-mean of -1.25 and 0.8
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-1.25 / 2, 0.0]], dtype=torch.float64))
    assert metrics["actor/pg_clipfrac_low"] == pytest.approx(0.5) and metrics["actor/pg_clipfrac_high"] == 0.0


# ---------------------------------------------------------------- dynamic sampling


HAND_GROUPS = [[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_filter_keeps_only_the_mixed_group():
    assert filter_groups(HAND_GROUPS) == [False, True, False]


def test_singleton_groups_are_kept():
    assert filter_groups([[0.0], [1.0], [1.0, 1.0]]) == [True, True, False]


def test_sampler_continues_until_enough_groups_are_kept():
    sampler = DynamicSampler(prompts_per_step=2, max_gen_batches=3)
    sampler.add(["a", "b", "c"], HAND_GROUPS)
    assert not sampler.ready and sampler.kept == 1  # generation must continue
    sampler.add(["d", "e", "f"], [[1, 0], [0, 1], [1, 1]])
    assert sampler.ready
    batch, metrics = sampler.take()
    assert batch == ["b", "d"]  # whole groups, in arrival order, surplus "e" dropped
    assert metrics["train/num_gen_batches"] == 2.0
    assert metrics["dapo/kept_group_frac"] == pytest.approx(3 / 6)
    assert metrics["dapo/surplus_groups_dropped"] == 1.0
    assert metrics["dapo/gen_solve_all"] == pytest.approx(2 / 6)
    assert metrics["dapo/gen_solve_none"] == pytest.approx(1 / 6)
    assert sampler.rounds == 0 and sampler.kept == 0  # reset for the next step


def test_sampler_raises_after_max_gen_batches():
    sampler = DynamicSampler(prompts_per_step=2, max_gen_batches=1)
    with pytest.raises(DynamicSamplingExhausted, match="max_gen_batches"):
        sampler.add(["a", "b", "c"], HAND_GROUPS)


def test_sampler_can_proceed_with_a_smaller_batch():
    sampler = DynamicSampler(prompts_per_step=2, max_gen_batches=1, on_exhausted="proceed")
    sampler.add(["a", "b", "c"], HAND_GROUPS)
    assert sampler.ready
    batch, metrics = sampler.take()
    assert batch == ["b"] and metrics["dapo/short_batch"] == 1.0


def test_zero_max_gen_batches_means_unlimited():
    sampler = DynamicSampler(prompts_per_step=1, max_gen_batches=0)
    for _ in range(20):
        sampler.add(["x"], [[1, 1]])
    assert not sampler.ready and not sampler.exhausted


def test_filter_values_of_a_group():
    completions = [Completion(token_ids=[1], text="", logprobs=[0.0], finish_reason="stop") for _ in range(2)]
    group = Group(prompt=Prompt("p", "q", [1]), completions=completions, rewards=[0.5, -1.0], correct=[True, False])
    assert filter_values(group, "acc") == [1.0, 0.0]
    assert filter_values(group, "score") == [0.5, -1.0]


# ---------------------------------------------------------------- Dr.GRPO


def test_dr_grpo_advantages_loss_mode_and_truncation_reward():
    config = ObjectiveConfig(name="dr_grpo", normalize_adv_by_std=True)  # Dr.GRPO ignores it
    objective = get_objective("dr_grpo")(config, max_response_length=4)
    inputs = advantage_inputs([1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], truncated=[False, False, False, True])
    shaped, metrics = objective.shape_rewards(inputs)
    torch.testing.assert_close(shaped, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert metrics["dr_grpo/truncated_frac"] == 0.25
    adv, _ = objective.compute_advantages(advantage_inputs([1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0]))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64))
    assert objective.loss_agg == "dr-grpo"


# ---------------------------------------------------------------- DAPO's carried surplus (carry_surplus)


def _group(name: str, version: int, accuracy: list[int]) -> Group:
    completions = [Completion(token_ids=[1, 2], text="ab", logprobs=[-0.25, -1.5], finish_reason="stop",
                              policy_version=version) for _ in accuracy]
    return Group(prompt=Prompt(name, f"q {name}", [7], row={"question": "q", "answer": "1"}), completions=completions,
                 rewards=[float(a) for a in accuracy], reward_components={"acc": [float(a) for a in accuracy]},
                 correct=[bool(a) for a in accuracy])


def test_a_carrying_sampler_waits_for_the_carried_groups_and_puts_them_first():
    sampler = DynamicSampler(prompts_per_step=3, max_gen_batches=2, carry=SurplusCarry())
    sampler.add(["b", "c", "d"], [[1, 0], [0, 1], [1, 0]])  # three kept: enough, but the carried groups come first
    assert not sampler.ready and sampler.awaiting_carry
    sampler.receive(["a"])
    assert sampler.ready and sampler.kept == 4
    batch, metrics = sampler.take()
    assert batch == ["a", "b", "c"] and sampler.surplus == ["d"]
    assert metrics["dapo/carried_groups"] == 1.0
    assert metrics["dapo/surplus_groups_dropped"] == 0.0  # the carry decides what it drops
    assert sampler.awaiting_carry and sampler.kept == 0  # reset: the next batch waits again


def test_carried_groups_count_before_the_exhaustion_check():
    sampler = DynamicSampler(prompts_per_step=2, max_gen_batches=1, carry=SurplusCarry())
    sampler.add(["b", "c"], [[1, 1], [1, 0]])  # one kept, last round: no error while the carry is awaited
    sampler.receive(["a"])
    assert sampler.take()[0] == ["a", "c"]
    sampler.add(["x"], [[0, 0]])
    with pytest.raises(DynamicSamplingExhausted, match="kept 1 of 2"):
        sampler.receive(["y"])


def test_the_carry_drops_groups_staler_than_max_staleness_then_the_oldest_beyond_its_bound():
    carry = SurplusCarry(max_groups=2)
    surplus = [_group("old", 3, [1, 0]), _group("a", 4, [1, 0]), _group("b", 4, [0, 1]), _group("c", 5, [1, 0])]
    # batch 5 trains at version 5: staleness 2, 1, 1, 0; max_staleness 1 drops "old"; the bound 2 then "a"
    metrics = carry.put(5, surplus, max_staleness=1, prompts_per_step=8)
    assert [g.prompt.prompt_id for g in carry.get(5)] == ["b", "c"]
    assert metrics == {"dapo/surplus_groups_carried": 2.0, "dapo/surplus_groups_dropped": 2.0,
                       "dapo/surplus_groups_stale": 1.0}
    unbounded = SurplusCarry()  # bound: the batch's prompts_per_step
    unbounded.put(5, surplus, max_staleness=2, prompts_per_step=3)
    assert [g.prompt.prompt_id for g in unbounded.get(5)] == ["a", "b", "c"]
    unbounded.forget_through(5)
    assert unbounded.get(5) == []


def test_the_carry_survives_a_json_round_trip_exactly():
    import json

    carry = SurplusCarry()
    carry.put(2, [_group("a", 1, [1, 0]), _group("b", 2, [0, 1])], max_staleness=1, prompts_per_step=2)
    restored = SurplusCarry()
    restored.load_state_dict(json.loads(json.dumps(carry.state_dict())))
    assert restored.get(2) == carry.get(2) and restored.get(2)[0].completions[0].logprobs == [-0.25, -1.5]
    assert restored.get(2)[0].policy_version == 1


def test_the_dapo_objective_holds_the_carry_in_its_state_only_when_carrying():
    plain = get_objective("dapo")(ObjectiveConfig(name="dapo"), 16)
    assert plain.carry is None and plain.group_filter(2).carry is None and plain.state_dict() == {}
    config = ObjectiveConfig(name="dapo", dapo={"carry_surplus": True, "carry_max_groups": 3})
    objective = get_objective("dapo")(config, 16)
    assert objective.group_filter(2).carry is objective.carry and objective.carry.max_groups == 3
    objective.carry.put(1, [_group("a", 0, [1, 0])], max_staleness=1, prompts_per_step=2)
    resumed = get_objective("dapo")(config, 16)
    resumed.load_state_dict(objective.state_dict())
    assert resumed.carry.get(1) == objective.carry.get(1)


def test_carrying_needs_dynamic_sampling():
    with pytest.raises(ValueError, match="needs filter_groups"):
        ObjectiveConfig(name="dapo", dapo={"carry_surplus": True, "filter_groups": False})
