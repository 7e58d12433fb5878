"""metrics.jsonl across restarts: a resumed run keeps the records up to its checkpoint, a fresh run starts over."""

import json

import pytest

from rlpost.config.schema import LoggingConfig
from rlpost.io.metrics import METRICS_FILE, MetricsError, MetricsLogger, read_metrics

JSONL_ONLY = LoggingConfig(tensorboard=False, progress_bar=False)


def _killed_run_log(folder) -> None:
    """Steps 0-3 logged, then a record torn by a kill in the middle of its write."""
    lines = [json.dumps({"step": step, "reward/mean": step / 10}) for step in range(4)]
    (folder / METRICS_FILE).write_text("\n".join(lines) + '\n{"step": 4, "rew')


def test_resumed_run_drops_records_after_its_checkpoint_and_a_torn_line(tmp_path):
    _killed_run_log(tmp_path)
    logger = MetricsLogger(tmp_path, JSONL_ONLY, {}, resume_step=2)
    logger.log(3, {"reward/mean": 0.5})
    logger.close()
    assert read_metrics(tmp_path) == [
        {"step": 0, "reward/mean": 0.0}, {"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.2},
        {"step": 3, "reward/mean": 0.5},
    ]


def test_fresh_run_replaces_the_log_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    _killed_run_log(tmp_path)
    logger = MetricsLogger(tmp_path, JSONL_ONLY, {}, resume_step=0)
    logger.log(1, {"reward/mean": 0.5})
    logger.close()
    assert read_metrics(tmp_path) == [{"step": 1, "reward/mean": 0.5}]


def test_reading_passes_over_the_torn_last_line_of_a_killed_run(tmp_path):
    _killed_run_log(tmp_path)
    assert [record["step"] for record in read_metrics(tmp_path)] == [0, 1, 2, 3]


def test_a_damaged_line_before_the_last_is_named(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n{"step": 2, "rew\n{"step": 3}\n')
    with pytest.raises(MetricsError, match=rf"{tmp_path / METRICS_FILE}, line 2: not a JSON record"):
        read_metrics(tmp_path)


def test_missing_run_folder_or_log_is_named(tmp_path):
    with pytest.raises(MetricsError, match=rf"run folder {tmp_path / 'nope'} does not exist \(give the train.output_dir of a run\)"):
        read_metrics(tmp_path / "nope")
    with pytest.raises(MetricsError, match=rf"run folder {tmp_path} has no metrics.jsonl"):
        read_metrics(tmp_path)
