"""The `rlpost` command line.

Errors a user can fix (config, data, reward function or its workers, model path, a checkpoint that
cannot be read or written) print one clear message and exit with status 2; `--debug` shows the
traceback. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# Before torch is imported: busy-waiting OpenMP threads slow everything on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _user_errors() -> tuple[type[BaseException], ...]:
    from rlpost.api import UsageError
    from rlpost.config.errors import ConfigError
    from rlpost.data import DatasetError
    from rlpost.io.checkpoint import CheckpointError
    from rlpost.io.metrics import MetricsError
    from rlpost.models import ModelFolderError, ModelNotFoundError
    from rlpost.rewards import RewardFunctionError, RewardWorkerError

    return (ConfigError, DatasetError, RewardFunctionError, RewardWorkerError, CheckpointError, ModelNotFoundError,
            ModelFolderError, MetricsError, UsageError)


def _override_given_as_config(args: argparse.Namespace) -> None:
    """`rlpost train a.b=1`: the config file is optional, so a first argument with `=` is an override."""
    if getattr(args, "overrides", None) is None or not args.config:
        return
    if "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)
        args.config = None


def cmd_train(args: argparse.Namespace) -> int:
    from rlpost.api import summary_line, train_config
    from rlpost.config import load_config

    config = load_config(args.config, args.overrides)
    print(summary_line(config, train_config(config)))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rlpost.config import load_config
    from rlpost.preflight import run_checks

    print(run_checks(load_config(args.config, args.overrides)).line())
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from rlpost.config import load_config
    from rlpost.io.config_reference import annotated_yaml

    print(annotated_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_config_fields(args: argparse.Namespace) -> int:
    from rlpost.io.config_reference import render_fields

    print(render_fields(args.section, args.format), end="")
    return 0


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from rlpost.models import fetch_model

    print(fetch_model(args.name, Path(args.to) if args.to else None))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlpost.api import UsageError, check_eval_settings, evaluate

    if args.compare:
        return _eval_compare(*args.compare)
    missing = [f"--{name}" for name in ("model", "data") if not getattr(args, name)]
    if missing:
        raise UsageError(f"eval needs {' and '.join(missing)} (or --compare A.json B.json)")
    # Named as the options are, before the model, the data or the reward workers load.
    check_eval_settings(vars(args), lambda key: f"eval --{key.replace('_', '-')}")
    summary = evaluate(
        args.model, args.data, split=args.split, config=args.config, samples=args.samples,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, limit=args.limit,
        question_field=args.question_field, answer_field=args.answer_field, engine=args.engine,
        dtype=args.dtype, seed=args.seed, out=args.out, log_level=args.log_level.upper(),
    )
    result = summary["result"]
    for name, groups in result["breakdown"].items():
        for value, metrics in groups.items():
            shown = "  ".join(f"{key} {metrics[key]:.3f}" for key in metrics if key != "problems")
            print(f"{name}={value}: {metrics['problems']} problems  {shown}")
    line = {key: value for key, value in summary.items() if key != "result"}
    line.update(mean_length=result["mean_length"], breakdown=result["breakdown"])
    print(json.dumps(line))  # last: scripts read the summary from the last line
    return 0


def _eval_compare(path_a: str, path_b: str) -> int:
    """`rlpost eval --compare A.json B.json`: B - A per metric, with 95% intervals (rlpost/evaluation.py)."""
    from rlpost.api import UsageError
    from rlpost.evaluation import compare_results, format_comparison

    results = []
    for path in (path_a, path_b):
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"eval --compare: cannot read {path} ({exc})") from None
        results.append(loaded.get("result", loaded) if isinstance(loaded, dict) else {})
    try:
        rows = compare_results(*results)
    except ValueError as exc:
        raise UsageError(f"eval --compare {path_a} {path_b}: {exc}") from None
    print(f"A = {path_a}\nB = {path_b}")
    print(format_comparison(rows))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rlpost.io.plot import plot_run

    print(plot_run(Path(args.run_dir), Path(args.out) if args.out else None))
    return 0


def cmd_checkpoint_verify(args: argparse.Namespace) -> int:
    from rlpost.io.checkpoint import verify_checkpoint

    manifest = verify_checkpoint(Path(args.folder))
    print(f"ok: step {manifest['step']}, {len(manifest['files'])} files verified")
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser, run) -> None:
    """`[CONFIG] [key.path=value ...]`, as train, validate and config show take them."""
    parser.add_argument("config", nargs="?", help="config file (default configs/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. objective.clip_high=0.28")
    parser.set_defaults(run=run)


def _add_config_commands(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config; `# default: ...` marks each changed value")
    _add_config_arguments(show, cmd_config_show)
    fields = config.add_parser("fields", help="every setting with its type, default and description")
    fields.add_argument("section", nargs="?", help="a section, e.g. rollout or objective.dapo (default: all)")
    fields.add_argument("--format", choices=["text", "markdown"], default="text",
                        help="markdown: the config reference of docs/config.md")
    fields.set_defaults(run=cmd_config_fields)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlpost", description="RL post-training of LLMs (GRPO family).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--log-level", default="INFO", help=f"one of {', '.join(LOG_LEVELS)}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config (default: the quickstart)")
    _add_config_arguments(train, cmd_train)
    validate = commands.add_parser(
        "validate", help="check a config, its data, model folder and reward functions without training (exit 0 or 2)")
    _add_config_arguments(validate, cmd_validate)

    _add_config_commands(commands)

    model = commands.add_parser("model", help="models").add_subparsers(dest="action", required=True)
    fetch = model.add_parser("fetch", help="fetch a built-in model or a Hub id into a Hugging Face folder")
    fetch.add_argument("name", help="built-in alias (smollm2-135m-instruct) or Hub id (org/name)")
    fetch.add_argument("--to", help="new or empty target folder (default: the rlpost cache; for a Hub id the Hugging Face cache)")
    fetch.set_defaults(run=cmd_model_fetch)

    ev = commands.add_parser("eval", help="pass@1 / pass@k of a model under math-verify (per level, operation and "
                                          "template when the rows have them), or --compare two results")
    ev.add_argument("--model", help="model folder, Hub id or built-in alias (required unless --compare)")
    ev.add_argument("--data", help="data file/folder/Hub id, or `arithmetic` (required unless --compare)")
    ev.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                    help="compare two --out files: B - A per metric with a 95%% interval (Newcombe/Wilson)")
    ev.add_argument("--split", default="test", help="split of the built-in task or a Hub dataset (arithmetic's test split uses phrasings no training row has)")
    ev.add_argument("--config", help="take the prompt format (data.system_prompt, templates) from this training config")
    ev.add_argument("--samples", type=int, default=1, help="samples per problem (1: greedy)")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N problems")
    ev.add_argument("--question-field", default="question")
    ev.add_argument("--answer-field", default="answer")
    ev.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ev.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="write the results (with per-problem details) to this JSON file")
    ev.set_defaults(run=cmd_eval)

    plot = commands.add_parser("plot", help="plot reward, accuracy, length and KL curves of a run")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    plot.set_defaults(run=cmd_plot)

    ckpt = commands.add_parser("checkpoint", help="checkpoints").add_subparsers(dest="action", required=True)
    verify = ckpt.add_parser("verify", help="check a checkpoint folder against its manifest")
    verify.add_argument("folder")
    verify.set_defaults(run=cmd_checkpoint_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _override_given_as_config(args)
    if args.log_level.upper() not in LOG_LEVELS:
        print(f"error: --log-level {args.log_level!r} is not a level; use one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except _user_errors() as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
