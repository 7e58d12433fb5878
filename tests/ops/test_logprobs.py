"""The chunked fused log-prob/entropy op against the plain full-logits path: values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpost.ops import fused_token_logprobs, token_logprobs_from_logits
from rlpost.ops.logprobs import warp_logits

FP32_RTOL = 1e-5


def _problem(n: int, hidden: int, vocab: int, *, dtype=torch.float32, bias: bool = False, seed: int = 0):
    """hidden [n, H], weight [V, H], bias [V] | None, targets [n], upstream grads for logp and entropy."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * 2 * hidden**-0.5).to(dtype).requires_grad_()
    b = (torch.randn(vocab, generator=gen)).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (n,), generator=gen)
    g_logp, g_entropy = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return h, w, b, targets, g_logp, g_entropy


def _plain(h, w, b, targets, temperature, compute_entropy):
    logits = h @ w.T + (b if b is not None else 0)
    return token_logprobs_from_logits(logits, targets, temperature, compute_entropy)


def _values_and_grads(fn, h, w, b, targets, g_logp, g_entropy, temperature, compute_entropy):
    """(logp, entropy, grads of Σ g_logp·logp + Σ g_entropy·entropy w.r.t. h, w[, b])."""
    leaves = [t for t in (h, w, b) if t is not None]
    for leaf in leaves:
        leaf.grad = None
    logp, entropy = fn(h, w, b, targets, temperature, compute_entropy)
    loss = (logp * g_logp).sum() + ((entropy * g_entropy).sum() if compute_entropy else 0.0)
    loss.backward()
    return logp.detach(), (entropy.detach() if entropy is not None else None), [leaf.grad.clone() for leaf in leaves]


def _fused(chunk_size):
    def fn(h, w, b, targets, temperature, compute_entropy):
        return fused_token_logprobs(
            h, w, targets, bias=b, temperature=temperature, chunk_size=chunk_size, compute_entropy=compute_entropy
        )

    return fn


def _assert_close_all(got, want, rtol=FP32_RTOL, floors=(0.0, 0.0)):
    """Elementwise within `rtol` relative, with an absolute floor of `rtol` times the tensor's largest
    entry: gradient entries are sums of cancelling terms, and two fp32 summation orders differ by
    ~1e-7 of the terms' size, not of the (possibly tiny) sum. `floors`: further absolute floors for the
    values and for the gradients (`_roundoff_floors`)."""
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        elif isinstance(w, list):
            _assert_close_all(g, w, rtol, (floors[1], floors[1]))
        else:
            scale = float(w.abs().max()) if w.numel() else 0.0
            torch.testing.assert_close(g, w, rtol=rtol, atol=max(rtol * scale, floors[0]) + 1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1000])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("compute_entropy", [False, True])
def test_fp32_values_and_gradients_equal_plain(chunk_size, bias, temperature, compute_entropy):
    """37 tokens: chunk sizes 7 and 16 do not divide N, 1000 exceeds it."""
    problem = _problem(37, 24, 97, bias=bias)
    want = _values_and_grads(_plain, *problem, temperature, compute_entropy)
    got = _values_and_grads(_fused(chunk_size), *problem, temperature, compute_entropy)
    _assert_close_all(got, want)


def test_fp32_realistic_vocabulary():
    """A vocabulary of 4096 with peaked logits, several chunks."""
    problem = _problem(300, 64, 4096, bias=True, seed=1)
    want = _values_and_grads(_plain, *problem, 0.9, True)
    got = _values_and_grads(_fused(128), *problem, 0.9, True)
    _assert_close_all(got, want)


@pytest.mark.parametrize("outputs", ["logp", "entropy", "both"])
def test_gradcheck_fp64(outputs):
    """Finite differences in fp64 (the op keeps fp64): the hand-written backward is the true gradient."""
    h, w, b, targets, _, _ = _problem(9, 5, 11, dtype=torch.float64, bias=True)

    def fn(h, w, b):
        logp, entropy = fused_token_logprobs(h, w, targets, bias=b, temperature=0.8, chunk_size=4, compute_entropy=True)
        return {"logp": (logp,), "entropy": (entropy,), "both": (logp, entropy)}[outputs]

    assert torch.autograd.gradcheck(fn, (h, w, b))


