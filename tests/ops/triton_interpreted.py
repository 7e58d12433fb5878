"""The Triton kernels under the Triton interpreter (no GPU here), against the torch paths.

Not collected on its own (no test_ prefix): `test_triton_kernels.py` runs it in a child pytest
with TRITON_INTERPRET=1. The variable must be set before triton is first imported in the process:
`triton.jit` reads it at decoration time, both for our kernels and for triton.language's own jitted
helpers (tl.sum, tl.max, ...), which are decorated when triton is imported. Anything in a pytest
session may import triton first (torch.compile does), hence the fresh process.
The interpreter is ~200x slower than torch: shapes stay tiny (small vocabulary tiles exercise the
online logsumexp across tiles).
"""

from __future__ import annotations

import os

import pytest
import torch

import rlpost.ops  # noqa: F401  (registers the ops)
from rlpost.ops.policy_loss import policy_loss_reference

pytest.importorskip("triton")

ESTIMATORS = ["k1", "k2", "k3", "k3+"]


if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run via test_triton_kernels.py (TRITON_INTERPRET=1 before triton's import)", allow_module_level=True)


@pytest.fixture(scope="module")
def kernels():
    from rlpost.ops import triton_kernels

    return triton_kernels


def _chunk(dtype, rows=5, vocab=45, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    grads = torch.randn(3, rows, generator=gen)
    return logits, targets, grads


# bf16 logits are read identically by both paths and upcast; only fp32 summation order differs.
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_v", [16, 64])  # 3 tiles with a ragged last one, or a single tile
@pytest.mark.parametrize("compute_entropy", [False, True])
def test_logprob_entropy_forward(kernels, dtype, block_v, compute_entropy):
    logits, targets, _ = _chunk(dtype)
    got = kernels.logprob_entropy_forward(logits, targets, 0.8, compute_entropy, block_v=block_v)
    want = torch.ops.rlpost.token_logprob_entropy(logits, targets, 0.8, compute_entropy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_entropy,with_lse", [(False, False), (True, False), (True, True)])
def test_logprob_entropy_backward(kernels, dtype, with_entropy, with_lse):
    """In-place grad-logits equal the torch op's (bf16 buffers: both round the same fp32 value once,
    so they may differ by one bf16 ulp where the fp32 values straddle a rounding boundary)."""
    logits, targets, grads = _chunk(dtype)
    _, lse, entropy = torch.ops.rlpost.token_logprob_entropy(logits, targets, 0.8, True)
    args = (targets, lse, entropy, grads[0], grads[1] if with_lse else None, grads[2] if with_entropy else None, 0.8)
    got, want = logits.clone(), logits.clone()
    kernels.logprob_entropy_backward_(got, *args, block_v=16)
    torch.ops.rlpost.logprob_grad_inplace(want, *args, None)
    tolerance = dict(rtol=2.0**-7, atol=1e-6) if dtype == torch.bfloat16 else TOLERANCE[dtype]
    torch.testing.assert_close(got, want, **tolerance)


def _loss_inputs(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, t = 4, 9
    logp = -torch.rand(n, t, generator=gen) * 3
    old = logp + torch.randn(n, t, generator=gen) * 0.4
    old[0, :2] = logp[0, :2]  # ratio exactly 1
    old[1, 0] = logp[1, 0] + 25.0  # beyond the ±20 log-ratio guard
    adv = torch.randn(n, generator=gen)
    adv[3] = 0.0
    ref = logp + torch.randn(n, t, generator=gen) * 0.8
    ref[2, 0] = logp[2, 0] - 30.0  # k3 clamps
    mask = torch.rand(n, t, generator=gen) > 0.2
    grad = torch.randn(n, t, generator=gen)
    return logp.to(dtype), old.to(dtype), adv.to(dtype), mask, ref.to(dtype), grad.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("clip_c,clip_enabled", [(3.0, True), (None, True), (None, False)])
def test_policy_loss_forward_and_backward(kernels, dtype, estimator, clip_c, clip_enabled):
    """Values equal the objectives' functions; gradients equal autograd through them.

    bf16 inputs: the kernel computes in fp32 and rounds once; the eager path rounds after every op
    (bf16 tensors in, bf16 temporaries), so they agree to a few bf16 ulps (rtol 2^-6)."""
    logp, old, adv, mask, ref, grad = _loss_inputs(dtype)
    options = (0.2, 0.28, clip_c, clip_enabled, 0.1, estimator)
    got = kernels.policy_loss_forward(logp, old, adv, mask, ref, *options)
    x = logp.clone().requires_grad_()
    want = policy_loss_reference(x, old, adv, mask, ref, *options)
    (want * grad).sum().backward()
    got_grad = kernels.policy_loss_backward(grad, logp, old, adv, mask, ref, *options)
    tolerance = dict(rtol=2.0**-6, atol=2.0**-6) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    assert got.dtype == got_grad.dtype == dtype
    torch.testing.assert_close(got, want.detach(), **tolerance)
    torch.testing.assert_close(got_grad, x.grad, **tolerance)


@pytest.mark.parametrize("setting", ["dual-clip-3", "no-dual-clip", "off"])
def test_policy_loss_kernels_match_hand_computed_values(kernels, setting):
    """The CUDA path's kernels on the hand-computed tokens of `test_policy_loss.py` (fp32)."""
    from tests.ops.test_policy_loss import CLIP_SETTINGS

    cases, clip_c, clip_enabled = CLIP_SETTINGS[setting]
    ratio, adv, want_loss, want_grad, _ = zip(*cases)
    logp = torch.tensor([ratio]).log()
    args = (logp, torch.zeros_like(logp), torch.tensor([adv]), torch.ones_like(logp), None, 0.2, 0.28, clip_c, clip_enabled, 0.0, "k3")
    torch.testing.assert_close(kernels.policy_loss_forward(*args), torch.tensor([want_loss]))
    torch.testing.assert_close(kernels.policy_loss_backward(torch.ones_like(logp), *args), torch.tensor([want_grad]))
