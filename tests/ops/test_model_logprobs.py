"""`model_token_logprobs` on tiny Llamas against log-probs taken from `model(...).logits`."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from rlpost.learner.batch import build_train_batch
from rlpost.ops import model_token_logprobs
from tests.conftest import make_groups

VOCAB = 128


def _tiny_llama(tied: bool, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied, pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper than the init's tiny logits, so entropies and grads are informative
        model.lm_head.weight.mul_(30.0)
    return model


def _batch(seed: int = 0):
    """The learner's own layout: 2 groups of 3 completions of unequal lengths, right-padded."""
    batch = build_train_batch(make_groups(2, sizes=[3, 3], vocab=VOCAB, seed=seed), pad_token_id=0)
    return batch.input_ids, batch.attention_mask, batch.response_index, batch.response_mask


def _reference(model, input_ids, attention_mask, response_index, response_mask, temperature):
    """Log-probs and entropies from the full logits of `model(...)`, gathered at response positions."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
    predictor = (response_index - 1).clamp(min=0)  # hidden state at p - 1 predicts the token at p
    rows = torch.arange(input_ids.shape[0]).unsqueeze(1)
    log_probs = torch.log_softmax(logits[rows, predictor], dim=-1)  # [B, T, V]
    targets = input_ids.gather(1, response_index)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    mask = response_mask.bool()
    zero = torch.zeros(())
    return torch.where(mask, logp, zero), torch.where(mask, entropy, zero)


def _loss_and_grads(model, logp, entropy, response_mask, seed=1):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(2, *logp.shape, generator=gen)
    model.zero_grad()
    ((weights[0] * logp + weights[1] * entropy) * response_mask).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(got: dict, want: dict, rtol: float = 1e-5):
    assert got.keys() == want.keys()
    for name in want:
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=rtol * scale + 1e-12, msg=name)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_matches_full_logits(tied, fused):
    model = _tiny_llama(tied)
    batch = _batch()
    temperature = 0.7
    want_logp, want_entropy = _reference(model, *batch, temperature)
    want_grads = _loss_and_grads(model, want_logp, want_entropy, batch[3])
    logp, entropy = model_token_logprobs(
        model, *batch, temperature=temperature, fused=fused, chunk_size=5, compute_entropy=True
    )
    got_grads = _loss_and_grads(model, logp, entropy, batch[3])
    assert logp.shape == entropy.shape == batch[2].shape and logp.dtype == torch.float32
    torch.testing.assert_close(logp, want_logp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, want_entropy.detach(), rtol=1e-5, atol=1e-5)
    _assert_close_grads(got_grads, want_grads)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_padding_is_zero_and_gets_no_gradient():
    model = _tiny_llama(tied=True)
    batch = _batch()
    logp, entropy = model_token_logprobs(model, *batch, compute_entropy=True)
    padding = ~batch[3].bool()
    assert padding.any()
    assert (logp[padding] == 0).all() and (entropy[padding] == 0).all()
    assert (logp[~padding] < 0).all()


def test_biased_head():
    model = _tiny_llama(tied=False)
    head = torch.nn.Linear(32, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_()
    model.lm_head = head
    batch = _batch()
    want_logp, want_entropy = _reference(model, *batch, 1.0)
    want_grads = _loss_and_grads(model, want_logp, want_entropy, batch[3])
    logp, entropy = model_token_logprobs(model, *batch, chunk_size=4, compute_entropy=True)
    _assert_close_grads(_loss_and_grads(model, logp, entropy, batch[3]), want_grads)
    assert "lm_head.bias" in want_grads


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "v_proj", "lm_head"]])
def test_lora(targets):
    """peft LoRA: gradients reach the adapters through the hidden states; a LoRA-adapted head is
    not a plain Linear and goes through the plain path on the head module."""
    model = get_peft_model(
        _tiny_llama(tied=False), LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    )
    batch = _batch(seed=3)
    want_logp, want_entropy = _reference(model, *batch, 1.0)
    want_grads = _loss_and_grads(model, want_logp, want_entropy, batch[3])
    logp, entropy = model_token_logprobs(model, *batch, chunk_size=7, compute_entropy=True)
    got_grads = _loss_and_grads(model, logp, entropy, batch[3])
    adapted_modules = 2 * 2 + ("lm_head" in targets)  # q_proj, v_proj in each of 2 layers (+ the head)
    assert all("lora_" in name for name in got_grads) and len(got_grads) == 2 * adapted_modules  # A and B
    torch.testing.assert_close(logp, want_logp.detach(), rtol=1e-5, atol=1e-5)
    _assert_close_grads(got_grads, want_grads)


def test_zero3_partitioned_head_is_called_as_a_module(monkeypatch):
    """ZeRO-3 gathers a head's parameters only inside its module call: no fused op on them."""
    from rlpost.ops import model_logprobs

    def fail(*args, **kwargs):
        raise AssertionError("fused op used on a partitioned head")

    monkeypatch.setattr(model_logprobs, "fused_token_logprobs", fail)
    model = _tiny_llama(tied=False)
    model.lm_head.weight.ds_id = 0  # what DeepSpeed ZeRO-3 attaches to partitioned parameters
    batch = _batch()
    logp, _ = model_token_logprobs(model, *batch, fused=True)
    want, _ = _reference(model, *batch, 1.0)
    torch.testing.assert_close(logp, want.detach(), rtol=1e-5, atol=1e-5)


