"""Every method side by side: the same model, task, seeds and step budget for each.

Each method trains in its own `rlpost train` process from its `configs/<method>.yaml` (which all
extend `configs/grpo.yaml`, GRPO on the quickstart's model and task), with the budget overridden alike for every method, once per seed. Prints, per
method, the training reward and accuracy averaged over the last steps, and the held-out accuracy and
boxed-answer rate (greedy, on the built-in task's `test` split, whose phrasings never appear in
training) after the last step, as the mean and sample standard deviation over the seeds, next to the
untrained model's; then a JSON line with every number.

    python benchmarks/methods.py                              # every registered objective (+ kl_reward)
    python benchmarks/methods.py --suite blending             # grpo, sft (SFT only), and every controller
    python benchmarks/methods.py --suite samplers             # grpo (uniform) and every other prompt sampler
    python benchmarks/methods.py --suite all --seeds 0 1 2 --steps 8 --prompts 4
    python benchmarks/methods.py --methods grpo gspo --steps 5 -- rollout.temperature=1.0

The suites come from the registries (objectives, blending controllers, samplers): a new method with
its `configs/<name>.yaml` is compared with no edit here. `sft` is the SASR config with its SFT warm-up
covering every step: SFT on the worked solutions only. Wall-clock time is not compared (the machine
may be shared); the numbers are training outcomes. A single seed rarely separates two methods: read
the spread before a difference of means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MEASURES = ("reward", "train_accuracy", "eval_accuracy", "eval_boxed_rate")


def suites() -> dict[str, list[str]]:
    """Method names by suite, from the registries; `grpo` (configs/grpo.yaml) is every suite's reference."""
    from rlpost.blending import CONTROLLERS
    from rlpost.objectives.registry import objective_names
    from rlpost.samplers import SAMPLERS

    objectives = ["grpo", *(name for name in objective_names() if name != "grpo")]
    # KL in the reward is a shared switch, not an objective: its config runs GRPO with it on.
    objectives += ["kl_reward"] if (ROOT / "configs/kl_reward.yaml").exists() else []
    blending = ["grpo", "sft", *CONTROLLERS.names()]
    samplers = ["grpo", *(name for name in SAMPLERS.names() if name != "uniform")]
    every = list(dict.fromkeys(objectives + blending + samplers))
    return {"objectives": objectives, "blending": blending, "samplers": samplers, "all": every}


def warmup_overrides(method: str, steps: int) -> list[str]:
    """The shipped SASR and AMFT configs warm up with SFT for 5 and 3 of configs/grpo.yaml's 30 steps;
    at a short budget that would leave few blended steps, so their warm-up is scaled to the budget."""
    warmup = max(1, round(steps / 6)) if steps < 30 else None
    if warmup is None or method not in ("sasr", "amft"):
        return []
    return [f"blending.{method}.warmup_steps={warmup}"]


def method_command(method: str, steps: int) -> tuple[Path, list[str]]:
    """The config file of `method` and the overrides that make it that method."""
    if method == "grpo":
        return ROOT / "configs/grpo.yaml", []
    if method == "sft":
        return ROOT / "configs/sasr.yaml", [f"blending.sasr.warmup_steps={steps}"]
    return ROOT / f"configs/{method}.yaml", warmup_overrides(method, steps)


def budget_overrides(args: argparse.Namespace, seed: int, output_dir: Path, evaluate_at_start: bool) -> list[str]:
    return [
        f"train.steps={args.steps}",
        f"train.prompts_per_step={args.prompts}",
        f"train.seed={seed}",
        f"train.output_dir={output_dir}",
        "train.resume=never",
        f"rollout.n={args.n}",
        # One evaluation after the last step (and, for the first method, the untrained baseline).
        f"eval.every_steps={args.steps}",
        f"eval.num_problems={args.eval_problems}",
        f"eval.at_start={str(evaluate_at_start).lower()}",
        "checkpoint.every_steps=0",
        "checkpoint.keep_last=1",
        "checkpoint.export_final=false",
    ]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def finished(run_dir: Path, steps: int) -> bool:
    """Whether `run_dir` holds a run that logged its last step's evaluation."""
    if not (run_dir / "metrics.jsonl").exists():
        return False
    return any(r.get("step") == steps and "eval/accuracy" in r for r in read_metrics(run_dir))


