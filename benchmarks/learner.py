"""The learner on the quickstart's shapes: padded vs bucketed vs packed micro-batches, utilisation, memory.

    python benchmarks/learner.py                       # time the three modes, interleaved, 3 rounds
    python benchmarks/learner.py --rounds 5 --modes padded,bucketed
    python benchmarks/learner.py --steps 30 --modes bucketed       # peak resident memory per step
    python benchmarks/learner.py --modes bucketed,bucketed+eager,bucketed+tokens=4096   # variants
    python benchmarks/learner.py --compile            # the torch.compile'd body (after warm-up)

Workload: 8 prompts x 8 completions (64 sequences), prompts of 60-90 tokens, completion lengths drawn
like the quickstart's (mean ~50, 128 the limit, some truncated there), random token ids; SmolLM2-135M-
Instruct (`rlpost model fetch smollm2-135m-instruct`), fp32 weights, bf16 autocast, the DeepSpeed stage-0
backend (`--backend torch`: plain AdamW), GRPO, one update per batch: one forward + backward per
micro-batch, and the optimizer step. Each round runs every mode once (the order rotated between rounds)
on one Learner, and the report is the median over rounds of each mode's time / padded's time in that
round: load from other processes on a shared machine hits every mode alike.

Utilisation: the model FLOPs of a step, 6 x (non-embedding parameters x all tokens + LM head parameters
x response tokens) (forward + backward; padding not counted), over its seconds, against a bf16 matmul
of the learner's shapes ([tokens of a micro-batch, hidden] x [hidden, intermediate]) timed in the same
process right before, so both see the same machine.

Memory (`--steps N`): N identical steps of one mode (`--vary`: a new batch of the same distribution each
step, as in training) (`--mmap-threshold-mib none` for glibc's default
heap behaviour, the state before `learner.mmap_threshold_mib`); the peak resident memory of each step (VmHWM, reset
between steps through /proc/self/clear_refs, as the `perf/step_peak_rss_gib` metric) and the growth of
the last step's peak over the first's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from rlpost.config.schema import RLPostConfig  # noqa: E402
from rlpost.learner.batch import TrainBatch, prepare_update, sequence_lengths  # noqa: E402
from rlpost.learner.memory import peak_resident_gib, reset_peak  # noqa: E402

MODES = ("padded", "bucketed", "packed")


def model_path() -> str:
    out = subprocess.run(["rlpost", "model", "fetch", "smollm2-135m-instruct"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def quickstart_batch(seed: int = 0, prompts: int = 8, n: int = 8, max_new: int = 128, vocab: int = 49152) -> TrainBatch:
    """64 rows like the quickstart's: prompt 60-90 tokens, completion ~ 8 + Exp(42) capped at 128."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for g in range(prompts):
        prompt = torch.randint(3, vocab, (int(torch.randint(60, 91, (1,), generator=gen)),), generator=gen)
        for _ in range(n):
            length = min(max_new, 8 + int(torch.empty(1).exponential_(1 / 42, generator=gen)))
            rows.append((g, prompt, torch.randint(3, vocab, (length,), generator=gen)))
    seq, resp = max(len(p) + len(r) for _, p, r in rows), max(len(r) for _, _, r in rows)
    size = len(rows)
    batch = TrainBatch(
        input_ids=torch.zeros(size, seq, dtype=torch.long), attention_mask=torch.zeros(size, seq, dtype=torch.long),
        response_index=torch.zeros(size, resp, dtype=torch.long), response_mask=torch.zeros(size, resp),
        response_ids=torch.zeros(size, resp, dtype=torch.long), behaviour_logp=torch.zeros(size, resp),
        group_index=torch.tensor([g for g, _, _ in rows]), rewards=(torch.rand(size, generator=gen) < 0.4).float(),
        correct=torch.zeros(size, dtype=torch.bool), truncated=torch.tensor([len(r) == max_new for _, _, r in rows]),
        policy_version=torch.zeros(size, dtype=torch.long), reward_components={},
    )
    for i, (_, prompt, response) in enumerate(rows):
        p, r = len(prompt), len(response)
        batch.input_ids[i, :p], batch.input_ids[i, p : p + r] = prompt, response
        batch.attention_mask[i, : p + r] = 1
        batch.response_index[i, :r] = torch.arange(p, p + r)
        batch.response_mask[i, :r] = 1.0
        batch.response_ids[i, :r] = response
        batch.behaviour_logp[i, :r] = -1.0
    return batch


def make_learner(path: str, backend: str, mode: str, **learner):
    from rlpost.learner.learner import Learner
    from rlpost.objectives.registry import get_objective

    config = RLPostConfig.model_validate({
        "model": {"path": path},
        "learner": {"backend": backend, "micro_batch_size": 8, "micro_batching": mode, **learner},
        "rollout": {"max_new_tokens": 128, "temperature": 0.7},
        "optimizer": {"lr": 1e-7},
    })
    objective = get_objective("grpo")(config.objective, config.rollout.max_new_tokens)
    return Learner(config, path, objective, total_steps=1000), objective


def set_mode(learner, variant: str) -> None:
    """A variant is a mode with options: `bucketed`, `bucketed+eager` (eager attention instead of sdpa),
    `packed+tokens=4096` (`learner.micro_batch_tokens`)."""
    mode, *options = variant.split("+")
    tokens = next((int(o.split("=")[1]) for o in options if o.startswith("tokens=")), None)
    learner.config = learner.config.model_copy(
        update={"learner": learner.config.learner.model_copy(update={"micro_batching": mode, "micro_batch_tokens": tokens})}
    )
    learner.module.set_attn_implementation("eager" if "eager" in options else "sdpa")


