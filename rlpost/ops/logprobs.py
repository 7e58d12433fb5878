"""Per-token log-probs (and entropy) of sampled tokens: the plain path and the chunked fused path.

Plain path (`token_logprobs_from_logits`): full logits -> fp32 log_softmax -> gather. It holds the
[N, V] logits, their log-softmax and, in backward, their gradient: several N·V·4 bytes.

Fused path (`fused_token_logprobs`): logits = (hidden @ weight.T + bias) / temperature computed
`chunk_size` tokens at a time. Forward keeps only per-token statistics (logp, logsumexp, entropy);
backward recomputes each chunk's logits into the same buffer (except the last chunk's, kept from
forward), turns it into dL/dlogits in place and accumulates grad_hidden, grad_weight (fp32) and
grad_bias. Peak extra memory is one or two [chunk_size, V] buffers instead of several [N, V]
tensors, at the cost of one more matmul per chunk but the last.

Sampling warps (`top_p` < 1, `top_k` >= 1) make both paths score the distribution the engines
sample from: temperature, then top-k, then top-p (nucleus), renormalised over the kept tokens
(`sampling_keep_threshold`). The kept set is a constant of the gradient: d logp / d z =
(onehot - p_kept) / T, zero outside the set. The scored token is always kept, so an off-policy
token outside the current policy's nucleus gets a finite log-prob (on-policy it is always inside).
"""

from __future__ import annotations

import torch

from rlpost.ops import chunk_ops  # noqa: F401  (registers the rlpost:: custom ops)
from rlpost.ops.chunk_ops import accumulation_dtype

Tensor = torch.Tensor

DEFAULT_CHUNK_SIZE = 1024
"""Tokens per chunk. On the 2-core CPU (benchmarks/logprob_ops.py, V=49152, 2048-8192 tokens)
chunks of 512-1024 were fastest (smaller ones make skinnier, slower matmuls; larger ones leave the
caches) and kept the forward+backward peak at 0.3-0.5 GiB against 4.4 GiB for the plain path at
8192 tokens. The [chunk, V] buffers: 192 MiB fp32 at V=49152, 594 MiB at V=151936."""


# --------------------------------------------------------------------------------------------
# plain path


def token_logprobs_from_logits(
    logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    compute_entropy: bool = False,
    *,
    top_p: float = 1.0,
    top_k: int = -1,
) -> tuple[Tensor, Tensor | None]:
    """Reference path: logits [..., V], targets [...] long -> (logp [...], entropy [...] | None), fp32.

    What most trainers do: upcast to fp32 (fp64 stays fp64), divide by the temperature, log_softmax over the vocabulary,
    gather the target column; entropy = -Σ p·log p of the same distribution. With `top_p` < 1 or
    `top_k` >= 1 the distribution is the truncated, renormalised one the engines sample from.
    """
    logits = logits.to(accumulation_dtype(logits.dtype))
    if temperature != 1.0:
        logits = logits / temperature
    if warps_sampling(top_p, top_k):
        flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        keep, fill = sampling_mask(flat.detach(), flat_targets, sampling_keep_threshold(flat.detach(), top_p, top_k))
        logits = torch.where(keep, flat, fill).reshape(logits.shape)
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1) if compute_entropy else None
    return logp, entropy


# --------------------------------------------------------------------------------------------
# sampling warps (top-k, top-p)

MASK_MARGIN = 1e4
"""Dropped tokens get the row's max logit minus this: exp(-1e4) is exactly 0 in fp32 and fp64, so
they carry no probability, while every statistic stays finite (-inf would turn the entropy and its
gradient into 0·inf = NaN)."""

THRESHOLD_ROWS = 64
"""Rows sorted at a time for top-p: bounds the sort's [rows, V] values and indices (~19 MiB at V=49152)."""


