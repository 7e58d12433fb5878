"""Metric sinks (`rlpost.io.trackers`: JSONL, TensorBoard, W&B, MLflow, trackio) behind one `MetricsLogger`; reading a run's metrics.jsonl back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlpost.config.schema import LoggingConfig
from rlpost.io.trackers import METRICS_FILE, open_tracker


class MetricsLogger:
    """Writes one record per step to every tracker of `logging` (`LoggingConfig.trackers`)."""

    def __init__(self, output_dir: Path, config: LoggingConfig, run_config: dict, resume_step: int = 0):
        """`resume_step`: steps done by the checkpoint this run resumes from (0: a fresh run)."""
        self.output_dir = output_dir
        project = config.wandb_project or "rlpost"
        name = config.run_name or Path(output_dir).resolve().name
        self.trackers: list[Any] = []
        try:
            for kind in config.trackers:
                self.trackers.append(open_tracker(kind, output_dir, run_config, resume_step, project, name))
        except BaseException:
            self.close()  # the trackers already started end their runs
            raise

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


class MetricsError(ValueError):
    """A run folder has no readable metrics; the message names the folder or the line."""


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of `run_dir/metrics.jsonl`; the torn last line a killed process leaves is passed over."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        what = "does not exist" if not Path(run_dir).exists() else f"has no {METRICS_FILE}"
        raise MetricsError(f"run folder {run_dir} {what} (give the train.output_dir of a run)")
    lines = [(number, line) for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                break  # written in part when the process was killed
            raise MetricsError(f"{path}, line {number}: not a JSON record") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            raise MetricsError(f"{path}, line {number}: not a metrics record (an object with a numeric 'step')")
        records.append(record)
    return records
