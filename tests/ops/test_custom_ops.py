"""The rlpost:: custom ops: registration, schemas (opcheck), and the chunk ops' math on the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import rlpost.ops  # noqa: F401  (registers the ops)

OPS = [
    "token_logprob_entropy",
    "token_logprob_entropy_scratch",
    "logprob_grad_inplace",
    "policy_loss",
    "policy_loss_backward",
]


@pytest.mark.parametrize("name", OPS)
def test_cuda_kernels_are_registered(name):
    """Each op has its own CUDA kernel (Triton); all but the CUDA-only backward of the policy loss
    also have the default torch one."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rlpost::{name}", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rlpost::{name}", "CompositeExplicitAutograd")


def _chunk(rows=6, vocab=23, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    return logits, targets


@pytest.mark.parametrize("compute_entropy", [False, True])
def test_opcheck_token_logprob_entropy(compute_entropy):
    logits, targets = _chunk()
    torch.library.opcheck(
        torch.ops.rlpost.token_logprob_entropy.default,
        (logits.requires_grad_(), targets, 0.7, compute_entropy),
    )


def test_opcheck_logprob_grad_inplace():
    logits, targets = _chunk()
    _, lse, entropy = torch.ops.rlpost.token_logprob_entropy(logits, targets, 0.7, True)
    g = torch.randn(3, logits.shape[0])
    torch.library.opcheck(
        torch.ops.rlpost.logprob_grad_inplace.default,
        (logits.clone(), targets, lse, entropy, g[0], g[1], g[2], 0.7, None),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_scratch_forward(dtype):
    logits, targets = _chunk(dtype=dtype)
    workspace = torch.empty(logits.shape[0] + 2, logits.shape[1]) if dtype == torch.bfloat16 else None
    torch.library.opcheck(
        torch.ops.rlpost.token_logprob_entropy_scratch.default, (logits, targets, 0.7, True, workspace)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_workspace", [False, True])
def test_scratch_forward_equals_functional(dtype, with_workspace):
    """Same outputs whether the logits (and a larger-than-needed workspace) serve as scratch."""
    logits, targets = _chunk(dtype=dtype)
    workspace = torch.empty(logits.shape[0] + 3, logits.shape[1]) if with_workspace else None
    want = torch.ops.rlpost.token_logprob_entropy(logits, targets, 0.7, True)
    got = torch.ops.rlpost.token_logprob_entropy_scratch(logits.clone(), targets, 0.7, True, workspace)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_workspace_of_the_wrong_shape_is_rejected():
    logits, targets = _chunk(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="workspace"):
        torch.ops.rlpost.token_logprob_entropy_scratch(logits, targets, 1.0, False, torch.empty(2, logits.shape[1]))


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_functional_op_values_and_all_three_gradients(scale):
    """logp, lse and entropy of scale·z, and the gradient through each, against eager torch in fp64."""
    logits, targets = _chunk(vocab=31)
    logits = logits.double().requires_grad_()
    logp, lse, entropy = torch.ops.rlpost.token_logprob_entropy(logits, targets, scale, True)
    weights = torch.randn(3, logits.shape[0], dtype=torch.float64)
    (weights[0] * logp + weights[1] * lse + weights[2] * entropy).sum().backward()

    reference = logits.detach().clone().requires_grad_()
    z = reference * scale
    log_probs = torch.log_softmax(z, -1)
    want = (
        log_probs.gather(1, targets[:, None]).squeeze(1),
        torch.logsumexp(z, -1),
        -(log_probs.exp() * log_probs).sum(-1),
    )
    sum(w * v for w, v in zip(weights, want)).sum().backward()
    for got, expected in zip((logp, lse, entropy), want):
        torch.testing.assert_close(got, expected.detach())
    torch.testing.assert_close(logits.grad, reference.grad)


def test_grad_inplace_bf16_buffer():
    """A bf16 logits buffer becomes its bf16 gradient (computed in fp32, rounded once)."""
    logits, targets = _chunk(dtype=torch.bfloat16)
    _, lse, entropy = torch.ops.rlpost.token_logprob_entropy(logits, targets, 1.0, True)
    g = torch.randn(2, logits.shape[0])
    buffer = logits.clone()
    torch.ops.rlpost.logprob_grad_inplace(buffer, targets, lse, entropy, g[0], None, g[1], 1.0, torch.empty(9, 23))
    exact = logits.float().clone()
    torch.ops.rlpost.logprob_grad_inplace(exact, targets, lse, entropy, g[0], None, g[1], 1.0, None)
    assert buffer.dtype == torch.bfloat16
    torch.testing.assert_close(buffer.float(), exact, rtol=2.0**-8, atol=1e-6)


def test_grad_entropy_without_entropy_raises():
    logits, targets = _chunk()
    _, lse, _ = torch.ops.rlpost.token_logprob_entropy(logits, targets, 1.0, False)
    with pytest.raises(ValueError):
        torch.ops.rlpost.logprob_grad_inplace(logits, targets, lse, None, None, None, torch.ones(6), 1.0, None)


def test_package_imports_and_runs_without_triton():
    """`import triton` fails in the child: rlpost.ops still imports and the CPU path still runs."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from rlpost.ops import fused_token_logprobs, fused_policy_loss\n"
        "h = torch.randn(5, 4, requires_grad=True); w = torch.randn(9, 4)\n"
        "logp, _ = fused_token_logprobs(h, w, torch.randint(0, 9, (5,)), chunk_size=2)\n"
        "logp.sum().backward()\n"
        "x = torch.zeros(2, 3, requires_grad=True)\n"
        "loss = fused_policy_loss(x, x.detach(), torch.ones(2), torch.ones(2, 3), clip_low=0.2, clip_high=0.2)\n"
        "loss.sum().backward()\n"
        "assert 'rlpost.ops.triton_kernels' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
