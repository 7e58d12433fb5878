"""Plain vs fused per-token log-probs: forward+backward time and peak memory, as ratios.

    python benchmarks/logprob_ops.py                   # default cases
    python benchmarks/logprob_ops.py --quick           # one small case (smoke test)
    python benchmarks/logprob_ops.py --cases smollm2:8192:fp32 --chunk-sizes 256,512,1024
    python benchmarks/logprob_ops.py --policy-loss     # learner.fused_ops: the surrogate, plain vs fused

Both paths start from hidden states [N, H] and an LM head weight [V, H] (SmolLM2-135M: H=576,
V=49152; Qwen2.5-1.5B: H=1536, V=151936) and run forward + backward of Σ c·logp with random c:
  plain: logits = hidden @ weight.T, fp32 log_softmax, gather (what most trainers do)
  fused: rlpost.ops.fused_token_logprobs (chunked, recomputed in backward)

Peak memory: each (case, path) runs once in a fresh subprocess; peak = the kernel's resident-memory
high-water mark (VmHWM, reset through /proc/self/clear_refs once the inputs exist) after
forward+backward minus the resident memory at the reset. torch's CPU allocations are invisible to
tracemalloc but not to the kernel, and a fresh process keeps allocator caches of other cases out. Time: one subprocess per case alternates the two paths
in rounds (every variant once per round, order rotated between rounds) after a warm-up and reports
the median over rounds of the within-round ratio, so load from other processes hits both paths
alike. On a shared machine `--threads 1` gives steadier ratios (two OpenMP threads stall each other
when a core is taken).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHAPES = {"smollm2": (576, 49152), "qwen2.5-1.5b": (1536, 151936)}
# The plain path's peak grows ~N·V·4 bytes x 3-5: the Qwen-vocabulary cases stay at <= 4096 tokens
# (plain path ~7 GiB) so that they fit next to other work on a 24 GiB machine; a worker killed by the
# OOM killer is reported and skipped.
DEFAULT_CASES = [
    "smollm2:1024:fp32", "smollm2:4096:fp32", "smollm2:8192:fp32",
    "smollm2:8192:bf16", "smollm2:4096:fp32:entropy",
    "qwen2.5-1.5b:1024:fp32", "qwen2.5-1.5b:1024:bf16", "qwen2.5-1.5b:4096:bf16",
]


@dataclass(frozen=True)
class Case:
    model: str
    tokens: int
    dtype: str
    entropy: bool

    @classmethod
    def parse(cls, text: str) -> "Case":
        model, tokens, dtype, *flags = text.split(":")
        return cls(model, int(tokens), dtype, "entropy" in flags)

    def __str__(self) -> str:
        return f"{self.model}:{self.tokens}:{self.dtype}" + (":entropy" if self.entropy else "")


# --------------------------------------------------------------------------------------------
# worker side (runs in a subprocess)


def _inputs(case: Case):
    import torch

    torch.manual_seed(0)
    hidden_size, vocab = SHAPES[case.model]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case.dtype]
    # generated in their dtype and scaled in place: no large temporary inflates the memory baseline
    hidden = torch.randn(case.tokens, hidden_size, dtype=dtype).requires_grad_()
    weight = torch.randn(vocab, hidden_size, dtype=dtype).mul_(hidden_size**-0.5).requires_grad_()
    targets = torch.randint(0, vocab, (case.tokens,))
    coeff = torch.randn(case.tokens)
    return hidden, weight, targets, coeff


def _step(path: str, case: Case, chunk_size: int, hidden, weight, targets, coeff) -> float:
    """One forward + backward; returns seconds."""
    from rlpost.ops import fused_token_logprobs, token_logprobs_from_logits

    hidden.grad = weight.grad = None
    start = time.perf_counter()
    if path == "plain":
        logp, entropy = token_logprobs_from_logits(hidden @ weight.T, targets, 0.9, case.entropy)
    else:
        logp, entropy = fused_token_logprobs(
            hidden, weight, targets, temperature=0.9, chunk_size=chunk_size, compute_entropy=case.entropy
        )
    loss = (logp * coeff).sum() + (entropy.sum() * 0.01 if entropy is not None else 0.0)
    loss.backward()
    return time.perf_counter() - start


def worker_memory(case: Case, path: str, chunk_size: int) -> dict:
    from rlpost.learner.memory import peak_resident_gib, reset_peak, resident_gib

    inputs = _inputs(case)
    # Peak resident memory of forward+backward above what is resident once the inputs exist.
    # Resetting the peak keeps import-time or input-time peaks out of the baseline; where it cannot
    # be reset, the lifetime peak is the baseline (a lower bound of the delta).
    before = resident_gib() if reset_peak() else peak_resident_gib()
    seconds = _step(path, case, chunk_size, *inputs)
    return {"peak_bytes": (peak_resident_gib() - before) * 2**30, "seconds": seconds}


def worker_time(case: Case, chunk_sizes: list[int], repeats: int) -> dict:
    """Seconds of every variant in every round; each round runs all variants back to back, in an
    order rotated from round to round so that no variant always follows the same one."""
    inputs = _inputs(case)
    variants = [("plain", 0)] + [("fused", c) for c in chunk_sizes]
    for path, chunk in variants:  # warm-up: first-touch pages, oneDNN kernels
        _step(path, case, chunk, *inputs)
    times: dict[str, list[float]] = {f"{p}:{c}": [] for p, c in variants}
    for round_index in range(repeats):
        shift = round_index % len(variants)
        for path, chunk in variants[shift:] + variants[:shift]:
            times[f"{path}:{chunk}"].append(_step(path, case, chunk, *inputs))
    return times


# --------------------------------------------------------------------------------------------
# the per-token policy loss (learner.fused_ops), in this process: small tensors


def policy_loss_comparison(sequences: int, tokens: int, rounds: int) -> None:
    """The objectives' surrogate (`policy_loss_terms`) plain and fused, token-mean, forward + backward:
    whether loss, gradient and clip events are bit-identical, and the median within-round time ratio."""
    import torch

    from rlpost.objectives.core import aggregate_loss, step_scale_of
    from rlpost.ops import policy_loss_terms

    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(sequences, tokens, generator=gen) * 3
    old = logp + torch.randn(sequences, tokens, generator=gen) * 0.3
    adv = torch.randn(sequences, generator=gen)
    mask = (torch.rand(sequences, tokens, generator=gen) > 0.2).float()
    scale = step_scale_of(mask, tokens)

    def run(fused: bool):
        x = logp.clone().requires_grad_()
        terms = policy_loss_terms(x, old, adv, clip_low=0.2, clip_high=0.28, clip_c=3.0, fused=fused)
        loss = aggregate_loss(terms.loss, mask, "token-mean", scale)
        loss.backward()
        return [loss.detach(), x.grad, terms.ratio.detach(), terms.clipped_upper, terms.clipped_lower, terms.dual_clipped]

    same = all(torch.equal(a, b) for a, b in zip(run(False), run(True)))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for fused in (False, True):
            start = time.perf_counter()
            for _ in range(20):
                run(fused)
            seconds[fused].append((time.perf_counter() - start) / 20)
    ratio = statistics.median(f / p for f, p in zip(seconds[True], seconds[False]))
    print(f"policy loss {sequences} x {tokens}: bit-identical {same}; plain {statistics.median(seconds[False]) * 1e3:.2f} ms, "
          f"fused {statistics.median(seconds[True]) * 1e3:.2f} ms, fused/plain {ratio:.2f}")


# --------------------------------------------------------------------------------------------
# driver side


def _run_worker(args: list[str], threads: int) -> dict | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--threads", str(threads), "--worker", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        # -9 is usually the OOM killer (the machine's memory is shared): report, go on
        print(f"  worker {args} failed (exit {out.returncode}): {out.stderr[-500:].strip()}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="model:tokens:dtype[:entropy],...")
    parser.add_argument("--chunk-sizes", default="1024", help="fused chunk sizes to compare, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-path memory subprocesses")
    parser.add_argument("--quick", action="store_true", help="one small case, one repeat")
    parser.add_argument("--policy-loss", action="store_true", help="time the fused policy loss instead (64 x 128 tokens)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.policy_loss:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        policy_loss_comparison(64, 128, rounds=5 if args.quick else 30)
        return

    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        kind, case, *rest = args.worker
        if kind == "memory":
            result = worker_memory(Case.parse(case), rest[0], int(rest[1]))
        else:
            result = worker_time(Case.parse(case), [int(c) for c in rest[0].split(",")], int(rest[1]))
        print(json.dumps(result))
        return

    cases = ["smollm2:1024:fp32"] if args.quick else args.cases.split(",")
    repeats = 1 if args.quick else args.repeats
    chunks = [int(c) for c in args.chunk_sizes.split(",")]
    threads = args.threads or "torch default"
    print(f"threads={threads}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; rounds={repeats}")
    print("time f/p: median over rounds of fused/plain within the round; seconds: fastest round")
    header = f"{'case':28} {'chunk':>6} {'plain s':>8} {'fused s':>8} {'time f/p':>8}"
    header += "" if args.no_memory else f" {'plain GiB':>9} {'fused GiB':>9} {'mem f/p':>7}"
    print(header)
    for text in cases:
        case = Case.parse(text)
        times = _run_worker(["time", str(case), ",".join(map(str, chunks)), str(repeats)], args.threads)
        plain_mem = None if args.no_memory else _run_worker(["memory", str(case), "plain", "0"], args.threads)
        for chunk in chunks:
            line = f"{str(case):28} {chunk:6d}"
            if times is None:
                line += f" {'-':>8} {'-':>8} {'-':>8}"
            else:
                plain, fused = times["plain:0"], times[f"fused:{chunk}"]
                ratio = statistics.median(f / p for f, p in zip(fused, plain))
                line += f" {min(plain):8.2f} {min(fused):8.2f} {ratio:8.2f}"
            if not args.no_memory:
                fused_mem = _run_worker(["memory", str(case), "fused", str(chunk)], args.threads)
                line += _memory_columns(plain_mem, fused_mem)
            print(line, flush=True)


def _memory_columns(plain: dict | None, fused: dict | None) -> str:
    def gib(result: dict | None) -> str:
        return f"{result['peak_bytes'] / 2**30:9.2f}" if result else f"{'-':>9}"

    ratio = f"{fused['peak_bytes'] / plain['peak_bytes']:7.3f}" if plain and fused else f"{'-':>7}"
    return f" {gib(plain)} {gib(fused)} {ratio}"


if __name__ == "__main__":
    main()
