"""Seconds per step of the same workload trained synchronously and with max_staleness 1 and 2.

One set of Ray actors (a vLLM rollout worker and a DeepSpeed learner rank by default, one CPU each)
trains interleaved segments: sync, k=1, k=2, sync, k=1, k=2, ... so that machine load and the
policy's drift (completion lengths change as it trains) hit every mode alike. The first step of
each segment refills the pipeline and is left out of its timing. Prints seconds per step, the
async/sync ratio, and the busy fractions of rollout and learner, then a JSON line with the numbers.

    python benchmarks/async_overlap.py                       # vLLM engine, 2 rounds of 5-step segments
    python benchmarks/async_overlap.py --engine hf --rounds 2 --segment-steps 3
    python benchmarks/async_overlap.py --runtime local       # the in-process runtime

No wall-clock limits: ratios are what to read (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = (0, 1, 2)


def build_config(args: argparse.Namespace, output_dir: str):
    from rlpost.config.loader import apply_override, parse_override
    from rlpost.config.schema import RLPostConfig

    # One step more than the segments use: no end-of-run checkpoint or evaluation is triggered.
    total = args.rounds * len(MODES) * args.segment_steps + 1
    overrides = [
        f"model.path={args.model}",
        "data.test=null",
        "data.arithmetic.train_size=512",
        f"rollout.engine={args.engine}",
        f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.dtype={args.rollout_dtype}",
        "rollout.temperature=1.0",
        "rollout.batch_size=64",
        "rollout.vllm.kv_cache_space_gib=1",
        "rollout.vllm.enforce_eager=true",
        # Ray: the engine lives in its actor's process; local: in its own process, so the learner keeps its threads.
        f"rollout.vllm.multiprocessing={str(args.runtime == 'local').lower()}",
        f"train.prompts_per_step={args.prompts}",
        f"train.steps={total}",
        f"train.output_dir={output_dir}",
        "train.resume=never",
        "learner.backend=deepspeed",
        f"learner.mixed_precision={args.mixed_precision!r}",
        f"learner.micro_batch_size={args.prompts * args.n}",
        "optimizer.lr=1e-6",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "checkpoint.every_steps=0",
        "checkpoint.export_final=false",
        "reward.num_workers=1",
        f"cluster.runtime={args.runtime}",
        "cluster.num_cpus=2",
        "cluster.rollout_cpus=1",
        "cluster.learner_cpus=0.75",
        "cluster.reward_cpus=0.25",
        "cluster.threads_per_actor=1",
        "cluster.is_correction=token",  # the same loss work in every mode
        "cluster.object_store_memory_gib=1",
    ]
    tree: dict = {}
    for override in overrides:
        keys, value = parse_override(override)
        apply_override(tree, keys, value)
    return RLPostConfig.model_validate(tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--runtime", choices=["ray", "local"], default="ray")
    parser.add_argument("--rollout-dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="bf16")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--segment-steps", type=int, default=5, help="steps per segment (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (sync, k=1, k=2) segments")
    args = parser.parse_args()

    from rlpost.loop import TrainingRun
    from rlpost.models import resolve_model

    args.model = resolve_model(args.model)
    output_dir = tempfile.mkdtemp(prefix="rlpost-async-bench-")
    config = build_config(args, output_dir)
    trainer = TrainingRun(config)
    started = time.perf_counter()
    results: dict[int, list[dict[str, float]]] = {k: [] for k in MODES}
    try:
        trainer.start()
        print(f"actors ready in {time.perf_counter() - started:.0f} s; workload: {args.prompts} prompts x {args.n} "
              f"x {args.max_new_tokens} tokens, {args.engine} engine, learner {args.mixed_precision}", flush=True)
        for round_index in range(args.rounds):
            for k in MODES:
                summary = trainer.run_segment(args.segment_steps, k)
                results[k].append(summary)
                print(f"round {round_index + 1} max_staleness {k}: {summary['run/seconds_per_step']:.2f} s/step, "
                      f"rollout busy {summary['run/rollout_busy_frac']:.2f}, learner busy {summary['run/learner_busy_frac']:.2f}",
                      flush=True)
    finally:
        trainer.close()
        shutil.rmtree(output_dir, ignore_errors=True)

    def mean(k: int, key: str) -> float:
        return statistics.fmean(summary[key] for summary in results[k])

    sync = mean(0, "run/seconds_per_step")
    print()
    print(f"{'mode':<16}{'s/step':>9}{'vs sync':>9}{'rollout busy':>14}{'learner busy':>14}")
    table = {}
    for k in MODES:
        per_step = mean(k, "run/seconds_per_step")
        # Per round: async/sync of the same round (same machine load, same policy age).
        ratios = [a["run/seconds_per_step"] / s["run/seconds_per_step"] for a, s in zip(results[k], results[0])]
        table[k] = {
            "seconds_per_step": per_step,
            "ratio_to_sync": statistics.fmean(ratios),
            "rollout_busy": mean(k, "run/rollout_busy_frac"),
            "learner_busy": mean(k, "run/learner_busy_frac"),
        }
        name = "sync" if k == 0 else f"max_staleness {k}"
        print(f"{name:<16}{per_step:>9.2f}{table[k]['ratio_to_sync']:>9.2f}{table[k]['rollout_busy']:>14.2f}"
              f"{table[k]['learner_busy']:>14.2f}")
    print(json.dumps({"workload": vars(args), "sync_seconds_per_step": sync, "modes": table}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