def test_empty_response_mask():
    model = _tiny_llama(tied=True)
    input_ids, attention_mask, response_index, response_mask = _batch()
    empty = torch.zeros_like(response_mask)
    logp, entropy = model_token_logprobs(model, input_ids, attention_mask, response_index, empty, compute_entropy=True)
    assert (logp == 0).all() and (entropy == 0).all()
    (logp.sum() + entropy.sum()).backward()  # connected to the graph, zero gradients
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_response_at_position_zero_is_rejected():
    model = _tiny_llama(tied=True)
    input_ids, attention_mask, response_index, response_mask = _batch()
    response_index = response_index.clone()
    response_index[0, 0] = 0
    with pytest.raises(ValueError, match="position 0"):
        model_token_logprobs(model, input_ids, attention_mask, response_index, response_mask)


def test_bf16_autocast_close_to_fp32():
    """Under the learner's bf16 autocast, fused and plain agree with each other within bf16 rounding."""
    model = _tiny_llama(tied=True)
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _ = model_token_logprobs(model, *batch, fused=True)
        plain, _ = model_token_logprobs(model, *batch, fused=False)
    exact, _ = model_token_logprobs(model, *batch, fused=False)
    assert fused.dtype == torch.float32
    # both paths run the same bf16 body; they differ only in the head's rounding (see test_logprobs)
    spread = float((plain - exact).detach().abs().max())
    assert float((fused - plain).detach().abs().max()) <= 2 * spread + 1e-3


def _truncated_reference(model, input_ids, attention_mask, response_index, response_mask, sampling):
    """Full logits through transformers' Temperature/TopK/TopP warpers (the engines' rule), the
    scored token always kept (rlpost's documented choice for off-policy tokens); log-prob and
    entropy of the renormalised kept set, differentiable with the kept set held fixed."""
    from transformers import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

    temperature, top_p, top_k = sampling
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
    predictor = (response_index - 1).clamp(min=0)
    rows = torch.arange(input_ids.shape[0]).unsqueeze(1)
    z = logits[rows, predictor]  # [B, T, V]
    targets = input_ids.gather(1, response_index)
    warped = LogitsProcessorList([TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)])(None, z.detach().flatten(0, 1))
    keep = torch.isfinite(warped).view(z.shape).scatter(-1, targets.unsqueeze(-1), True)
    log_probs = torch.log_softmax(z.masked_fill(~keep, -torch.inf), dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs.masked_fill(~keep, 0.0)).sum(-1)
    mask = response_mask.bool()
    return torch.where(mask, logp, torch.zeros(())), torch.where(mask, entropy, torch.zeros(()))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_top_p_top_k_match_transformers_warpers(tied, fused):
    """The learner's log-probs under top-k/top-p: what the engines sample from, with gradients."""
    model = _tiny_llama(tied)
    batch = _batch()
    sampling = (0.7, 0.8, 20)
    want_logp, want_entropy = _truncated_reference(model, *batch, sampling)
    want_grads = _loss_and_grads(model, want_logp, want_entropy, batch[3])
    logp, entropy = model_token_logprobs(
        model, *batch, temperature=0.7, top_p=0.8, top_k=20, fused=fused, chunk_size=5, compute_entropy=True
    )
    got_grads = _loss_and_grads(model, logp, entropy, batch[3])
    torch.testing.assert_close(logp, want_logp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, want_entropy.detach(), rtol=1e-5, atol=1e-5)
    _assert_close_grads(got_grads, want_grads)
    untruncated, _ = model_token_logprobs(model, *batch, temperature=0.7, fused=fused)
    assert (logp.detach() > untruncated.detach() + 1e-3).any(), "the warps must drop probability mass"
