"""The per-token policy loss (clipped surrogate + KL penalty, masked) as a torch custom op.

  loss[i, t] = mask[i, t] · ( pg[i, t] + kl_coef · kl[i, t] )
  pg = `rlpost.objectives.core.policy_loss_per_token(...).loss`   (ALGORITHMS §0.1)
  kl = `rlpost.objectives.core.kl_penalty(logp, ref_logp, kl_estimator)`   (§0.2)

The CPU (default) implementation *is* those objective functions (forward), and their vector-Jacobian
product through `torch.func.vjp` (backward, in the autograd formula): the math lives in one place. On CUDA one Triton
kernel computes the forward and one the backward (`rlpost.ops.triton_kernels`), without the
~10 temporaries of the eager expression. The gradient flows to `logp` only: old/ref log-probs,
advantages and the mask are constants of the loss.
"""

# No `from __future__ import annotations`: torch.library infers the op schemas from real annotations.
from typing import Optional

import torch

Tensor = torch.Tensor

KL_ESTIMATORS = ("k1", "k2", "k3", "k3+")


def fused_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_c: Optional[float] = None,
    clip_enabled: bool = True,
    ref_logp: Optional[Tensor] = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> Tensor:
    """Masked per-token loss [N, T] (not aggregated); differentiable w.r.t. `logp` only.

    logp, old_logp, ref_logp, mask [N, T]; advantages [N] (per sequence) or [N, T].
    Masked-out entries are exactly 0 with zero gradient, even if their inputs are inf/NaN.
    The KL term is added when `ref_logp` is given and `kl_coef` != 0.
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}; one of {KL_ESTIMATORS}")
    if kl_coef != 0.0 and ref_logp is None:
        raise ValueError("kl_coef != 0 needs ref_logp")
    return torch.ops.rlpost.policy_loss(
        logp,
        old_logp.detach(),
        advantages.detach(),
        mask.detach(),
        ref_logp.detach() if ref_logp is not None else None,
        float(clip_low),
        float(clip_high),
        None if clip_c is None else float(clip_c),
        bool(clip_enabled),
        float(kl_coef),
        kl_estimator,
    )


def policy_loss_terms(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_c: Optional[float] = None,
    clip_enabled: bool = True,
    fused: bool = False,
):
    """The per-token clipped surrogate of every objective (`rlpost.objectives.core.PolicyLossTerms`):
    `policy_loss_per_token`'s terms, with the loss from the fused op when `fused` (`learner.fused_ops`).

    Fused, the loss and its gradient come from `rlpost::policy_loss` (Triton on CUDA: no autograd
    temporaries; on the CPU the op runs the same eager code), while the ratio and clip events, which
    only feed metrics, are computed without gradient: `ratio` is then detached. Values, gradients and
    metrics are those of the plain path either way.
    """
    # Imported here: the objectives' math is the reference of the ops (see `policy_loss_reference`).
    from rlpost.objectives.core import policy_loss_per_token

    clip = dict(clip_low=clip_low, clip_high=clip_high, clip_c=clip_c, clip_enabled=clip_enabled)
    if not fused:
        return policy_loss_per_token(logp, old_logp, advantages, **clip)
    with torch.no_grad():
        terms = policy_loss_per_token(logp.detach(), old_logp, advantages, **clip)
    terms.loss = fused_policy_loss(logp, old_logp, advantages, torch.ones_like(logp), **clip)
    return terms


def policy_loss_reference(
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
    """The eager composition of the objectives library's functions (the CPU path)."""
    # Imported here: objectives sit above ops in the dependency order and import configs.
    from rlpost.objectives.core import kl_penalty, policy_loss_per_token

    loss = policy_loss_per_token(
        logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high, clip_c=clip_c, clip_enabled=clip_enabled
    ).loss
    if ref_logp is not None and kl_coef != 0.0:
        loss = loss + kl_coef * kl_penalty(logp, ref_logp, kl_estimator)
    return torch.where(mask.bool(), loss, torch.zeros((), dtype=loss.dtype, device=loss.device))


# --------------------------------------------------------------------------------------------
# forward op


@torch.library.custom_op("rlpost::policy_loss", mutates_args=())
def _policy_loss_op(
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
    return policy_loss_reference(
        logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, clip_c, clip_enabled, kl_coef, kl_estimator
    )


# The fake and CUDA kernels take the op's arguments as they come (see the op for their names).
@_policy_loss_op.register_fake
def _(logp, *rest):
    return torch.empty_like(logp)


@_policy_loss_op.register_kernel("cuda")
def _(*op_inputs):
    from rlpost.ops import triton_kernels

    return triton_kernels.policy_loss_forward(*op_inputs)


# --------------------------------------------------------------------------------------------
# backward: a CUDA-only op (Triton); elsewhere the autograd formula differentiates the eager code


@torch.library.custom_op("rlpost::policy_loss_backward", mutates_args=())
def _policy_loss_backward_op(
    grad_loss: Tensor,
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
    """dL/dlogp = grad_loss · dloss/dlogp, elementwise. Only the CUDA kernel exists: on other devices
    the autograd formula below takes the vjp of the eager objectives code instead."""
    raise NotImplementedError(f"rlpost::policy_loss_backward has no kernel for {logp.device.type} tensors")


@_policy_loss_backward_op.register_fake
def _(grad_loss, logp, *rest):
    return torch.empty_like(logp)


@_policy_loss_backward_op.register_kernel("cuda")
def _(*op_inputs):
    from rlpost.ops import triton_kernels

    return triton_kernels.policy_loss_backward(*op_inputs)


def _setup_context(ctx, inputs, output) -> None:
    logp, old_logp, advantages, mask, ref_logp, *options = inputs
    ctx.save_for_backward(logp, old_logp, advantages, mask, ref_logp)
    ctx.options = options


def _backward(ctx, grad_loss: Tensor):
    logp, old_logp, advantages, mask, ref_logp = ctx.saved_tensors
    grad_logp = None
    if ctx.needs_input_grad[0]:
        if logp.device.type == "cuda":
            grad_logp = torch.ops.rlpost.policy_loss_backward(
                grad_loss, logp, old_logp, advantages, mask, ref_logp, *ctx.options
            )
        else:
            # vjp here, at the autograd level: inside an op kernel autograd is switched off, and
            # torch.func there breaks under dispatch modes (flop counters, schema checks).
            def loss_of(x: Tensor) -> Tensor:
                return policy_loss_reference(x, old_logp, advantages, mask, ref_logp, *ctx.options)

            grad_logp = torch.func.vjp(loss_of, logp)[1](grad_loss)[0]
    return (grad_logp,) + (None,) * 10


torch.library.register_autograd("rlpost::policy_loss", _backward, setup_context=_setup_context)
