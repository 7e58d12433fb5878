"""The metric trackers of `logging.report_to`: one small adapter per backend, each with `log` and `close`.

Each logs the run config once at the start (jsonl: the run folder's config.yaml already holds it).
accelerate's trackers are not used: they route through `Accelerator`'s main-process state, while
rlpost logs from the one process that runs the loop. The packages are imported only here, when a
run starts; `rlpost.preflight` checks that they are installed before any model loads.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

TRACKER_PACKAGES: dict[str, str | None] = {
    "jsonl": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio",
}
"""The package each tracker imports (None: nothing beyond rlpost's own requirements)."""

INSTALL = {
    "tensorboard": "pip install tensorboard",
    "wandb": "pip install 'rlpost[wandb]'",
    "mlflow": "pip install mlflow",
    "trackio": "pip install trackio",
}
"""How to install each tracker's package."""

METRICS_FILE = "metrics.jsonl"


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class JsonlTracker:
    """`output_dir/metrics.jsonl`, one record per step; on resume the records after the checkpoint go."""

    def __init__(self, output_dir: Path, resume_step: int):
        path = output_dir / METRICS_FILE
        if resume_step and path.exists():
            truncate_after(path, resume_step)
        # A fresh run replaces what an earlier run in this folder logged (killed before its first checkpoint).
        self.file = path.open("a" if resume_step else "w")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{key: finite(float(value)) for key, value in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardTracker:
    """`output_dir/tensorboard`; the config as a text summary."""

    def __init__(self, output_dir: Path, run_config: dict, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # Hides the events of steps the previous process logged after the checkpoint (all, on a fresh start).
        self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else 0)
        if not resume_step:
            self.writer.add_text("config", "```\n" + json.dumps(run_config, indent=1) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, output_dir: Path, run_config: dict, project: str, name: str):
        import wandb

        self.run = wandb.init(project=project, name=name, config=run_config, dir=str(output_dir), resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in the experiment `project` (tracking URI from `MLFLOW_TRACKING_URI`)."""

    def __init__(self, run_config: dict, project: str, name: str):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(project)
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_dict(run_config, "config.json")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({mlflow_key(key): float(value) for key, value in metrics.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def mlflow_key(key: str) -> str:
    """MLflow accepts letters, digits, `_ - . / :` and spaces in a metric name: `pass@4` becomes `pass_4`."""
    return re.sub(r"[^\w\-./: ]", "_", key)


class TrackioTracker:
    def __init__(self, run_config: dict, project: str, name: str):
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=name, config=run_config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        self.trackio.finish()


def open_tracker(kind: str, output_dir: Path, run_config: dict, resume_step: int, project: str, name: str) -> Any:
    """The tracker `kind` (a name of TRACKER_PACKAGES), started."""
    if kind == "jsonl":
        return JsonlTracker(output_dir, resume_step)
    if kind == "tensorboard":
        return TensorBoardTracker(output_dir, run_config, resume_step)
    if kind == "wandb":
        return WandbTracker(output_dir, run_config, project, name)
    if kind == "mlflow":
        return MlflowTracker(run_config, project, name)
    if kind == "trackio":
        return TrackioTracker(run_config, project, name)
    raise ValueError(f"logging.report_to: unknown tracker {kind!r}; known: {', '.join(TRACKER_PACKAGES)}")


def truncate_after(path: Path, step: int) -> None:
    """Drop records after `step`: a process killed after its last checkpoint logged steps its successor redoes.

    Records are keyed by steps done, so resuming from the checkpoint of step k keeps records 0..k."""
    kept = [line for line in path.read_text().splitlines() if record_step(line) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def record_step(line: str) -> float:
    """The step of a record; infinity (dropped) for a blank line or the torn last line of a killed process."""
    try:
        return json.loads(line)["step"]
    except json.JSONDecodeError:
        return math.inf
