"""Row-wise log-softmax-gather (+ entropy) over a chunk of logits, as torch custom ops.

Two ops, both on a logits chunk `z` [C, V] (any float dtype, rows contiguous) scaled by `scale`
(1/temperature) before the softmax; statistics are computed in fp32 (fp64 for fp64 inputs):

- `rlpost::token_logprob_entropy(logits, targets, scale, compute_entropy) -> (logp, lse, entropy)`
  logp[c] = log softmax(scale·z[c])[targets[c]], lse[c] = logsumexp(scale·z[c]),
  entropy[c] = -Σ_v p·log p (an empty tensor when `compute_entropy` is False). Differentiable
  (w.r.t. logits) through the second op.
- `rlpost::logprob_grad_inplace(logits!, targets, lse, entropy, grad_logp, grad_lse, grad_entropy, scale)`
  overwrites `logits` with dL/dlogits. The chunked linear op recomputes a chunk's logits into a
  reused buffer and turns that buffer into its gradient in place: no second [C, V] allocation.

The CPU (default) implementation is plain torch; on CUDA the Triton kernels of
`rlpost.ops.triton_kernels` run (imported lazily, so this module does not need triton).

Gradient used by both implementations, with p = softmax(scale·z), E[z] = Σ p·(scale·z) = lse - H:
  d logp/d(scale·z) = onehot(target) - p
  d lse /d(scale·z) = p
  d H   /d(scale·z) = p·(E[z] - scale·z) = -p·(log p + H)
"""

# No `from __future__ import annotations`: torch.library infers the op schemas from real annotations.
from typing import Optional

import torch

Tensor = torch.Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs (softmax statistics must not be bf16), fp64 kept (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# forward


@torch.library.custom_op("rlpost::token_logprob_entropy", mutates_args=())
def token_logprob_entropy(
    logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """[C, V] logits, [C] targets -> logp [C], lse [C], entropy [C] (or [0]), all fp32 (fp64 for fp64)."""
    acc = accumulation_dtype(logits.dtype)
    z = logits.to(acc)
    if scale != 1.0:
        z = z * scale
    # log_softmax is one fused, vectorised pass; lse is recovered from the target column
    # (z_t - logp_t), which costs no extra pass over the vocabulary.
    log_probs = torch.log_softmax(z, dim=-1)
    column = targets.unsqueeze(-1)
    logp = log_probs.gather(-1, column).squeeze(-1)
    lse = z.gather(-1, column).squeeze(-1) - logp
    if not compute_entropy:
        return logp, lse, logp.new_empty(0)
    # -Σ p·log p, reusing the exp buffer for the product (log_probs is a private temporary).
    entropy = -torch.exp(log_probs).mul_(log_probs).sum(dim=-1)
    return logp, lse, entropy


@token_logprob_entropy.register_fake
def _(logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    acc = accumulation_dtype(logits.dtype)
    rows = logits.shape[0]
    stat = logits.new_empty(rows, dtype=acc)
    return stat, torch.empty_like(stat), logits.new_empty(rows if compute_entropy else 0, dtype=acc)


@token_logprob_entropy.register_kernel("cuda")
def _(logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    from rlpost.ops import triton_kernels

    return triton_kernels.logprob_entropy_forward(logits, targets, scale, compute_entropy)


# --------------------------------------------------------------------------------------------
# backward (in place)


@torch.library.custom_op("rlpost::logprob_grad_inplace", mutates_args=("logits",))
def logprob_grad_inplace(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_logp: Optional[Tensor],
    grad_lse: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    scale: float,
) -> None:
    """Overwrite `logits` [C, V] with dL/dlogits given the upstream grads of the forward outputs.

    A missing (None) upstream grad counts as zero; `entropy` is needed only with `grad_entropy`.
    """
    acc = accumulation_dtype(logits.dtype)
    # fp32 logits are worked on in place; low-precision ones go through one fp32 temporary.
    work = logits if logits.dtype == acc else logits.to(acc)
    if scale != 1.0:
        work.mul_(scale)
    work.sub_(lse.unsqueeze(-1))  # work = log p over the vocabulary
    row_coef = _row_coefficient(lse, grad_logp, grad_lse)  # [C]: coefficient of p in the gradient
    if grad_entropy is not None:
        if entropy is None:
            raise ValueError("logprob_grad_inplace: grad_entropy needs the forward entropy")
        probs = torch.exp(work)
        # p·(row_coef - g_H·(log p + H)) written as (row_coef - g_H·H) + (-g_H)·log p, one pass.
        torch.addcmul(
            (row_coef - grad_entropy * entropy).unsqueeze(-1), work, (-grad_entropy).unsqueeze(-1), out=work
        )
        work.mul_(probs)
    else:
        work.exp_().mul_(row_coef.unsqueeze(-1))
    if grad_logp is not None:
        rows = torch.arange(work.shape[0], device=work.device)
        work[rows, targets] += grad_logp.to(acc)
    if scale != 1.0:
        work.mul_(scale)
    if work is not logits:
        logits.copy_(work)


def _row_coefficient(lse: Tensor, grad_logp: Optional[Tensor], grad_lse: Optional[Tensor]) -> Tensor:
    """[C] coefficient of p in dL/dz from the logp and lse terms: g_lse - g_logp."""
    coef = torch.zeros_like(lse)
    if grad_lse is not None:
        coef = coef + grad_lse.to(lse.dtype)
    if grad_logp is not None:
        coef = coef - grad_logp.to(lse.dtype)
    return coef


@logprob_grad_inplace.register_fake
def _(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_logp: Optional[Tensor],
    grad_lse: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    scale: float,
) -> None:
    return None


@logprob_grad_inplace.register_kernel("cuda")
def _(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_logp: Optional[Tensor],
    grad_lse: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    scale: float,
) -> None:
    from rlpost.ops import triton_kernels

    triton_kernels.logprob_entropy_backward_(logits, targets, lse, entropy, grad_logp, grad_lse, grad_entropy, scale)


# --------------------------------------------------------------------------------------------
# autograd of the functional op (standalone use on full logits; the chunked op calls the
# in-place op itself)


def _setup_context(ctx, inputs, output) -> None:
    logits, targets, scale, compute_entropy = inputs
    _, lse, entropy = output
    ctx.scale = scale
    ctx.compute_entropy = compute_entropy
    ctx.save_for_backward(logits, targets, lse, entropy)


def _backward(ctx, grad_logp: Optional[Tensor], grad_lse: Optional[Tensor], grad_entropy: Optional[Tensor]):
    logits, targets, lse, entropy = ctx.saved_tensors
    grad = logits.clone()
    logprob_grad_inplace(
        grad,
        targets,
        lse,
        entropy if ctx.compute_entropy else None,
        grad_logp,
        grad_lse,
        grad_entropy if ctx.compute_entropy else None,
        ctx.scale,
    )
    return grad, None, None, None


torch.library.register_autograd("rlpost::token_logprob_entropy", _backward, setup_context=_setup_context)
