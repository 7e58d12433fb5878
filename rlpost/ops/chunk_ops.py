"""Row-wise log-softmax-gather (+ entropy) over a chunk of logits, as torch custom ops.

Ops on a logits chunk `z` [C, V] (any float dtype, rows contiguous) scaled by `scale`
(1/temperature) before the softmax; statistics are computed in fp32 (fp64 for fp64 inputs):

- `rlpost::token_logprob_entropy(logits, targets, scale, compute_entropy) -> (logp, lse, entropy)`
  logp[c] = log softmax(scale·z[c])[targets[c]], lse[c] = logsumexp(scale·z[c]),
  entropy[c] = -Σ_v p·log p (an empty tensor when `compute_entropy` is False). Functional and
  differentiable w.r.t. logits (through the in-place gradient op).
- `rlpost::token_logprob_entropy_scratch(logits!, targets, scale, compute_entropy, workspace!?)`:
  the same outputs, using `logits` (and, for bf16/fp16 logits, the fp32 `workspace` [>= C, V]) as
  scratch space, whose contents are then undefined.
- `rlpost::logprob_grad_inplace(logits!, targets, lse, entropy, grad_logp, grad_lse, grad_entropy,
  scale, workspace!?)` overwrites `logits` with dL/dlogits.
The chunked linear op recomputes each chunk's logits into one reused buffer and runs the scratch
ops on it: no [C, V] allocation per chunk (on the CPU a fresh 200 MB tensor costs page faults
comparable to the softmax itself).

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
# CPU implementations (plain torch, in place on an fp32 work buffer)


def _work_buffer(logits: Tensor, workspace: Optional[Tensor]) -> Tensor:
    """The fp32 (fp64) buffer to compute in: `logits` itself when already in that dtype (the caller
    lets us overwrite it), else an upcast copy in `workspace` (allocated if None)."""
    acc = accumulation_dtype(logits.dtype)
    if logits.dtype == acc:
        return logits
    if workspace is None:
        return logits.to(acc)
    if workspace.dtype != acc or workspace.shape[1:] != logits.shape[1:] or workspace.shape[0] < logits.shape[0]:
        raise ValueError(
            f"workspace must be {acc} [>= {logits.shape[0]}, {logits.shape[1]}], "
            f"got {workspace.dtype} {tuple(workspace.shape)}"
        )
    return workspace[: logits.shape[0]].copy_(logits)


def _stats_inplace(work: Tensor, targets: Tensor, scale: float, compute_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, lse, entropy) of the rows of `work` [C, V], which is destroyed.

    In place with public ops, no [C, V] temporary: e = exp(z - max) overwrites z; the entropy uses
    H = log Σe - Σ e·log e / Σe (xlogy: 0·log 0 = 0), since log e recovers z - max to fp32 rounding.
    """
    if scale != 1.0:
        work.mul_(scale)
    z_target = work.gather(1, targets.unsqueeze(1)).squeeze(1)
    row_max = work.amax(dim=1, keepdim=True)
    work.sub_(row_max).exp_()
    total = work.sum(dim=1)
    log_total = total.log()
    lse = row_max.squeeze(1) + log_total
    logp = z_target - lse
    if not compute_entropy:
        return logp, lse, logp.new_empty(0)
    entropy = log_total - torch.special.xlogy(work, work, out=work).sum(dim=1) / total
    return logp, lse, entropy


def _grad_inplace(
    work: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_logp: Optional[Tensor],
    grad_lse: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    scale: float,
) -> None:
    """Turn the logits in `work` [C, V] into dL/dlogits, in place."""
    if scale != 1.0:
        work.mul_(scale)
    work.sub_(lse.unsqueeze(1))  # work = log p over the vocabulary
    row_coef = _row_coefficient(lse, grad_logp, grad_lse)  # [C]: coefficient of p in the gradient
    if grad_entropy is not None:
        if entropy is None:
            raise ValueError("logprob_grad_inplace: grad_entropy needs the forward entropy")
        probs = torch.exp(work)  # p and log p are both needed: the one extra buffer of this case
        # p·(row_coef - g_H·(log p + H)) as (row_coef - g_H·H) + (-g_H)·log p, one pass, then · p
        torch.addcmul((row_coef - grad_entropy * entropy).unsqueeze(1), work, (-grad_entropy).unsqueeze(1), out=work)
        work.mul_(probs)
    else:
        work.exp_().mul_(row_coef.unsqueeze(1))
    if grad_logp is not None:
        rows = torch.arange(work.shape[0], device=work.device)
        work[rows, targets] += grad_logp.to(work.dtype)
    if scale != 1.0:
        work.mul_(scale)