def test_entropy_matches_definition():
    """H = logsumexp(z) - Σ softmax(z)·z, computed independently in fp64."""
    h, w, _, targets, _, _ = _problem(20, 8, 30)
    _, entropy = fused_token_logprobs(h, w, targets, temperature=0.5, chunk_size=6, compute_entropy=True)
    z = (h @ w.T).double() / 0.5
    expected = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    torch.testing.assert_close(entropy.double(), expected, rtol=1e-5, atol=1e-6)


def test_tied_head_gradients_add_up():
    """The head is the embedding matrix: its gradient sums the embedding and the head uses."""
    torch.manual_seed(0)
    vocab, dim, n = 50, 12, 23
    ids = torch.randint(0, vocab, (n,))
    targets = torch.randint(0, vocab, (n,))
    mix = torch.randn(dim, dim)

    def grads(fused: bool):
        torch.manual_seed(1)
        embedding = torch.nn.Embedding(vocab, dim)
        hidden = torch.tanh(embedding(ids) @ mix)
        if fused:
            logp, entropy = fused_token_logprobs(hidden, embedding.weight, targets, chunk_size=5, compute_entropy=True)
        else:
            logp, entropy = token_logprobs_from_logits(hidden @ embedding.weight.T, targets, compute_entropy=True)
        (logp.sum() - 0.3 * entropy.sum()).backward()
        return embedding.weight.grad

    _assert_close_all([grads(True)], [grads(False)])


def test_frozen_head_only_hidden_gradient():
    """LoRA-style: the head does not require grad; only hidden gets one (and no grad_weight is built)."""
    h, w, _, targets, g, _ = _problem(15, 8, 40)
    w.requires_grad_(False)
    logp, _ = fused_token_logprobs(h, w, targets, chunk_size=4)
    (logp * g).sum().backward()
    h_grad = h.grad.clone()
    h.grad = None
    plain, _ = token_logprobs_from_logits(h @ w.T, targets)
    (plain * g).sum().backward()
    assert w.grad is None
    _assert_close_all([h_grad], [h.grad])


def test_entropy_requested_but_unused_in_loss():
    """Entropy as a metric only: backward gets no entropy gradient and must not need one."""
    h, w, _, targets, g, _ = _problem(10, 8, 20)
    logp, entropy = fused_token_logprobs(h, w, targets, chunk_size=3, compute_entropy=True)
    (logp * g).sum().backward()
    h_grad = h.grad.clone()
    h.grad = None
    plain, _ = token_logprobs_from_logits(h @ w.T, targets)
    (plain * g).sum().backward()
    _assert_close_all([h_grad], [h.grad])
    assert entropy.requires_grad


@pytest.mark.parametrize("chunk_size", [4, 32])  # several chunks (a ragged last one), or one
def test_retained_graph_second_backward(chunk_size):
    """The last chunk's logits kept from forward are consumed by the first backward; a second
    backward through a retained graph recomputes them and gives the same gradients."""
    h, w, b, targets, g_logp, g_entropy = _problem(30, 8, 50, bias=True)
    logp, entropy = fused_token_logprobs(h, w, targets, bias=b, chunk_size=chunk_size, compute_entropy=True)
    loss = (logp * g_logp).sum() + (entropy * g_entropy).sum()
    first = torch.autograd.grad(loss, (h, w, b), retain_graph=True)
    second = torch.autograd.grad(loss, (h, w, b))
    _assert_close_all(list(second), list(first), rtol=1e-6)


def test_no_grad_forward_matches():
    """Under no_grad nothing is kept for backward; values are the same."""
    h, w, _, targets, _, _ = _problem(30, 8, 50)
    with torch.no_grad():
        logp, entropy = fused_token_logprobs(h, w, targets, chunk_size=7, compute_entropy=True)
    want_logp, want_entropy = token_logprobs_from_logits(h @ w.T, targets, compute_entropy=True)
    _assert_close_all([logp, entropy], [want_logp.detach(), want_entropy.detach()])
    assert not logp.requires_grad


def test_no_tokens():
    """N = 0 (an all-padding micro-batch): empty outputs, zero gradients, no error."""
    h, w, b, targets, _, _ = _problem(0, 8, 20, bias=True)
    logp, entropy = fused_token_logprobs(h, w, targets, bias=b, compute_entropy=True)
    assert logp.shape == entropy.shape == (0,)
    (logp.sum() + entropy.sum()).backward()
    assert h.grad.shape == (0, 8)
    assert torch.count_nonzero(w.grad) == 0 and torch.count_nonzero(b.grad) == 0


def test_without_entropy_returns_none():
    h, w, _, targets, _, _ = _problem(4, 8, 20)
    assert fused_token_logprobs(h, w, targets)[1] is None
    assert token_logprobs_from_logits(h @ w.T, targets)[1] is None


