"""LUFFY (mixed-policy GRPO with shaped demonstration weights): numbers by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlpost.config.objective import ObjectiveConfig
from rlpost.objectives.base import LossInputs
from rlpost.objectives.core import step_scale_of
from rlpost.objectives.luffy import (
    OFF_POLICY_COMPONENT,
    GuidanceMixer,
    attach_guidance,
    shaped_weight,
    with_demonstration,
)
from rlpost.objectives.registry import get_objective
from rlpost.types import Completion, Group, Prompt
from tests.objectives.helpers import advantage_inputs, lengths_mask


def make(**knobs):
    return get_objective("luffy")(ObjectiveConfig(name="luffy", **knobs), max_response_length=4)


def test_shaping_value_and_gradient_by_hand():
    # f(0.5) = 0.5 / 0.6 = 0.8333333; df/dlogp = gamma*pi/(pi+gamma)^2 = 0.1*0.5/0.36 = 0.1388889
    # pi = 0.01: 0.1*0.01/0.0121 = 0.0826446; pi = 0.9: 0.1*0.9/1.0 = 0.09
    logp = torch.log(torch.tensor([0.5, 0.01, 0.9], dtype=torch.float64)).requires_grad_()
    value = shaped_weight(logp, 0.1)
    assert value[0].item() == pytest.approx(0.8333333, abs=1e-7)
    (grad,) = torch.autograd.grad(value.sum(), logp)
    assert grad.tolist() == pytest.approx([0.1388889, 0.0826446, 0.09], abs=1e-7)
    # Without shaping f(pi) = pi: f(0.5) = 0.5 with gradient pi = 0.5.
    assert shaped_weight(torch.tensor([math.log(0.5)]), 0.1, shaping=False).item() == pytest.approx(0.5)


def test_advantages_over_the_mixed_group():
    # Rollouts [0, 0, 1] and the demonstration (reward 1): mean 0.5, unbiased std sqrt(1/3) = 0.5773503;
    # A = ±0.5 / (0.5773503 + 1e-6) = ±0.8660239. Rollout-only adv/mean = -0.8660239/3 = -0.2886746.
    marker = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    inputs = advantage_inputs([0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0], reward_components={OFF_POLICY_COMPONENT: marker})
    advantages, metrics = make().compute_advantages(inputs)
    assert advantages.tolist() == pytest.approx([-0.8660239, -0.8660239, 0.8660239, 0.8660239], abs=1e-7)
    assert metrics["luffy/demo_rows"] == 1.0
    assert metrics["luffy/demo_adv_mean"] == pytest.approx(0.8660239, abs=1e-7)
    assert metrics["adv/mean"] == pytest.approx(-0.2886746, abs=1e-7)


def test_token_weights_mark_demonstrations_by_sign():
    marker = torch.tensor([0.0, 1.0], dtype=torch.float64)
    inputs = advantage_inputs([0.0, 1.0], [0, 0], reward_components={OFF_POLICY_COMPONENT: marker}, mask=lengths_mask([1, 2], 2))
    assert make().token_weights(inputs).tolist() == [[1.0, 1.0], [-1.0, -1.0]]


def _loss_inputs(token_weights):
    # Row 0: a rollout token, A = -1, ratio 1. Row 1: a demonstration token, pi = 0.5, A = +1, its
    # old log-prob log 0.1 (ratio 5: would be clipped, if the demonstration were clipped).
    logp = torch.log(torch.tensor([[0.3], [0.5]], dtype=torch.float64)).requires_grad_()
    old = torch.log(torch.tensor([[0.3], [0.1]], dtype=torch.float64))
    mask = torch.ones(2, 1, dtype=torch.float64)
    weights = torch.tensor(token_weights, dtype=torch.float64)
    return logp, LossInputs(logp=logp, old_logp=old, advantages=torch.tensor([-1.0, 1.0], dtype=torch.float64), mask=mask, token_weights=weights)


def test_mixed_loss_and_gradient_by_hand():
    # token-mean over 2 tokens: (1 - 0.8333333) / 2 = 0.0833333;
    # d/dlogp: rollout -A/2 = 0.5; demonstration -0.1388889/2 = -0.0694444. No clipping anywhere.
    logp, inputs = _loss_inputs([[1.0], [-1.0]])
    loss, metrics = make().compute_loss(inputs, step_scale_of(inputs.mask, 4))
    assert float(loss.detach()) == pytest.approx(0.0833333, abs=1e-7)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.flatten().tolist() == pytest.approx([0.5, -0.0694444], abs=1e-7)
    assert metrics["actor/pg_clipfrac"] == 0.0
    assert metrics["luffy/off_policy_token_frac"] == pytest.approx(0.5)
    assert metrics["luffy/off_policy_prob"] == pytest.approx(0.25)  # 0.5 over 2 step tokens
    assert metrics["luffy/off_policy_pg_loss"] == pytest.approx(-0.4166667, abs=1e-7)  # -0.8333333 / 2


def test_correction_weights_apply_to_rollouts_only():
    # An IS correction made the weights 0.5 (rollout) and -0.2 (demonstration): rollout loss 0.5 * 1,
    # demonstration still -0.8333333: (0.5 - 0.8333333) / 2 = -0.1666667.
    _, inputs = _loss_inputs([[0.5], [-0.2]])
    loss, _ = make().compute_loss(inputs, step_scale_of(inputs.mask, 4))
    assert float(loss.detach()) == pytest.approx(-0.1666667, abs=1e-7)


def test_without_demonstrations_it_is_grpo():
    # No token weights: GRPO's loss, -A at ratio 1 over 2 tokens: (1 - 1) / 2 = 0.
    _, inputs = _loss_inputs([[1.0], [-1.0]])
    inputs.token_weights = None
    inputs.old_logp = inputs.logp.detach().clone()
    loss, _ = make().compute_loss(inputs, step_scale_of(inputs.mask, 4))
    assert float(loss.detach()) == pytest.approx(0.0)


def _completion(tokens, version=0):
    return Completion(token_ids=tokens, text="x", logprobs=[0.0] * len(tokens), finish_reason="stop", policy_version=version)


def test_with_demonstration_appends_a_marked_row():
    prompt = Prompt("p", "question", [1], {"solution": "s"})
    group = Group(prompt, [_completion([5], 3), _completion([6, 7], 4)], [0.0, 1.2],
                  {"math_verify": [0.0, 1.0], "boxed_format": [1.0, 1.0]}, [False, True])
    mixed = with_demonstration(group, _completion([8, 9, 10], 0), 1.2)
    assert mixed.rewards == [0.0, 1.2, 1.2]
    assert mixed.correct == [False, True, True]
    assert mixed.reward_components == {
        "math_verify": [0.0, 1.0, 1.0], "boxed_format": [1.0, 1.0, 1.0], OFF_POLICY_COMPONENT: [0.0, 0.0, 1.0],
    }
    assert mixed.completions[-1].policy_version == 3  # the group's oldest: staleness unchanged
    assert group.size == 2  # the scored group itself is not changed


def test_mixer_is_ready_after_one_round():
    prompts = [Prompt(f"p{i}", "q", [1], {"solution": "s"}) for i in range(2)]
    demos = SimpleNamespace(completion=lambda prompt: _completion([1, 2]))
    mixer = GuidanceMixer(demos, round_size=2, demo_reward=1.0)
    assert not mixer.ready
    mixer.add_groups([Group(p, [_completion([3])], [0.0], {}, [False]) for p in prompts])
    assert mixer.ready
    groups, metrics = mixer.take()
    assert [g.size for g in groups] == [2, 2]
    assert metrics == {"luffy/demos_added": 2.0, "luffy/demo_tokens_mean": 2.0}
    assert not mixer.ready


class _Tokenizer:
    eos_token_id = 99

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(word) for word in text.split()]}


def test_attach_guidance_and_the_filter():
    objective = make()
    with pytest.raises(RuntimeError, match="attach_guidance"):
        objective.group_filter(2)
    prompt = Prompt("p", "q", [1], {"solution": "ab cde f g h"})
    attach_guidance(SimpleNamespace(objective=objective, tokenizer=_Tokenizer(), pad_token_id=0, train_prompts=[prompt]))
    # "ab cde f g h" -> [2, 3, 1, 1, 1] + [eos], cut to max_response_length 4 tokens
    assert objective.demonstrations.completion(prompt).token_ids == [2, 3, 1, 1]
    assert isinstance(objective.group_filter(2), GuidanceMixer)
    other = get_objective("grpo")(ObjectiveConfig(name="grpo"), max_response_length=4)
    attach_guidance(SimpleNamespace(objective=other, tokenizer=_Tokenizer(), pad_token_id=0, train_prompts=[prompt]))
    assert not hasattr(other, "demonstrations")


def test_the_marker_flows_through_the_train_batch():
    # Rollouts [0, 1] plus the demonstration (reward 1): mean 2/3, unbiased std sqrt(1/3) = 0.5773503;
    # A = (0 - 2/3)/0.5773513 = -1.1547, (1 - 2/3)/0.5773513 = 0.5773, the demonstration 0.5773.
    from rlpost.learner.batch import build_train_batch, prepare_update

    prompt = Prompt("p", "q", [1, 2], {"solution": "s"})
    group = Group(prompt, [_completion([5]), _completion([6, 7])], [0.0, 1.0], {"acc": [0.0, 1.0]}, [False, True])
    batch = build_train_batch([with_demonstration(group, _completion([8, 9, 10]), 1.0)], pad_token_id=0)
    targets = prepare_update(make(), batch)
    assert targets.advantages.tolist() == pytest.approx([-1.1547, 0.5773, 0.5773], abs=1e-4)
    assert targets.token_weights.tolist() == [[1.0] * 3, [1.0] * 3, [-1.0] * 3]  # the sign marks the row
    assert targets.metrics["luffy/demo_rows"] == 1.0
