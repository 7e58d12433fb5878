"""`python -m rlpost.runtime CONFIG [key=value ...]`: train with the Ray runtime (sets cluster.runtime=ray).

Until `rlpost train` dispatches on `cluster.runtime` itself, this is the command-line entry of the
distributed runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlpost.runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="config file (default configs/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cluster.max_staleness=1")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rlpost.config import ConfigError, load_config
    from rlpost.runtime import RayTrainer

    try:
        config = load_config(args.config, ["cluster.runtime=ray", *args.overrides])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    metrics = RayTrainer(config).fit()
    keys = ("reward/mean", "train/accuracy", "eval/accuracy", "run/seconds_per_step", "run/rollout_busy_frac",
            "run/learner_busy_frac", "run/dropped_groups")
    print(json.dumps({"output_dir": config.train.output_dir, **{key: metrics[key] for key in keys if key in metrics}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