def warps_sampling(top_p: float, top_k: int) -> bool:
    """Whether top-p/top-k truncate the distribution (`top_k` < 1 and `top_p` = 1 disable them)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return top_p < 1.0 or top_k >= 1


def sampling_keep_threshold(logits: Tensor, top_p: float = 1.0, top_k: int = -1) -> Tensor:
    """[C, V] tempered logits -> [C] (fp32, fp64 for fp64): the lowest logit that top-k, then top-p, keep.

    The rule of transformers' TopK/TopP warpers and vLLM's `apply_top_k_top_p`: top-k keeps the
    logits >= the k-th largest; top-p sorts the survivors ascending and drops those whose
    cumulative probability is <= 1 - top_p, always keeping the most likely token. Tokens tied
    with the threshold are all kept (the engines break such ties by sort order).
    """
    acc = accumulation_dtype(logits.dtype)
    thresholds = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
    for start in range(0, logits.shape[0], THRESHOLD_ROWS):
        block = logits[start : start + THRESHOLD_ROWS].to(acc)
        thresholds[start : start + block.shape[0]] = _block_threshold(block, top_p, top_k)
    return thresholds


def _block_threshold(block: Tensor, top_p: float, top_k: int) -> Tensor:
    """`sampling_keep_threshold` of a few fp32 (fp64) rows."""
    lowest = torch.full(block.shape[:1], -torch.inf, dtype=block.dtype, device=block.device)
    if 1 <= top_k < block.shape[1]:
        lowest = torch.topk(block, top_k, dim=1).values[:, -1]
        if top_p < 1.0:
            block = block.masked_fill(block < lowest[:, None], -torch.inf)
    if top_p >= 1.0:
        return lowest
    ascending = block.sort(dim=1).values
    cumulative = ascending.softmax(dim=1).cumsum(dim=1)
    dropped = cumulative <= 1.0 - top_p  # a prefix: the cumulative sum only grows
    dropped[:, -1] = False
    return ascending.gather(1, dropped.sum(dim=1, keepdim=True)).squeeze(1)


def sampling_mask(logits: Tensor, targets: Tensor | None, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """(keep [C, V] bool, fill [C, 1]) for `torch.where(keep, logits, fill)`: tokens below the row's
    threshold are dropped, the target (if given) always kept; fill = row max - MASK_MARGIN."""
    keep = logits >= thresholds.to(logits.dtype)[:, None]
    if targets is not None:
        keep[torch.arange(logits.shape[0], device=logits.device), targets] = True
    fill = logits.amax(dim=1, keepdim=True) - MASK_MARGIN
    return keep, fill


def warp_logits(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1) -> Tensor:
    """[C, V] raw logits -> fp32 logits of the sampling distribution (temperature, top-k, top-p).

    For an engine choosing the next token: softmax of the result is the distribution it samples
    from, and its log_softmax what the learner's `token_logprobs_from_logits` computes.
    """
    logits = logits.float() / temperature  # a new tensor: the caller's logits stay intact
    if not warps_sampling(top_p, top_k):
        return logits
    keep, fill = sampling_mask(logits, None, sampling_keep_threshold(logits, top_p, top_k))
    return torch.where(keep, logits, fill, out=logits)


# --------------------------------------------------------------------------------------------
# fused path


def fused_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compute_entropy: bool = False,
    top_p: float = 1.0,
    top_k: int = -1,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of `targets` under softmax((hidden @ weight.T + bias) / temperature), chunked.

    With `top_p` < 1 or `top_k` >= 1, under that distribution truncated by top-k then top-p and
    renormalised, as the engines sample (module docstring); entropy is of the same distribution.

    hidden [N, H], weight [V, H] (an untied LM head or the tied embedding matrix), bias [V] or None,
    targets [N] long in [0, V). Returns logp [N] and entropy [N] (None unless `compute_entropy`),
    fp32 (fp64 for fp64 inputs). Differentiable w.r.t. hidden, weight and bias, through both outputs.

    Matmuls run in the inputs' dtype (bf16 logits are rounded to bf16 exactly as `lm_head` would
    produce them); softmax statistics and grad_weight accumulate in fp32. Under autocast the inputs
    are cast to the autocast dtype first, as autocast would do for `lm_head`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    warps_sampling(top_p, top_k)  # validates top_p
    hidden, weight, bias = _common_dtype(hidden, weight, bias)
    # Keep the last chunk's logits for backward only if one can follow (needs_input_grad does not
    # see torch.no_grad()).
    keep_last = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    with torch.autocast(hidden.device.type, enabled=False):
        logp, entropy = _FusedLinearLogprob.apply(
            hidden,
            weight,
            bias,
            targets.long(),
            float(temperature),
            int(chunk_size),
            bool(compute_entropy),
            keep_last,
            (float(top_p), int(top_k)),
        )
    return logp, (entropy if compute_entropy else None)


def _common_dtype(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The autocast dtype when autocast is on (what `lm_head` would use), else the promoted dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    cast = lambda t: t if t is None or t.dtype == dtype else t.to(dtype)  # noqa: E731
    return cast(hidden), cast(weight), cast(bias)


class _ChunkBuffers:
    """Computes chunks of (hidden @ weight.T + bias) / temperature into one reused buffer, plus the
    fp32 workspace the chunk ops need for bf16/fp16 logits on the CPU.

    Reusing the buffers matters on the CPU: a fresh 200 MB tensor per chunk costs page faults
    comparable to the softmax itself. The temperature is folded into the matmul (alpha/beta).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        temperature: float,
        chunk_size: int,
        rows: int,
        logits: Tensor | None = None,
    ):
        self.weight_t = weight.t()
        self.inv_temperature = 1.0 / temperature
        # addmm with beta=0 ignores its input: a 0-dim zero stands in for a missing bias.
        self.bias = bias if bias is not None else weight.new_zeros(())
        self.beta = self.inv_temperature if bias is not None else 0.0
        shape = (min(chunk_size, rows), weight.shape[0])
        self.logits = logits if logits is not None else weight.new_empty(shape)
        # bf16/fp16 logits need an fp32 work buffer on the CPU; the Triton kernels work in registers.
        acc = accumulation_dtype(weight.dtype)
        needs_workspace = weight.dtype != acc and weight.device.type != "cuda"
        self.workspace = weight.new_empty(shape, dtype=acc) if needs_workspace else None

    def logits_of(self, hidden_chunk: Tensor) -> Tensor:
        out = self.logits[: hidden_chunk.shape[0]]
        return torch.addmm(self.bias, hidden_chunk, self.weight_t, beta=self.beta, alpha=self.inv_temperature, out=out)


