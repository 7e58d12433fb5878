"""Prompt samplers side by side: uniform, VADE and Knapsack at the same rollout budget per step.

Each sampler trains SmolLM2 (vLLM rollouts) from its config (`configs/grpo.yaml` for uniform,
`configs/vade.yaml`, `configs/knapsack.yaml`) in its own `rlpost train` process, with the same steps,
seed and B prompts x n rollouts per step, on the built-in task with difficulty levels 1-3 and a
training set small enough that prompts come round again (VADE and Knapsack learn from revisits).
The reward is correctness alone (math_verify), so a zero-variance group is one that is all right or
all wrong: the quantity the two samplers exist to lower. Prints per sampler:

- zero-var groups: `sampler/zero_variance_frac`, the mean over all steps and over the steps after
  the first epoch (when every prompt has a history);
- zero-var rollouts: the share of the rollouts spent in such groups (groups differ in size under Knapsack);
- effective prompts per step and the range of group sizes;
- train reward: the batch reward of the last `--last` steps (it depends on which prompts a sampler
  picks, so it is not a like-for-like measure of learning);
- held-out accuracy: greedy, on `--eval-problems` test problems (levels 1-3) after the last step;

then each against uniform, and a JSON line with the numbers.

    python benchmarks/samplers.py                    # 8 steps x 4 prompts x 8 rollouts, 96 new tokens, 8 problems
    python benchmarks/samplers.py --steps 4 --samplers uniform knapsack -- rollout.temperature=1.0

Wall-clock time is not compared (the machine may be shared); the numbers are training outcomes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLER_CONFIGS = {"uniform": "grpo.yaml", "vade": "vade.yaml", "knapsack": "knapsack.yaml"}
COLUMNS = (
    ("zero_var_groups", "zero-var groups"),
    ("zero_var_groups_after_epoch", "after epoch 1"),
    ("zero_var_rollouts", "zero-var rollouts"),
    ("effective_prompts", "eff. prompts"),
    ("train_reward", "train reward"),
    ("eval_accuracy", "held-out acc"),
)


def budget_overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The same workload for every sampler."""
    return [
        f"train.steps={args.steps}",
        f"train.prompts_per_step={args.prompts}",
        f"train.seed={args.seed}",
        f"train.output_dir={run_dir}",
        "train.resume=never",
        "rollout.engine=vllm",
        f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        # Memory is shared with other jobs: 64 sequences of ~200 tokens need ~0.3 GiB of KV cache, and
        # an in-process engine saves a second copy of the model and of torch.
        "rollout.vllm.kv_cache_space_gib=1",
        "rollout.vllm.multiprocessing=false",
        "learner.micro_batch_size=4",  # the same update (gradients accumulate), lower peak memory
        "data.arithmetic.levels=[1, 2, 3]",
        f"data.arithmetic.train_size={args.train_size}",
        "reward.functions=[{name: math_verify, weight: 1.0}]",
        "reward.correct_reward=math_verify",
        "eval.every_steps=0",  # one evaluation, after the last step
        "eval.at_start=false",
        f"eval.num_problems={args.eval_problems}",
        "checkpoint.every_steps=0",
        "checkpoint.export_final=false",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
    ]


def train(sampler: str, args: argparse.Namespace, root: Path) -> list[dict] | None:
    """Runs one sampler's training; returns its metric records (None if it failed)."""
    from rlpost.io.metrics import read_metrics

    run_dir = root / sampler
    config = ROOT / "configs" / SAMPLER_CONFIGS[sampler]
    command = [sys.executable, "-m", "rlpost.cli", "train", str(config), *budget_overrides(args, run_dir), *args.overrides]
    log_path = root / f"{sampler}.log"
    started = time.perf_counter()
    print(f"[{sampler}] training {args.steps} steps (log: {log_path})", flush=True)
    with log_path.open("w") as log:
        finished = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    if finished.returncode != 0:  # e.g. -9 from the OOM killer on a shared machine: report, go on
        print(f"[{sampler}] training failed (exit {finished.returncode}); see {log_path}", flush=True)
        return None
    print(f"[{sampler}] done in {time.perf_counter() - started:.0f} s", flush=True)
    return read_metrics(run_dir)


def first_epoch_steps(args: argparse.Namespace) -> int:
    """Steps of uniform's first epoch: after them every prompt has a history."""
    return args.train_size // args.prompts


def summarise(records: list[dict], args: argparse.Namespace) -> dict[str, float]:
    steps = [r for r in records if "sampler/zero_variance_frac" in r]

    def mean(key: str, rows: list[dict]) -> float:
        return statistics.fmean(r[key] for r in rows)

    return {
        "zero_var_groups": mean("sampler/zero_variance_frac", steps),
        "zero_var_groups_after_epoch": mean("sampler/zero_variance_frac", steps[first_epoch_steps(args) :] or steps),
        "zero_var_rollouts": mean("sampler/zero_variance_rollout_frac", steps),
        "effective_prompts": mean("sampler/effective_prompts", steps),
        "budget_min": min(r["sampler/budget_min"] for r in steps),
        "budget_max": max(r["sampler/budget_max"] for r in steps),
        "train_reward": mean("reward/mean", steps[-args.last :]),
        "eval_accuracy": steps[-1]["eval/accuracy"],
        "steps": len(steps),
    }


def print_table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print()
    print(f"{args.steps} steps x {args.prompts} prompts x {args.n} rollouts ({args.prompts * args.n} per step), "
          f"{args.max_new_tokens} new tokens, {args.train_size} training problems (levels 1-3), seed {args.seed}; "
          f"'after epoch 1' = steps {first_epoch_steps(args) + 1}+, train reward = last {args.last} steps")
    header = "".join(f"{title:>19}" for _, title in COLUMNS)
    print(f"{'sampler':<10}{header}{'budgets':>10}")
    for sampler, summary in results.items():
        cells = "".join(f"{summary[key]:>19.3f}" for key, _ in COLUMNS)
        budgets = f"{summary['budget_min']:.0f}-{summary['budget_max']:.0f}"
        print(f"{sampler:<10}{cells}{budgets:>10}")
    if "uniform" not in results:
        return
    print("ratio to uniform")
    base = results["uniform"]
    for sampler, summary in results.items():
        cells = "".join(
            f"{summary[key] / base[key]:>19.2f}" if base[key] else f"{'-':>19}" for key, _ in COLUMNS
        )
        print(f"{sampler:<10}{cells}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLER_CONFIGS), default=list(SAMPLER_CONFIGS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (B)")
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt on average: the budget is B * n per step")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--train-size", type=int, default=8, help="training problems (small: prompts come round again)")
    parser.add_argument("--eval-problems", type=int, default=64)
    parser.add_argument("--last", type=int, default=3, help="steps the train reward is averaged over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every sampler, after --")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="rlpost-samplers-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    runs = {sampler: train(sampler, args, root) for sampler in args.samplers}
    results = {sampler: summarise(records, args) for sampler, records in runs.items() if records is not None}
    print_table(results, args)
    print(json.dumps({"workload": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                      "samplers": results}))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if len(results) == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