def test_plain_path_accepts_batched_logits():
    """[B, T, V] logits and [B, T] targets give [B, T] outputs."""
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    logp, entropy = token_logprobs_from_logits(logits, targets, compute_entropy=True)
    flat_logp, flat_entropy = token_logprobs_from_logits(
        logits.reshape(10, 11), targets.reshape(10), compute_entropy=True
    )
    assert logp.shape == entropy.shape == (2, 5)
    torch.testing.assert_close(logp.reshape(10), flat_logp)
    torch.testing.assert_close(entropy.reshape(10), flat_entropy)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"chunk_size": 0}])
def test_rejects_bad_arguments(kwargs):
    h, w, _, targets, _, _ = _problem(4, 8, 20)
    with pytest.raises(ValueError):
        fused_token_logprobs(h, w, targets, **kwargs)


def test_rejects_mismatched_shapes():
    h, w, _, targets, _, _ = _problem(4, 8, 20)
    with pytest.raises(ValueError):
        fused_token_logprobs(h, w[:, :4], targets)
    with pytest.raises(ValueError):
        fused_token_logprobs(h, w, targets[:3])


# --------------------------------------------------------------------------------------------
# bf16


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-12))


@pytest.mark.parametrize("chunk_size", [64, 1000])  # several chunks (fp32 accumulation of grad_weight), or one
def test_bf16_within_rounding_of_exact(chunk_size):
    """bf16 tolerance, derived rather than tuned.

    bf16 keeps 8 significant bits: one rounding moves a value by at most u = 2^-8 of itself. Each
    path rounds a logit at most twice (the plain path rounds h·w and then h·w + b), so row r's logits
    move by at most δ_r = u·max_v(|h·w|_v + |z|_v) / T. To first order logp = z_t - lse moves by at
    most 2·δ_r and the entropy by at most δ_r·std_p(z) (dH/dz = p·(E[z] - z) and E|z - E z| <= std z).
    Both paths must stay within these bounds (+5% for second-order terms) of the exact log-probs of
    the same bf16 inputs (fp32 math). Gradients go through bf16 grad-logits and bf16 matmul outputs
    (a few roundings per element): their relative error in norm must stay below 2e-2 (~5u) and not
    exceed twice the plain path's.
    """
    temperature = 0.8
    h, w, b, targets, g_logp, g_entropy = _problem(200, 64, 1000, dtype=torch.bfloat16, bias=True)
    exact_inputs = [t.detach().float().requires_grad_() if t is not None else None for t in (h, w, b)]
    exact = _values_and_grads(_plain, *exact_inputs, targets, g_logp, g_entropy, temperature, True)
    fused = _values_and_grads(_fused(chunk_size), h, w, b, targets, g_logp, g_entropy, temperature, True)
    plain = _values_and_grads(_plain, h, w, b, targets, g_logp, g_entropy, temperature, True)

    with torch.no_grad():
        hw = exact_inputs[0] @ exact_inputs[1].T
        z = (hw + exact_inputs[2]) / temperature
        delta = 2.0**-8 * (hw.abs() + (hw + exact_inputs[2]).abs()).amax(-1) / temperature
        std_z = (torch.softmax(z, -1) * (z - (torch.softmax(z, -1) * z).sum(-1, keepdim=True)) ** 2).sum(-1).sqrt()
    for got in (fused, plain):
        assert bool(((got[0] - exact[0]).abs() <= 1.05 * 2 * delta).all())
        assert bool(((got[1] - exact[1]).abs() <= 1.05 * delta * std_z).all())
    for fused_grad, plain_grad, exact_grad in zip(fused[2], plain[2], exact[2]):
        assert fused_grad.dtype == torch.bfloat16
        fused_err, plain_err = _relative_error(fused_grad, exact_grad), _relative_error(plain_grad, exact_grad)
        assert fused_err < 2e-2
        assert fused_err <= 2 * plain_err + 1e-3


def test_bf16_grad_weight_blocks(monkeypatch):
    """The fp32 accumulation of bf16 grad_weight, in row blocks that do not divide V, equals the
    one-chunk bf16 product to bf16 rounding."""
    from rlpost.ops import logprobs

    monkeypatch.setattr(logprobs._GradWeight, "BLOCK_ROWS", 7)
    h, w, _, targets, g_logp, _ = _problem(64, 16, 100, dtype=torch.bfloat16)
    chunked = _values_and_grads(_fused(16), h, w, None, targets, g_logp, None, 1.0, False)[2][1]
    single = _values_and_grads(_fused(64), h, w, None, targets, g_logp, None, 1.0, False)[2][1]
    assert _relative_error(chunked, single) < 2.0**-7


