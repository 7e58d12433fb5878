"""`rlpost plot`: draws what a killed run logged, and names a missing or empty run folder or --out folder."""

import json

import pytest

from rlpost.io.metrics import METRICS_FILE, MetricsError
from rlpost.io.plot import plot_run


def test_plots_a_killed_runs_log_with_a_torn_last_line(tmp_path):
    lines = [json.dumps({"step": step, "reward/mean": step / 10, "train/accuracy": 0.5}) for step in (1, 2)]
    (tmp_path / METRICS_FILE).write_text("\n".join(lines) + '\n{"step": 3, "rew')
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png" and out.stat().st_size > 0


def test_empty_log_and_missing_out_folder_are_named(tmp_path):
    (tmp_path / METRICS_FILE).write_text("")
    with pytest.raises(MetricsError, match="metrics.jsonl has no records yet"):
        plot_run(tmp_path)
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "reward/mean": 0.5}\n')
    with pytest.raises(MetricsError, match=rf"--out {tmp_path}/no/curves.png: folder {tmp_path}/no does not exist"):
        plot_run(tmp_path, tmp_path / "no" / "curves.png")
    assert not (tmp_path / "no").exists()
