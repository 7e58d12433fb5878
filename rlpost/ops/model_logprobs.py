"""Per-token log-probs of a batch's response tokens under a causal LM, without full-sequence logits.

The transformer body runs once; only the hidden states that predict response tokens go through
the LM head (fused and chunked, or plainly). Prompt positions never produce logits.
"""

from __future__ import annotations

import torch
from torch import nn

from rlpost.ops.logprobs import DEFAULT_CHUNK_SIZE, fused_token_logprobs, token_logprobs_from_logits

Tensor = torch.Tensor


def model_token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_index: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0, fused: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE, compute_entropy: bool = False,
    top_p: float = 1.0, top_k: int = -1, packed: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Response-aligned log-probs (and entropies) of the response tokens of a batch.

    Layout contract (the learner's `TrainBatch`):
      input_ids       [B, S] long: row i is prompt_i + response_i, left-aligned, right-padded.
      attention_mask  [B, S]: 1 on prompt and response tokens, 0 on padding.
      response_index  [B, T] long: position in `input_ids[i]` of the t-th response token of row i.
      response_mask   [B, T] (float or bool): 1 where (i, t) is a real response token.
    Returns (logp, entropy), each [B, T] fp32: logp[i, t] = log π(input_ids[i, p] | input_ids[i, :p])
    with p = response_index[i, t], computed from the hidden state at position p - 1 (the hidden
    state at s predicts token s + 1); entropy[i, t] is the entropy of that same next-token
    distribution (None unless `compute_entropy`). Entries where `response_mask` is 0 are exactly 0
    and carry no gradient. Every masked-in position must satisfy 1 <= p < S.

    `temperature` divides the logits (log-probs of the tempered sampling distribution); `top_p` < 1
    and `top_k` >= 1 then truncate and renormalise it as the rollout engines do, so that on-policy
    these are the engines' behaviour log-probs (the defaults leave it untruncated).
    `fused=True` uses the chunked fused op with the head's weight (tied or not) and bias;
    `fused=False` applies the LM head module to the selected hidden states and takes the plain
    fp32 log_softmax. Models whose head is not a plain `nn.Linear` (a LoRA-adapted head), whose
    head parameters are partitioned (DeepSpeed ZeRO-3) or that post-process logits (final logit
    soft-capping) always take the plain path on their head (still only at response positions).
    peft-wrapped models are unwrapped with `get_base_model()`; LoRA layers stay active.

    `packed=True` runs the body on the B rows' tokens (right-padded rows) concatenated into one row with
    per-sequence position ids and no attention mask, which transformers turns into a block-diagonal
    causal mask (`_packed_last_hidden_state`): the padded forward's values, no compute on padding.
    """
    causal_lm = _unwrap(model)
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(causal_lm).__name__} has no output embeddings (LM head)")
    rows, positions = _response_positions(response_index, response_mask, input_ids.shape[1])
    selected = _predicting_hidden_states(causal_lm, input_ids, attention_mask, rows, positions, packed)
    targets = input_ids[rows, positions]
    logp, entropy = _head_logprobs(
        causal_lm,
        selected,
        targets,
        temperature=temperature,
        fused=fused,
        chunk_size=chunk_size,
        compute_entropy=compute_entropy,
        top_p=top_p,
        top_k=top_k,
    )
    return _scatter(logp, response_mask), (_scatter(entropy, response_mask) if entropy is not None else None)


def _head_logprobs(
    causal_lm: nn.Module, selected: Tensor, targets: Tensor, *, fused: bool, **options
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropy) of `targets` from the selected hidden states [n, H] through the LM head.

    `options`: temperature, chunk_size, compute_entropy, top_p and top_k of `model_token_logprobs`.
    """
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if fused and _fusable_head(head) and not softcap:
        return fused_token_logprobs(selected, head.weight, targets, bias=head.bias, **options)
    logits = head(selected)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    options.pop("chunk_size")
    return token_logprobs_from_logits(logits, targets, **options)


def _fusable_head(head: nn.Module) -> bool:
    """A plain Linear whose parameters are materialised outside its forward.

    DeepSpeed ZeRO-3 partitions parameters (marked by `ds_id`) and gathers them only inside the
    owning module's forward/backward hooks: there the head must be called as a module.
    """
    return isinstance(head, nn.Linear) and not any(hasattr(p, "ds_id") for p in head.parameters())


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside a peft wrapper (LoRA layers live in it), else the model."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _last_hidden_state(causal_lm: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, S, H] final (normed) hidden states of the body; the LM head is not run."""
    body = causal_lm.get_decoder()
    if body is causal_lm:
        raise TypeError(f"cannot find the transformer body of {type(causal_lm).__name__}")
    return body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _predicting_hidden_states(
    causal_lm: nn.Module, input_ids: Tensor, attention_mask: Tensor, rows: Tensor, positions: Tensor, packed: bool
) -> Tensor:
    """[n, H] final hidden states at (row, position - 1) for each response token: the ones predicting it."""
    if packed:
        hidden, starts = _packed_last_hidden_state(causal_lm, input_ids, attention_mask)
        return hidden[0, starts[rows] + positions - 1]
    return _last_hidden_state(causal_lm, input_ids, attention_mask)[rows, positions - 1]


def _packed_last_hidden_state(causal_lm: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """([1, L, H] hidden states of the B rows' real tokens packed into one row, [B] start of each row in it).

    Without an attention mask, transformers (5.x masking_utils, sdpa and eager attention) reads sequence
    boundaries from the position ids (a position that does not follow its predecessor starts a sequence)
    and builds the block-diagonal causal mask from them."""
    body = causal_lm.get_decoder()
    valid = attention_mask.bool()
    lengths = valid.sum(dim=1)
    if bool((valid.cumsum(dim=1) != torch.arange(1, valid.shape[1] + 1, device=valid.device).clamp(max=lengths[:, None])).any()):
        raise ValueError("packing needs each row's tokens at its start (right padding only)")
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)[valid]
    starts = lengths.cumsum(dim=0) - lengths
    hidden = body(input_ids=input_ids[valid][None], position_ids=positions[None], attention_mask=None, use_cache=False)
    return hidden.last_hidden_state, starts


def _response_positions(response_index: Tensor, response_mask: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """(row, position) of every masked-in response token, in row-major order of [B, T]."""
    valid = response_mask.bool()
    rows = valid.nonzero(as_tuple=True)[0]
    positions = response_index[valid]
    if positions.numel() and (int(positions.min()) < 1 or int(positions.max()) >= seq_len):
        raise ValueError(
            f"response_index must lie in [1, {seq_len}) where response_mask is set "
            f"(got {int(positions.min())}..{int(positions.max())}): a token at position 0 has no predictor"
        )
    return rows, positions


def _scatter(values: Tensor, response_mask: Tensor) -> Tensor:
    """Packed per-token values [n] (row-major order of the mask) -> [B, T], zeros where the mask is 0.

    Differentiable w.r.t. `values`; padding gets no gradient."""
    return values.new_zeros(response_mask.shape).masked_scatter(response_mask.bool(), values)