def test_autocast_matches_plain_under_autocast():
    """Under CPU autocast (bf16) the fused op casts like lm_head would; fp32 leaves get fp32 grads."""
    h, w, _, targets, g, _ = _problem(50, 32, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = fused_token_logprobs(h, w, targets, chunk_size=16)
        plain, _ = token_logprobs_from_logits(torch.nn.functional.linear(h, w), targets)
    (logp * g).sum().backward()
    assert logp.dtype == torch.float32 and w.grad.dtype == torch.float32
    # each path within 2·u·max|z| of exact (see the bf16 test), so within twice that of each other
    max_logit = float((h @ w.T).detach().abs().max())
    assert float((logp - plain).detach().abs().max()) <= 4 * 2.0**-8 * max_logit


# --------------------------------------------------------------------------------------------
# random shapes


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 33),
    vocab=st.integers(2, 40),
    chunk=st.integers(1, 40),
    entropy=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_random_shapes_match_plain(n, vocab, chunk, entropy, bias, seed):
    problem = _problem(n, 6, vocab, bias=bias, seed=seed)
    want = _values_and_grads(_plain, *problem, 1.3, entropy)
    got = _values_and_grads(_fused(chunk), *problem, 1.3, entropy)
    _assert_close_all(got, want, floors=_roundoff_floors(*problem, 1.3))


def _roundoff_floors(h, w, b, targets, g_logp, g_entropy, temperature) -> tuple[float, float]:
    """(values, gradients): 8 units of fp32 roundoff (u = 2^-24) of the terms each is a difference of.

    A log-prob -log(sum_j exp((z_j - z_max)/T)) and an entropy are differences of terms of size 1 + |z|/T,
    so where the distribution is near one-hot (a log-prob of -5e-4) the fused op's log of a sum ~1.0005
    and log_softmax differ by a few u in absolute terms (2.7e-7 against the exact value, measured), far
    from `rtol` of the value itself; the gradients (w_t - E_p[w], (1 - p_t) h) likewise cancel terms of
    size |upstream| * max(|h|, |w|) * (1 + |z|/T) / T."""
    if h.numel() == 0:
        return 0.0, 0.0
    u = 2.0**-24
    logits = (h.detach().abs() @ w.detach().abs().T + (b.detach().abs() if b is not None else 0.0)).max() / temperature
    values = 8 * u * (1 + float(logits))
    upstream = max(float(g_logp.abs().max()), float(g_entropy.abs().max()), 1.0)
    size = max(float(h.detach().abs().max()), float(w.detach().abs().max()), 1.0)
    return values, values * upstream * size / temperature


# --------------------------------------------------------------------------------------------
# sampling warps: top-k / top-p (issue 15)

WARPS = [(0.9, -1), (1.0, 5), (0.8, 10), (0.5, 3)]


def _spread_logits(rows: int, vocab: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Logits from peaked to flat rows, so nuclei hold from one token to most of the vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.3, 6.0, rows).unsqueeze(1)
    return (torch.randn(rows, vocab, generator=gen) * scale).to(dtype)