def summarise(records: list[dict], last: int) -> dict[str, float]:
    """Training reward/accuracy over the last `last` steps; held-out numbers of the final evaluation."""
    steps = [r for r in records if "reward/mean" in r]
    tail = steps[-last:]
    final_eval = [r for r in records if "eval/accuracy" in r and r.get("step", 0) > 0][-1]
    return {
        "reward": statistics.fmean(r["reward/mean"] for r in tail),
        "train_accuracy": statistics.fmean(r["train/accuracy"] for r in tail),
        "eval_accuracy": final_eval["eval/accuracy"],
        "eval_boxed_rate": final_eval["eval/boxed_rate"],
        "steps": len(steps),
    }


def untrained(records: list[dict]) -> dict[str, float] | None:
    start = [r for r in records if "eval/accuracy" in r and r.get("step", 0) == 0]
    if not start:
        return None
    return {"eval_accuracy": start[0]["eval/accuracy"], "eval_boxed_rate": start[0]["eval/boxed_rate"]}


def train(method: str, args: argparse.Namespace, seed: int, run_dir: Path, evaluate_at_start: bool) -> None:
    config, method_overrides = method_command(method, args.steps)
    if not config.exists():
        raise SystemExit(f"no config for method {method!r}: {config} does not exist")
    overrides = method_overrides + budget_overrides(args, seed, run_dir, evaluate_at_start) + args.overrides
    command = [sys.executable, "-m", "rlpost.cli", "train", str(config), *overrides]
    log_path = run_dir.with_suffix(".log")
    print(f"[{method}] seed {seed}: training {args.steps} steps (log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        finished = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"[{method}] training failed (exit {finished.returncode}); see {log_path}")
    if not args.keep:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one seed) of each measure over the seeds' runs."""
    summary: dict[str, float] = {"seeds": len(per_seed)}
    for key in MEASURES:
        values = [run[key] for run in per_seed]
        summary[key] = statistics.fmean(values)
        summary[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def print_table(baseline: dict[str, float] | None, results: dict[str, dict[str, float]], last: int) -> None:
    header = (f"{'method':<13} {f'reward(last {last})':>17} {'train acc':>13} {'held-out acc':>13} {'boxed rate':>13}"
              "   (mean ± sd over seeds)")
    print(header)
    print("-" * len(header))
    if baseline is not None:
        print(f"{'untrained':<13} {'':>17} {'':>13} {baseline['eval_accuracy']:>13.3f} {baseline['eval_boxed_rate']:>13.3f}")
    for method, r in results.items():
        cells = [f"{r[key]:.3f}±{r[key + '_sd']:.3f}" for key in MEASURES]
        print(f"{method:<13} {cells[0]:>17} {cells[1]:>13} {cells[2]:>13} {cells[3]:>13}")


def run_method(method: str, args: argparse.Namespace, out_dir: Path, first: bool) -> tuple[list[dict], dict | None]:
    """Each seed's summary of `method`, and the untrained model's numbers if this run measured them."""
    per_seed, baseline = [], None
    for index, seed in enumerate(args.seeds):
        run_dir = out_dir / f"{method}-seed{seed}"
        if not (args.reuse and finished(run_dir, args.steps)):
            shutil.rmtree(run_dir, ignore_errors=True)
            train(method, args, seed, run_dir, evaluate_at_start=first and index == 0)
        records = read_metrics(run_dir)
        baseline = baseline or untrained(records)
        per_seed.append(summarise(records, args.last))
        print(f"[{method}] seed {seed}: {json.dumps(per_seed[-1])}", flush=True)
    return per_seed, baseline


def main() -> None:
    available = suites()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(available), default="objectives")
    parser.add_argument("--methods", nargs="+", help="methods to run (default: the suite's)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--n", type=int, default=8, help="completions per prompt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and method")
    parser.add_argument("--eval-problems", type=int, default=300)
    parser.add_argument("--last", type=int, default=4, help="training steps averaged for the reward column")
    parser.add_argument("--out-dir", default="runs/bench_methods")
    parser.add_argument("--keep", action="store_true", help="keep each run's final checkpoint")
    parser.add_argument("--reuse", action="store_true", help="read finished runs in --out-dir instead of training them again")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every method (after --)")
    args = parser.parse_args()
    methods = args.methods or available[args.suite]
    out_dir = (ROOT / args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    runs: dict[str, list[dict]] = {}
    results: dict[str, dict[str, float]] = {}
    baseline = None
    for index, method in enumerate(methods):
        runs[method], measured = run_method(method, args, out_dir, first=index == 0)
        baseline = baseline or measured
        results[method] = over_seeds(runs[method])

    print()
    print_table(baseline, results, args.last)
    print(json.dumps({"suite": args.suite, "steps": args.steps, "prompts": args.prompts, "n": args.n,
                      "seeds": args.seeds, "untrained": baseline, "methods": results, "runs": runs}))


if __name__ == "__main__":
    main()