def model_flops(learner, batch: TrainBatch) -> float:
    """6 x (body parameters x all tokens + head parameters x response tokens)."""
    module = learner.module
    head = module.get_output_embeddings().weight.numel()
    embed = module.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in module.parameters()) - embed - (0 if module.config.tie_word_embeddings else head)
    return 6.0 * (body * float(sequence_lengths(batch).sum()) + head * float(batch.response_mask.sum()))


def matmul_rate(learner, tokens: int, repeats: int = 20) -> float:
    """FLOP/s of a bf16 [tokens, hidden] x [hidden, intermediate] matmul (the MLP's), median of `repeats`."""
    cfg = learner.module.config
    a = torch.randn(tokens, cfg.hidden_size, dtype=torch.bfloat16)
    b = torch.randn(cfg.hidden_size, cfg.intermediate_size, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2.0 * tokens * cfg.hidden_size * cfg.intermediate_size / statistics.median(times)


def timed_step(learner, objective, batch: TrainBatch) -> float:
    targets = prepare_update(objective, batch)
    start = time.perf_counter()
    learner.train_step(batch, targets)
    return time.perf_counter() - start


def padding_share(learner, batch: TrainBatch, mode: str) -> tuple[float, int]:
    """(Padded token slots over real tokens in this mode's micro-batches (packed: 0), their number)."""
    set_mode(learner, mode)
    lengths = sequence_lengths(batch)
    chunks = learner.micro_batch_rows(batch, torch.arange(batch.size))
    slots = sum(int(lengths[c].sum()) if mode.startswith("packed") else len(c) * int(lengths[c].max()) for c in chunks)
    return slots / float(lengths.sum()) - 1.0, len(chunks)


def compare(args, learner, objective, batch: TrainBatch) -> None:
    modes = args.modes.split(",")
    for mode in modes:  # warm-up: every shape once
        set_mode(learner, mode)
        timed_step(learner, objective, batch)
    flops = model_flops(learner, batch)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    rates = []
    for round_ in range(args.rounds):
        rates.append(matmul_rate(learner, tokens=1024))
        for mode in modes[round_ % len(modes):] + modes[: round_ % len(modes)]:
            set_mode(learner, mode)
            times[mode].append(timed_step(learner, objective, batch))
            print(f"round {round_ + 1} {mode}: {times[mode][-1]:.2f} s", file=sys.stderr, flush=True)
    base = modes[0]
    rate = statistics.median(rates)
    print(f"bf16 matmul [1024 x {learner.module.config.hidden_size}] x [.. x {learner.module.config.intermediate_size}]: "
          f"{rate / 1e12:.3f} TFLOP/s (median of {args.rounds} rounds)")
    print(f"model FLOPs per step: {flops / 1e12:.3f} TFLOP ({int(sequence_lengths(batch).sum())} tokens, "
          f"{int(batch.response_mask.sum())} response tokens)")
    for mode in modes:
        ratio = statistics.median(t / b for t, b in zip(times[mode], times[base], strict=True))
        seconds = statistics.median(times[mode])
        padding, count = padding_share(learner, batch, mode)
        print(f"{mode:22s} micro-batches {count:2d}  padding {padding:5.1%}  time/{base} {ratio:.3f}"
              f"  utilisation {flops / seconds / rate:.3f} (median step {seconds:.2f} s)")


def memory(args, learner, objective, batch: TrainBatch) -> None:
    set_mode(learner, args.modes.split(",")[0])
    window = reset_peak()
    peaks = []
    for step in range(args.steps):
        timed_step(learner, objective, quickstart_batch(seed=step) if args.vary else batch)
        peaks.append(peak_resident_gib())
        window = reset_peak()
        print(f"step {step + 1:3d}  peak rss {peaks[-1]:.2f} GiB", flush=True)
    kind = "per-step peak" if window else "lifetime peak (clear_refs unavailable)"
    print(f"{kind}: first {peaks[0]:.2f} GiB, last {peaks[-1]:.2f} GiB, growth {peaks[-1] / peaks[0] - 1:+.1%}")
    if len(peaks) > 1:  # the first step also allocates the optimizer's state (Adam: 2 x fp32 parameters)
        print(f"from the second step (optimizer state allocated): {peaks[1]:.2f} -> {max(peaks[1:]):.2f} GiB (max), "
              f"growth {max(peaks[1:]) / peaks[1] - 1:+.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="memory mode: this many steps of the first mode")
    parser.add_argument("--backend", default="deepspeed", choices=["deepspeed", "torch"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model body")
    parser.add_argument("--mmap-threshold-mib", default="1", help="learner.mmap_threshold_mib ('none': glibc's dynamic one)")
    parser.add_argument("--vary", action="store_true", help="memory mode: a new batch (same distribution) each step")
    parser.add_argument("--release-memory", action="store_true", help="learner.release_memory (malloc_trim after each step)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"mkldnn bf16 {torch.backends.mkldnn.is_available()}", file=sys.stderr)
    if args.backend == "deepspeed":
        from rlpost.learner.distributed import ensure_process_group

        ensure_process_group()
    path = model_path()
    threshold = None if args.mmap_threshold_mib == "none" else float(args.mmap_threshold_mib)
    learner, objective = make_learner(path, args.backend, args.modes.split(",")[0].split("+")[0],
                                      mmap_threshold_mib=threshold, release_memory=args.release_memory)
    if args.compile:
        body = learner.module.get_decoder()
        body.forward = torch.compile(body.forward, dynamic=True)
    batch = quickstart_batch()
    if args.steps:
        memory(args, learner, objective, batch)
    else:
        compare(args, learner, objective, batch)


if __name__ == "__main__":
    main()