@pytest.mark.parametrize(("top_p", "top_k"), WARPS)
def test_warp_logits_samples_what_transformers_warpers_sample(top_p, top_k):
    """The engines' distribution: transformers' Temperature, TopK, TopP warpers (vLLM's rule too)."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = _spread_logits(8, 64)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.7)])
    warpers += [TopKLogitsWarper(top_k)] if top_k >= 1 else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    want = torch.softmax(warpers(None, logits.clone()), dim=-1)
    got = torch.softmax(warp_logits(logits, 0.7, top_p, top_k), dim=-1)
    assert torch.equal(got == 0, want == 0)  # the same tokens dropped, exactly
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert (got == 0).any(), "the warps must drop tokens"


def _explicit_truncated(z: torch.Tensor, targets: torch.Tensor, top_p: float, top_k: int):
    """Row by row: keep the top-k, then the most likely tokens until their probability reaches
    top_p, plus the target; (logp, entropy) of the renormalised distribution, differentiable."""
    logps, entropies = [], []
    for row, target in zip(z, targets.tolist()):
        order = row.detach().argsort(descending=True)[: top_k if top_k >= 1 else None]
        probs = torch.softmax(row.detach()[order], 0)
        count = int((torch.cumsum(probs, 0) < top_p).sum()) + 1  # up to the token that reaches top_p
        kept = sorted(set(order[:count].tolist()) | {target})
        log_probs = torch.log_softmax(row[kept], 0)
        logps.append(log_probs[kept.index(target)])
        entropies.append(-(log_probs.exp() * log_probs).sum())
    return torch.stack(logps), torch.stack(entropies)


@pytest.mark.parametrize(("top_p", "top_k"), WARPS)
@pytest.mark.parametrize("path", ["plain", "fused"])
def test_truncated_logprobs_values_and_gradients_match_explicit_nucleus(top_p, top_k, path):
    """fp64: log-prob and entropy of the truncated, renormalised distribution, and their gradients
    (the kept set is a constant: d logp / dz = (onehot - p_kept) / T), against a row-by-row
    reference; random targets are often outside the nucleus and must stay finite."""
    h, w, _, targets, g_logp, g_entropy = _problem(12, 8, 40, dtype=torch.float64, seed=3)
    with torch.no_grad():
        w.mul_(4.0)  # peaked rows, so the nuclei are small
    want_logp, want_entropy = _explicit_truncated((h @ w.T) / 0.7, targets, top_p, top_k)
    want_grads = torch.autograd.grad((want_logp * g_logp).sum() + (want_entropy * g_entropy).sum(), (h, w))
    if path == "plain":
        logp, entropy = token_logprobs_from_logits(h @ w.T, targets, 0.7, True, top_p=top_p, top_k=top_k)
    else:
        logp, entropy = fused_token_logprobs(
            h, w, targets, temperature=0.7, chunk_size=5, compute_entropy=True, top_p=top_p, top_k=top_k
        )
    grads = torch.autograd.grad((logp * g_logp).sum() + (entropy * g_entropy).sum(), (h, w))
    torch.testing.assert_close(logp, want_logp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    untruncated, _ = token_logprobs_from_logits(h @ w.T, targets, 0.7)
    assert (logp > untruncated + 1e-3).any(), "the nucleus must drop probability mass somewhere"


def test_gradcheck_fp64_with_warps():
    h, w, b, targets, _, _ = _problem(6, 5, 13, dtype=torch.float64, bias=True, seed=4)

    def fn(h, w, b):
        return fused_token_logprobs(
            h, w, targets, bias=b, temperature=0.7, chunk_size=4, compute_entropy=True, top_p=0.8, top_k=6
        )

    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("path", ["plain", "fused"])
def test_disabled_warps_change_nothing(path):
    """top_p = 1 with top_k < 1 or >= V is the untruncated distribution, bit for bit."""
    h, w, _, targets, _, _ = _problem(9, 8, 20, seed=5)
    for top_k in (-1, 0, 20, 50):
        if path == "plain":
            got = token_logprobs_from_logits(h @ w.T, targets, 0.7, True, top_k=top_k)
            want = token_logprobs_from_logits(h @ w.T, targets, 0.7, True)
        else:
            got = fused_token_logprobs(h, w, targets, temperature=0.7, compute_entropy=True, top_k=top_k)
            want = fused_token_logprobs(h, w, targets, temperature=0.7, compute_entropy=True)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_bf16_fused_warps_match_plain_on_the_same_logits():
    """bf16 chunks are cut on their own (bf16) values: the same tokens as the plain path on those logits."""
    h, w, _, targets, _, _ = _problem(40, 16, 300, dtype=torch.bfloat16, seed=6)
    with torch.no_grad():  # the chunk buffer's logits: temperature folded into the bf16 matmul
        logits = torch.addmm(h.new_zeros(()), h, w.t(), beta=0, alpha=1 / 0.7)
    logp, entropy = fused_token_logprobs(h, w, targets, temperature=0.7, compute_entropy=True, top_p=0.9, top_k=50)
    want_logp, want_entropy = token_logprobs_from_logits(logits, targets, 1.0, True, top_p=0.9, top_k=50)
    torch.testing.assert_close(logp, want_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_p", [0.0, 1.5])
def test_rejects_bad_top_p(top_p):
    h, w, _, targets, _, _ = _problem(3, 4, 5)
    with pytest.raises(ValueError, match="top_p"):
        fused_token_logprobs(h, w, targets, top_p=top_p)
    with pytest.raises(ValueError, match="top_p"):
        token_logprobs_from_logits(h @ w.T, targets, top_p=top_p)
