"""Triton kernels behind the CUDA implementations of the rlpost custom ops.

Imported lazily (only when a CUDA tensor reaches an op, or by tests): the package works without
triton. Launchers take and return torch tensors and mirror the ops' signatures:

- `logprob_entropy_forward` / `logprob_entropy_backward_`: one program per row of a logits chunk,
  streaming the vocabulary in BLOCK_V tiles with an online logsumexp (and Σ e^{z-m}·z for the
  entropy); the backward overwrites the logits with their gradient.
- `policy_loss_forward` / `policy_loss_backward`: elementwise over [N, T] tokens.

On a machine without a GPU the kernels run under the Triton interpreter: TRITON_INTERPRET=1 must
be in the environment when this module is *imported* (triton.jit reads it at decoration time),
and the tensors may then live on the CPU.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor

_KL_CODES = {"k1": 1, "k2": 2, "k3": 3, "k3+": 4}
LOG_RATIO_CLAMP = 20.0  # same guards as rlpost.objectives.core (verl)
K3_CLAMP = 10.0


def _block_v(vocab: int) -> int:
    return min(4096, triton.next_power_of_2(max(vocab, 16)))


# --------------------------------------------------------------------------------------------
# log-softmax-gather + entropy


@triton.jit
def _logprob_entropy_fwd_kernel(
    logits_ptr,
    row_stride,
    targets_ptr,
    logp_ptr,
    lse_ptr,
    entropy_ptr,
    vocab,
    scale,
    COMPUTE_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    # Online logsumexp: running max m, Σ e^{z-m} and (for the entropy) Σ e^{z-m}·z.
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    sz = tl.zeros((), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < vocab
        z = tl.load(row_ptr + cols, mask=valid, other=float("-inf")).to(tl.float32) * scale
        m_new = tl.maximum(m, tl.max(z, axis=0))
        rescale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        s = s * rescale + tl.sum(e, axis=0)
        if COMPUTE_ENTROPY:
            # masked lanes hold z = -inf and e = 0: zero z there rather than form 0·inf
            sz = sz * rescale + tl.sum(e * tl.where(valid, z, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(targets_ptr + row)
    z_target = tl.load(row_ptr + target).to(tl.float32) * scale
    tl.store(logp_ptr + row, z_target - lse)
    tl.store(lse_ptr + row, lse)
    if COMPUTE_ENTROPY:
        tl.store(entropy_ptr + row, lse - sz / s)  # H = lse - E_p[z]


@triton.jit
def _logprob_entropy_bwd_kernel(
    logits_ptr,
    row_stride,
    targets_ptr,
    lse_ptr,
    entropy_ptr,
    grad_logp_ptr,
    grad_lse_ptr,
    grad_entropy_ptr,
    vocab,
    scale,
    HAS_GRAD_LOGP: tl.constexpr,
    HAS_GRAD_LSE: tl.constexpr,
    HAS_GRAD_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    lse = tl.load(lse_ptr + row)
    target = tl.load(targets_ptr + row)
    # dL/dz = p·(g_lse - g_logp + g_H·(E[z] - z)) + g_logp·onehot(target), E[z] = lse - H.
    g_logp = tl.zeros((), tl.float32)
    coef = tl.zeros((), tl.float32)
    if HAS_GRAD_LOGP:
        g_logp = tl.load(grad_logp_ptr + row).to(tl.float32)
        coef -= g_logp
    if HAS_GRAD_LSE:
        coef += tl.load(grad_lse_ptr + row).to(tl.float32)
    g_h = tl.zeros((), tl.float32)
    mean_z = tl.zeros((), tl.float32)
    if HAS_GRAD_ENTROPY:
        g_h = tl.load(grad_entropy_ptr + row).to(tl.float32)
        mean_z = lse - tl.load(entropy_ptr + row)
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < vocab
        z = tl.load(row_ptr + cols, mask=valid, other=0.0).to(tl.float32) * scale
        p = tl.exp(z - lse)
        grad = p * coef
        if HAS_GRAD_ENTROPY:
            grad += g_h * p * (mean_z - z)
        grad = tl.where(cols == target, grad + g_logp, grad)
        tl.store(row_ptr + cols, (grad * scale).to(logits_ptr.dtype.element_ty), mask=valid)


def _rows_contiguous(logits: Tensor) -> None:
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError("logits must be [C, V] with contiguous rows")


def logprob_entropy_forward(
    logits: Tensor, targets: Tensor, scale: float, compute_entropy: bool, block_v: Optional[int] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton twin of `rlpost::token_logprob_entropy` (fp32 statistics). `block_v`: vocabulary tile
    (a power of 2; default min(4096, next power of 2 of V)), small in tests to exercise the tiling."""
    _rows_contiguous(logits)
    rows, vocab = logits.shape
    logp = torch.empty(rows, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if compute_entropy else logp.new_empty(0)
    if rows:
        _logprob_entropy_fwd_kernel[(rows,)](
            logits, logits.stride(0), targets.contiguous(), logp, lse, entropy if compute_entropy else logp,
            vocab, float(scale), COMPUTE_ENTROPY=compute_entropy, BLOCK_V=block_v or _block_v(vocab),
        )
    return logp, lse, entropy


def logprob_entropy_backward_(
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    entropy: Optional[Tensor],
    grad_logp: Optional[Tensor],
    grad_lse: Optional[Tensor],
    grad_entropy: Optional[Tensor],
    scale: float,
    block_v: Optional[int] = None,
) -> None:
    """Triton twin of `rlpost::logprob_grad_inplace`: overwrites `logits` with dL/dlogits."""
    _rows_contiguous(logits)
    rows, vocab = logits.shape
    if grad_entropy is not None and entropy is None:
        raise ValueError("grad_entropy needs the forward entropy")
    if not rows:
        return
    as_f32 = lambda t: t.contiguous().float() if t is not None else lse  # noqa: E731  (placeholder pointer)
    _logprob_entropy_bwd_kernel[(rows,)](
        logits, logits.stride(0), targets.contiguous(), lse.contiguous().float(), as_f32(entropy),
        as_f32(grad_logp), as_f32(grad_lse), as_f32(grad_entropy), vocab, float(scale),
        HAS_GRAD_LOGP=grad_logp is not None, HAS_GRAD_LSE=grad_lse is not None,
        HAS_GRAD_ENTROPY=grad_entropy is not None, BLOCK_V=block_v or _block_v(vocab),
    )


# --------------------------------------------------------------------------------------------
# policy loss


@triton.jit
def _policy_loss_terms(
    logp, old_logp, adv, ref_logp, clip_low, clip_high, clip_c, kl_coef,
    CLIP: tl.constexpr, DUAL_CLIP: tl.constexpr, KL: tl.constexpr,
):
    """(loss, dloss/dlogp) per token, fp32; the formulas of ALGORITHMS §0.1/§0.2 and their
    derivatives, with torch's conventions at ties (clamp passes its bounds, max picks the
    unclipped branch when both are equal, which gives the same gradient)."""
    log_ratio = logp - old_logp
    in_range = (log_ratio >= -20.0) & (log_ratio <= 20.0)
    ratio = tl.exp(tl.minimum(tl.maximum(log_ratio, -20.0), 20.0))
    dratio = tl.where(in_range, ratio, 0.0)
    unclipped = -adv * ratio
    loss = unclipped
    grad = -adv * dratio
    if CLIP:
        clipped = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
        use_unclipped = unclipped >= clipped
        loss = tl.where(use_unclipped, unclipped, clipped)
        grad = tl.where(use_unclipped, grad, 0.0)
        if DUAL_CLIP:
            bound = -adv * clip_c
            dual = (adv < 0.0) & (loss > bound)
            loss = tl.where(dual, bound, loss)
            grad = tl.where(dual, 0.0, grad)
    if KL != 0:
        diff = logp - ref_logp
        if KL == 1:  # k1
            kl = diff
            dkl = diff * 0.0 + 1.0
        elif KL == 2:  # k2
            kl = 0.5 * diff * diff
            dkl = diff
        else:  # k3 (value), gradient k3 (KL == 3) or straight-through k2 (KL == 4, "k3+")
            d = ref_logp - logp
            d_in = (d >= -20.0) & (d <= 20.0)
            d = tl.minimum(tl.maximum(d, -20.0), 20.0)
            k3 = tl.exp(d) - d - 1.0
            k3_in = (k3 >= -10.0) & (k3 <= 10.0)
            kl = tl.minimum(tl.maximum(k3, -10.0), 10.0)
            if KL == 3:
                dkl = tl.where(d_in & k3_in, 1.0 - tl.exp(d), 0.0)  # d k3/d logp = -(e^d - 1)
            else:
                dkl = diff
        loss += kl_coef * kl
        grad += kl_coef * dkl
    return loss, grad


@triton.jit
def _policy_loss_kernel(
    logp_ptr, old_ptr, adv_ptr, mask_ptr, ref_ptr, grad_out_ptr, out_ptr,
    n, clip_low, clip_high, clip_c, kl_coef,
    BACKWARD: tl.constexpr, CLIP: tl.constexpr, DUAL_CLIP: tl.constexpr, KL: tl.constexpr, BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < n
    logp = tl.load(logp_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    keep = tl.load(mask_ptr + offsets, mask=valid, other=0.0) != 0
    ref = logp
    if KL != 0:
        ref = tl.load(ref_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    loss, grad = _policy_loss_terms(logp, old, adv, ref, clip_low, clip_high, clip_c, kl_coef, CLIP, DUAL_CLIP, KL)
    if BACKWARD:
        grad_out = tl.load(grad_out_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        result = tl.where(keep, grad_out * grad, 0.0)
    else:
        result = tl.where(keep, loss, 0.0)
    tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=valid)


def _launch_policy_loss(
    grad_loss: Optional[Tensor],
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logp: Optional[Tensor],
    clip_low: float,
    clip_high: float,
    clip_c: Optional[float],
    clip_enabled: bool,
    kl_coef: float,
    kl_estimator: str,
) -> Tensor:
    shape = logp.shape
    flat = lambda t: t.expand(shape).contiguous().reshape(-1)  # noqa: E731
    adv = advantages.unsqueeze(-1) if advantages.dim() == len(shape) - 1 else advantages
    kl = _KL_CODES[kl_estimator] if ref_logp is not None and kl_coef != 0.0 else 0
    logp_flat = flat(logp)
    out = torch.empty_like(logp_flat)
    n = out.numel()
    if n:
        block = 1024
        _policy_loss_kernel[(triton.cdiv(n, block),)](
            logp_flat, flat(old_logp), flat(adv), flat(mask.to(torch.float32)),
            flat(ref_logp) if kl else logp_flat, flat(grad_loss) if grad_loss is not None else logp_flat, out,
            n, float(clip_low), float(clip_high), float(clip_c) if clip_c is not None else 0.0, float(kl_coef),
            BACKWARD=grad_loss is not None, CLIP=clip_enabled, DUAL_CLIP=clip_enabled and clip_c is not None,
            KL=kl, BLOCK=block,
        )
    return out.reshape(shape)


def policy_loss_forward(*op_inputs) -> Tensor:
    """Triton twin of `rlpost::policy_loss` (same arguments): masked per-token loss [N, T]."""
    return _launch_policy_loss(None, *op_inputs)


def policy_loss_backward(grad_loss: Tensor, *op_inputs) -> Tensor:
    """Triton twin of `rlpost::policy_loss_backward` (same arguments): grad_loss · dloss/dlogp, 0 where masked."""
    return _launch_policy_loss(grad_loss, *op_inputs)