def _row_coefficient(lse: Tensor, grad_logp: Optional[Tensor], grad_lse: Optional[Tensor]) -> Tensor:
    """[C] coefficient of p in dL/dz from the logp and lse terms: g_lse - g_logp."""
    coef = torch.zeros_like(lse)
    if grad_lse is not None:
        coef = coef + grad_lse.to(lse.dtype)
    if grad_logp is not None:
        coef = coef - grad_logp.to(lse.dtype)
    return coef


def _stat_outputs_fake(logits: Tensor, compute_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    acc = accumulation_dtype(logits.dtype)
    rows = logits.shape[0]
    stat = logits.new_empty(rows, dtype=acc)
    return stat, torch.empty_like(stat), logits.new_empty(rows if compute_entropy else 0, dtype=acc)


# --------------------------------------------------------------------------------------------
# forward ops


@torch.library.custom_op("rlpost::token_logprob_entropy", mutates_args=())
def token_logprob_entropy(
    logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """[C, V] logits, [C] targets -> logp [C], lse [C], entropy [C] (or [0]), all fp32 (fp64 for fp64)."""
    acc = accumulation_dtype(logits.dtype)
    work = logits.clone() if logits.dtype == acc else logits.to(acc)  # private scratch
    return _stats_inplace(work, targets, scale, compute_entropy)


@token_logprob_entropy.register_fake
def _(logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _stat_outputs_fake(logits, compute_entropy)


@token_logprob_entropy.register_kernel("cuda")
def _(logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    from rlpost.ops import triton_kernels

    return triton_kernels.logprob_entropy_forward(logits, targets, scale, compute_entropy)


@torch.library.custom_op("rlpost::token_logprob_entropy_scratch", mutates_args=("logits", "workspace"))
def token_logprob_entropy_scratch(
    logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool, workspace: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """`token_logprob_entropy` that may overwrite `logits` and `workspace` (fp32 [>= C, V], used for
    low-precision logits; None allocates one)."""
    return _stats_inplace(_work_buffer(logits, workspace), targets, scale, compute_entropy)


@token_logprob_entropy_scratch.register_fake
def _(logits, targets, scale, compute_entropy, workspace):
    return _stat_outputs_fake(logits, compute_entropy)


@token_logprob_entropy_scratch.register_kernel("cuda")
def _(logits, targets, scale, compute_entropy, workspace):
    from rlpost.ops import triton_kernels

    # one pass over the logits, in registers: no scratch needed
    return triton_kernels.logprob_entropy_forward(logits, targets, scale, compute_entropy)


# --------------------------------------------------------------------------------------------
# backward op (in place)


@torch.library.custom_op("rlpost::logprob_grad_inplace", mutates_args=("logits", "workspace"))
def logprob_grad_inplace(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_logp: Optional[Tensor],
    grad_lse: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    scale: float,
    workspace: Optional[Tensor],
) -> None:
    """Overwrite `logits` [C, V] with dL/dlogits given the upstream grads of the forward outputs.

    A missing (None) upstream grad counts as zero; `entropy` is needed only with `grad_entropy`.
    Low-precision logits are worked on in fp32 (in `workspace` if given) and rounded once at the end.
    """
    work = _work_buffer(logits, workspace)
    _grad_inplace(work, targets, lse, entropy, grad_logp, grad_lse, grad_entropy, scale)
    if work is not logits:
        logits.copy_(work)


@logprob_grad_inplace.register_fake
def _(logits, targets, lse, entropy, grad_logp, grad_lse, grad_entropy, scale, workspace) -> None:
    return None


@logprob_grad_inplace.register_kernel("cuda")
def _(logits, targets, lse, entropy, grad_logp, grad_lse, grad_entropy, scale, workspace) -> None:
    from rlpost.ops import triton_kernels

    triton_kernels.logprob_entropy_backward_(logits, targets, lse, entropy, grad_logp, grad_lse, grad_entropy, scale)


# --------------------------------------------------------------------------------------------
# autograd of the functional op (standalone use on full logits)


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
        None,
    )
    return grad, None, None, None


torch.library.register_autograd("rlpost::token_logprob_entropy", _backward, setup_context=_setup_context)
