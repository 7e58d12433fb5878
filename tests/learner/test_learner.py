"""Learner updates: gradient accumulation gives the same update as one big batch, on both backends."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import build_train_batch, prepare_update
from rlpost.learner.learner import Learner
from rlpost.objectives.registry import get_objective
from tests.conftest import make_groups


def _config(tiny_model_path: str, **learner) -> RLPostConfig:
    return RLPostConfig.model_validate(
        {
            "model": {"path": tiny_model_path},
            "learner": {"backend": "torch", "mixed_precision": "no", **learner},
            # eps >> |grad| makes Adam's first step ~ lr * grad: linear in the gradient, so weight
            # deltas compare gradients (with eps ~ 0 the step is lr * sign(grad), ill-conditioned).
            "optimizer": {"lr": 1.0, "eps": 1.0, "grad_clip": None},
            "rollout": {"max_new_tokens": 8},
        }
    )


def _updated_weights(config: RLPostConfig, groups, loss_agg: str = "token-mean") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    objective_config = config.objective.model_copy(update={"loss_agg": loss_agg})
    objective = get_objective("grpo")(objective_config, config.rollout.max_new_tokens)
    learner = Learner(config, config.model.path, objective, total_steps=1)
    batch = build_train_batch(groups, pad_token_id=0)
    metrics = learner.train_step(batch, prepare_update(objective, batch))
    assert torch.isfinite(torch.tensor(metrics["actor/grad_norm"]))
    return {name: tensor.clone() for name, tensor in learner.named_weights()}


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batching_gives_the_same_update_as_one_batch(tiny_model_path, loss_agg):
    groups = make_groups(3, sizes=[4, 2, 5])
    whole = _updated_weights(_config(tiny_model_path, micro_batch_size=64), groups, loss_agg)
    split = _updated_weights(_config(tiny_model_path, micro_batch_size=3), groups, loss_agg)
    initial = LlamaForCausalLM.from_pretrained(tiny_model_path).state_dict()
    moved = max(float((whole[name] - initial[name]).abs().max()) for name in whole)
    assert moved > 1e-4, "the update must change the weights for the comparison to mean anything"
    for name in whole:
        torch.testing.assert_close(split[name] - initial[name], whole[name] - initial[name], rtol=1e-5, atol=1e-7)


@pytest.mark.deepspeed
def test_deepspeed_backend_matches_torch_backend(tiny_model_path):
    groups = make_groups(2, sizes=[4, 4], seed=3)
    plain = _updated_weights(_config(tiny_model_path, micro_batch_size=3), groups)
    deepspeed = _updated_weights(_config(tiny_model_path, micro_batch_size=3, backend="deepspeed"), groups)
    for name in plain:
        torch.testing.assert_close(deepspeed[name], plain[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("release_memory", [True, False])
def test_release_memory_trims_the_heap_after_each_optimizer_step(tiny_model_path, monkeypatch, release_memory):
    trims = []
    monkeypatch.setattr("rlpost.learner.step.release_free_heap", lambda: trims.append(1) or True)
    config = _config(tiny_model_path, release_memory=release_memory)
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    learner = Learner(config, config.model.path, objective, total_steps=2)
    batch = build_train_batch(make_groups(2, sizes=[4, 4]), pad_token_id=0)
    for _ in range(2):
        learner.train_step(batch, prepare_update(objective, batch))
    assert len(trims) == (2 if release_memory else 0)


@pytest.mark.parametrize(("rows", "updates", "sizes"), [(9, 4, [3, 2, 2, 2]), (8, 4, [2, 2, 2, 2]), (3, 4, [1, 1, 1])])
def test_a_batch_takes_the_configured_number_of_updates(tiny_model_path, rows, updates, sizes):
    # torch.chunk gave 9 rows in 4 updates as 3 chunks of 3: ranks with 9 and 8 rows then disagreed.
    seen = []
    config = _config(tiny_model_path, updates_per_batch=updates)
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    learner = Learner(config, config.model.path, objective, total_steps=1)
    original = learner._update
    learner._update = lambda batch, mini_rows, *rest: seen.append(len(mini_rows)) or original(batch, mini_rows, *rest)
    batch = build_train_batch(make_groups(1, sizes=[rows]), pad_token_id=0)
    learner.train_step(batch, prepare_update(objective, batch))
    assert seen == sizes and learner.steps_taken == len(sizes)


def test_zero3_loading_is_on_only_while_the_policy_loads():
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from rlpost.learner.policy import zero3_loading

    with zero3_loading({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}):
        assert is_deepspeed_zero3_enabled()  # from_pretrained builds under deepspeed.zero.Init
    assert not is_deepspeed_zero3_enabled()
    with zero3_loading({"zero_optimization": {"stage": 2}}):
        assert not is_deepspeed_zero3_enabled()


def test_rl_logprobs_are_of_the_rollouts_top_k_distribution_and_sft_logprobs_of_the_model(tiny_model_path):
    config = RLPostConfig.model_validate(
        {"model": {"path": tiny_model_path}, "learner": {"backend": "torch", "mixed_precision": "no"},
         "rollout": {"max_new_tokens": 8, "top_k": 1}}
    )
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    learner = Learner(config, config.model.path, objective, total_steps=1)
    batch = build_train_batch(make_groups(2), pad_token_id=0)
    model = LlamaForCausalLM.from_pretrained(tiny_model_path)
    first = int(batch.response_index[0, 0])  # make row 0's first response token the greedy one
    batch.input_ids[0, first] = batch.response_ids[0, 0] = model(input_ids=batch.input_ids[:1, :first]).logits[0, -1].argmax()
    rl, _ = learner.token_logprobs(learner.module, batch, compute_entropy=False)
    sft, _ = learner.token_logprobs(learner.module, batch, compute_entropy=False, temperature=1.0)
    logits = model(input_ids=batch.input_ids).logits
    valid = batch.response_mask.bool()
    rows, steps = valid.nonzero(as_tuple=True)
    positions = batch.response_index[rows, steps]
    greedy = logits[rows, positions - 1].argmax(-1) == batch.input_ids[rows, positions]
    assert greedy.any() and (~greedy).any()
    # top-k 1 keeps the greedy token, and the scored one (rlpost.ops.logprobs): the greedy token has
    # probability 1, any other token its share of the two tempered probabilities.
    step_logits = logits[rows, positions - 1].float().detach()
    scored = step_logits.gather(-1, batch.input_ids[rows, positions][:, None])[:, 0]
    pair = torch.stack([scored, step_logits.max(-1).values], -1) / learner.temperature
    assert torch.equal(rl[valid][greedy], torch.zeros(int(greedy.sum())))
    torch.testing.assert_close(rl[valid][~greedy], (pair[:, 0] - pair.logsumexp(-1))[~greedy], rtol=1e-5, atol=1e-5)
    expected = torch.log_softmax(step_logits, -1).gather(-1, batch.input_ids[rows, positions][:, None])[:, 0]
    torch.testing.assert_close(sft[valid], expected, rtol=1e-5, atol=1e-5)
