"""`learner.micro_batching`: bucketed and packed micro-batches give the padded step's loss and update.

Bucketed micro-batches reorder the rows (sorted by length), packed ones run a micro-batch's sequences
as one row with per-sequence positions and a block-diagonal mask. Neither may change the update:
every per-row tensor (advantages, GTPO's token weights, the IS correction's behaviour log-probs, old
log-probs) must follow its row into whichever micro-batch it lands in.

Tolerances: fp32 throughout; the three modes add the same terms in a different order (other micro-batch
compositions, attention over padded vs packed key blocks whose masked keys contribute exact zeros), so
results differ by fp32 rounding of sums of a few hundred terms: relative ~1e-6, well inside rtol 1e-5.
Weight deltas are read back from updated fp32 weights, which round the new weight to its ulp: 1.19e-7
for weights in [1, 2), so two such deltas can differ by 2 ulps where the update itself agrees (atol 2.5e-7).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from rlpost.config.schema import RLPostConfig
from rlpost.learner.batch import (
    build_train_batch,
    prepare_update,
    sequence_lengths,
    split_micro_batches,
    token_budget_micro_batches,
)
from rlpost.learner.learner import Learner
from rlpost.objectives.offpolicy import wrap_objective
from rlpost.objectives.registry import get_objective
from rlpost.ops import model_token_logprobs
from tests.conftest import make_groups
from tests.support.same_update import assert_same_update

MODES = ["padded", "bucketed", "packed"]


def _config(tiny_model_path: str, mode: str, objective: str, **learner) -> RLPostConfig:
    return RLPostConfig.model_validate({
        "model": {"path": tiny_model_path},
        "learner": {"backend": "torch", "mixed_precision": "no", "micro_batch_size": 3, "micro_batching": mode, **learner},
        # eps >> |grad|: Adam's first step ~ lr * grad, so weight deltas compare gradients (tests/learner/test_learner.py)
        "optimizer": {"lr": 1.0, "eps": 1.0, "grad_clip": None},
        "rollout": {"max_new_tokens": 8},
        "objective": {"name": objective, **({"gtpo": {"entropy_threshold": 10.0}} if objective == "gtpo" else {})},
    })


def _step(tiny_model_path: str, mode: str, objective_name: str, correction: str, **learner) -> tuple[dict, dict]:
    torch.manual_seed(0)
    config = _config(tiny_model_path, mode, objective_name, **learner)
    objective = get_objective(objective_name)(config.objective, config.rollout.max_new_tokens)
    objective = wrap_objective(objective, correction, cap=1.5)
    learner = Learner(config, config.model.path, objective, total_steps=2)
    groups = make_groups(3, sizes=[4, 2, 5], seed=7)
    for group in groups:  # behaviour log-probs that differ per token: the IS weights follow their rows
        for c, completion in enumerate(group.completions):
            completion.logprobs = [-4.0 - 0.3 * c - 0.1 * t for t in range(len(completion.token_ids))]
    batch = build_train_batch(groups, pad_token_id=0)
    targets = prepare_update(objective, batch)
    if objective_name == "gtpo":
        assert targets.token_weights is not None, "GTPO must exercise the per-token weights"
    metrics = learner.train_step(batch, targets)
    return metrics, {name: tensor.clone() for name, tensor in learner.named_weights()}


@pytest.mark.parametrize(("objective", "correction", "updates"), [
    ("grpo", "none", 1), ("gtpo", "none", 1), ("grpo", "token", 1), ("grpo", "mask", 1), ("dapo", "none", 2),
])
@pytest.mark.parametrize("mode", ["bucketed", "packed"])
def test_bucketed_and_packed_steps_match_the_padded_step(tiny_model_path, mode, objective, correction, updates):
    padded = _step(tiny_model_path, "padded", objective, correction, updates_per_batch=updates)
    assert_same_update(tiny_model_path, padded, _step(tiny_model_path, mode, objective, correction, updates_per_batch=updates))


def test_packed_forward_gives_the_padded_log_probs_and_gradients(tiny_model_path):
    model = LlamaForCausalLM.from_pretrained(tiny_model_path)
    batch = build_train_batch(make_groups(2, sizes=[3, 2], seed=2), pad_token_id=0)
    results = []
    for packed in (False, True):
        model.zero_grad()
        logp, entropy = model_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_index,
                                             batch.response_mask, compute_entropy=True, packed=packed)
        (logp.sum() + entropy.sum()).backward()
        results.append((logp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]))
    (logp, entropy, grads), (packed_logp, packed_entropy, packed_grads) = results
    torch.testing.assert_close(packed_logp, logp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(packed_entropy, entropy, rtol=1e-5, atol=1e-6)
    for grad, packed_grad in zip(grads, packed_grads, strict=True):
        torch.testing.assert_close(packed_grad, grad, rtol=1e-5, atol=1e-6)


def test_packing_refuses_left_padded_rows(tiny_model_path):
    model = LlamaForCausalLM.from_pretrained(tiny_model_path)
    ids = torch.tensor([[0, 5, 6, 7]])
    with pytest.raises(ValueError, match="right padding"):
        model_token_logprobs(model, ids, torch.tensor([[0, 1, 1, 1]]), torch.tensor([[3]]), torch.ones(1, 1), packed=True)


@pytest.mark.parametrize("packed", [False, True])
def test_token_budget_micro_batches_cover_every_row_once_within_the_budget(packed):
    lengths = torch.tensor([5, 17, 3, 9, 9, 30, 1, 12, 7])
    budget = 24
    chunks = token_budget_micro_batches(lengths, budget, packed=packed)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(lengths)))
    for chunk in chunks:
        cost = int(lengths[chunk].sum()) if packed else len(chunk) * int(lengths[chunk].max())
        assert cost <= budget or len(chunk) == 1
        assert chunk.tolist() == sorted(chunk.tolist()), "rows keep the batch's order within a micro-batch"
    assert chunks[0].tolist() == [5], "the longest row first (and alone: it is over the budget)"


def test_default_budget_is_micro_batch_size_times_the_longest_row():
    batch = build_train_batch(make_groups(3, sizes=[4, 2, 5], seed=7), pad_token_id=0)
    rows = torch.arange(batch.size)
    longest = int(sequence_lengths(batch).max())
    chunks = split_micro_batches(batch, rows, "bucketed", 3, None)
    expected = token_budget_micro_batches(sequence_lengths(batch), 3 * longest, packed=False)
    assert [chunk.tolist() for chunk in chunks] == [chunk.tolist() for chunk in expected]
    assert len(chunks) <= len(split_micro_batches(batch, rows, "padded", 3, None))
