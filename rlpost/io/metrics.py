"""Metric sinks: JSONL, TensorBoard and W&B, behind one `MetricsLogger`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlpost.config.schema import LoggingConfig

METRICS_FILE = "metrics.jsonl"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class MetricsLogger:
    """Writes one record per step to every configured sink."""

    def __init__(self, output_dir: Path, config: LoggingConfig, run_config: dict, resume_step: int = 0):
        """`resume_step`: steps done by the checkpoint this run resumes from (0: a fresh run)."""
        self.output_dir = output_dir
        self._jsonl = None
        self._tensorboard = None
        self._wandb = None
        if config.jsonl:
            path = output_dir / METRICS_FILE
            if resume_step and path.exists():
                _truncate_after(path, resume_step)
            # A fresh run replaces what an earlier run in this folder logged (killed before its first checkpoint).
            self._jsonl = path.open("a" if resume_step else "w")
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Hides the events of steps the previous process logged after the checkpoint (all, on a fresh start).
            purge_step = resume_step + 1 if resume_step else 0
            self._tensorboard = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge_step)
        if config.wandb_project:
            import wandb

            self._wandb = wandb.init(project=config.wandb_project, config=run_config, dir=str(output_dir), resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._jsonl is not None:
            record = {"step": step, **{key: _finite(float(value)) for key, value in metrics.items()}}
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tensorboard is not None:
            for key, value in metrics.items():
                self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _truncate_after(path: Path, step: int) -> None:
    """Drop records after `step`: a process killed after its last checkpoint logged steps its successor redoes.

    Records are keyed by steps done, so resuming from the checkpoint of step k keeps records 0..k."""
    kept = [line for line in path.read_text().splitlines() if _record_step(line) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _record_step(line: str) -> float:
    """The step of a record; infinity (dropped) for a blank line or the torn last line of a killed process."""
    try:
        return json.loads(line)["step"]
    except json.JSONDecodeError:
        return math.inf


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