def _mask_chunk_(logits: Tensor, targets: Tensor, thresholds: Tensor) -> None:
    """Drop, in place, the tokens of a chunk that the sampling warps cut (see `sampling_mask`)."""
    keep, fill = sampling_mask(logits, targets, thresholds)
    torch.where(keep, logits, fill, out=logits)


def _chunks(rows: int, chunk_size: int) -> list[slice]:
    return [slice(start, min(start + chunk_size, rows)) for start in range(0, rows, chunk_size)]


class _FusedLinearLogprob(torch.autograd.Function):
    """Forward saves hidden, weight, bias, targets and per-token lse (+ entropy), never [N, V].

    One exception, bounded by chunk_size × V: when a backward will follow, the last chunk's logits
    stay in the chunk buffer (which backward needs anyway) and backward starts from them instead of
    recomputing them. With a single chunk (N <= chunk_size, typical of CPU micro-batches) this saves
    one of the four matmuls.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, compute_entropy, keep_last, warps):
        if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
            raise ValueError(
                f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)}, {tuple(weight.shape)}"
            )
        if targets.shape != hidden.shape[:1]:
            raise ValueError(f"targets must be [N]={tuple(hidden.shape[:1])}, got {tuple(targets.shape)}")
        rows = hidden.shape[0]
        acc = accumulation_dtype(hidden.dtype)
        logp = hidden.new_empty(rows, dtype=acc)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if compute_entropy else logp.new_empty(0)
        # Per-token keep thresholds of the sampling warps: backward re-applies the same cut.
        thresholds = torch.empty_like(logp) if warps_sampling(*warps) else logp.new_empty(0)
        ctx.kept_logits = None
        if rows:
            buffers = _ChunkBuffers(weight, bias, temperature, chunk_size, rows)
            parts = _chunks(rows, chunk_size)
            for part in parts:
                logits = buffers.logits_of(hidden[part])
                if thresholds.numel():
                    thresholds[part] = sampling_keep_threshold(logits, *warps)
                    _mask_chunk_(logits, targets[part], thresholds[part])
                if keep_last and part is parts[-1]:
                    # the functional op leaves the logits intact for backward
                    stats = torch.ops.rlpost.token_logprob_entropy(logits, targets[part], 1.0, compute_entropy)
                    ctx.kept_logits = buffers.logits
                else:
                    stats = torch.ops.rlpost.token_logprob_entropy_scratch(
                        logits, targets[part], 1.0, compute_entropy, buffers.workspace
                    )
                logp[part], lse[part] = stats[0], stats[1]
                if compute_entropy:
                    entropy[part] = stats[2]
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy, thresholds)
        ctx.temperature, ctx.chunk_size, ctx.compute_entropy = temperature, chunk_size, compute_entropy
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        # The engine may run this inside the caller's autocast region: the buffers and matmuls
        # must keep the dtypes chosen in forward.
        with torch.autocast(ctx.saved_tensors[0].device.type, enabled=False):
            return _FusedLinearLogprob._backward(ctx, grad_logp, grad_entropy)

    @staticmethod
    def _backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse, entropy, thresholds = ctx.saved_tensors
        kept_logits, ctx.kept_logits = ctx.kept_logits, None  # consumed: a retained-graph rerun recomputes
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if not ctx.compute_entropy:
            grad_entropy = None
        rows = hidden.shape[0]
        nothing = (None,) * 6
        if rows == 0 or (grad_logp is None and grad_entropy is None):
            return _zero_grads(hidden, weight, bias, need_hidden, need_weight, need_bias) + nothing

        # dL/dlogits is linear in the upstream grads: scaling them by 1/temperature yields the
        # gradient w.r.t. the unscaled logits (chain rule of z = x / T) at no extra cost.
        inv_t = 1.0 / ctx.temperature
        grad_logp = grad_logp * inv_t if grad_logp is not None else None
        grad_entropy = grad_entropy * inv_t if grad_entropy is not None else None

        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = _GradWeight() if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=lse.dtype, device=weight.device) if need_bias else None
        buffers = _ChunkBuffers(weight, bias, ctx.temperature, ctx.chunk_size, rows, logits=kept_logits)
        parts = _chunks(rows, ctx.chunk_size)
        if kept_logits is not None:
            parts = parts[-1:] + parts[:-1]  # the kept last chunk first, before the buffer is reused
        for index, part in enumerate(parts):
            hidden_chunk = hidden[part]
            if index == 0 and kept_logits is not None:
                grad_logits = kept_logits[: part.stop - part.start]
            else:
                grad_logits = buffers.logits_of(hidden_chunk)
                if thresholds.numel():  # the kept chunk is masked already
                    _mask_chunk_(grad_logits, targets[part], thresholds[part])
            torch.ops.rlpost.logprob_grad_inplace(
                grad_logits,
                targets[part],
                lse[part],
                entropy[part] if grad_entropy is not None else None,
                grad_logp[part] if grad_logp is not None else None,
                None,
                grad_entropy[part] if grad_entropy is not None else None,
                1.0,
                buffers.workspace,
            )
            if need_hidden:
                torch.mm(grad_logits, weight, out=grad_hidden[part])
            if need_weight:
                grad_weight.add(grad_logits.t(), hidden_chunk, last=index == len(parts) - 1)
            if need_bias:
                grad_bias += grad_logits.sum(dim=0, dtype=grad_bias.dtype)
        return (
            grad_hidden,
            grad_weight.result if need_weight else None,
            grad_bias.to(bias.dtype) if need_bias else None,
        ) + nothing


class _GradWeight:
    """Σ_chunks a_k @ b_k, accumulated in fp32 (fp64), returned in the inputs' dtype.

    fp32: the first product is written, the others added in place (addmm_). bf16/fp16: a single
    chunk's product is returned as is; with several, each product lands in one reused bf16 buffer
    and is added to an fp32 accumulator in row blocks through a small fp32 temporary (mixed-dtype
    elementwise ops are several times slower than a conversion plus a same-dtype add on the CPU);
    the final sum is rounded into the bf16 buffer.
    """

    BLOCK_ROWS = 4096

    def __init__(self):
        self.sum: Tensor | None = None  # fp32 accumulator (or the fp32 result)
        self.product: Tensor | None = None  # low-precision product buffer
        self.result: Tensor | None = None

    def add(self, a: Tensor, b: Tensor, last: bool) -> None:
        acc = accumulation_dtype(a.dtype)
        if a.dtype == acc:
            self.sum = torch.mm(a, b) if self.sum is None else self.sum.addmm_(a, b)
            self.result = self.sum if last else None
            return
        first = self.product is None
        self.product = torch.mm(a, b) if first else torch.mm(a, b, out=self.product)
        if first and last:
            self.result = self.product
            return
        if first:
            self.sum = torch.empty(self.product.shape, dtype=acc, device=a.device)
        for start in range(0, self.product.shape[0], self.BLOCK_ROWS):
            rows = slice(start, start + self.BLOCK_ROWS)
            if first:
                self.sum[rows].copy_(self.product[rows])
            else:
                self.sum[rows].add_(self.product[rows].to(acc))
        if last:
            self.result = self.product.copy_(self.sum)
            self.sum = None


def _zero_grads(hidden, weight, bias, need_hidden, need_weight, need_bias):
    return (
        torch.zeros_like(hidden) if need_hidden else None,
        torch.zeros_like(weight) if need_weight else None,
        torch.zeros_like(bias) if need_bias else None,
    )
