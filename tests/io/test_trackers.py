"""`logging.report_to`: every tracker gets each step's metrics and the run config; the older switches still work."""

from __future__ import annotations

import sys
import types

import pytest
from pydantic import ValidationError

from rlpost.config.schema import LoggingConfig
from rlpost.io.metrics import MetricsLogger, read_metrics

RUN_CONFIG = {"train": {"steps": 2}}


class Recorder(types.ModuleType):
    """A stand-in for a tracker package that is not installed here: it records the calls made to it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.calls: list[tuple] = []

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return lambda *args, **kwargs: self.calls.append((attr, args, kwargs)) or self

    def named(self, attr: str) -> list[tuple]:
        return [call for call in self.calls if call[0] == attr]


def test_older_switches_map_to_trackers_and_report_to_replaces_them():
    assert LoggingConfig().trackers == ["jsonl", "tensorboard"]
    assert LoggingConfig(tensorboard=False, wandb_project="demo").trackers == ["jsonl", "wandb"]
    assert LoggingConfig(report_to=["mlflow"]).trackers == ["mlflow"]
    assert LoggingConfig(report_to=[]).trackers == []
    with pytest.raises(ValidationError, match="set either report_to or tensorboard, not both"):
        LoggingConfig(report_to=["jsonl"], tensorboard=False)
    with pytest.raises(ValidationError, match="names a tracker twice"):
        LoggingConfig(report_to=["jsonl", "jsonl"])
    with pytest.raises(ValidationError, match="report_to"):
        LoggingConfig(report_to=["comet"])


def test_jsonl_and_tensorboard_get_the_metrics_and_tensorboard_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=["jsonl", "tensorboard"]), RUN_CONFIG)
    for step in (1, 2):
        logger.log(step, {"reward/mean": step / 10})
    logger.close()
    assert [record["reward/mean"] for record in read_metrics(tmp_path)] == [0.1, 0.2]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    assert [event.step for event in events.Scalars("reward/mean")] == [1, 2]
    assert any(tag.startswith("config") for tag in events.Tags()["tensors"])


def test_report_to_without_jsonl_writes_no_metrics_file(tmp_path):
    logger = MetricsLogger(tmp_path, LoggingConfig(report_to=[]), RUN_CONFIG)
    logger.log(1, {"reward/mean": 0.5})
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_mlflow_gets_the_config_and_valid_metric_names(tmp_path, monkeypatch):
    mlflow = Recorder("mlflow")
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    config = LoggingConfig(report_to=["mlflow"], wandb_project="maths", run_name="try-1")
    logger = MetricsLogger(tmp_path, config, RUN_CONFIG)
    logger.log(3, {"eval/pass@4": 0.5, "reward/component/math_verify#2": 1.0})
    logger.close()
    assert mlflow.named("set_experiment")[0][1] == ("maths",)
    assert mlflow.named("start_run")[0][2] == {"run_name": "try-1"}
    assert mlflow.named("log_dict")[0][1] == (RUN_CONFIG, "config.json")
    assert mlflow.named("log_metrics")[0][1:] == (
        ({"eval/pass_4": 0.5, "reward/component/math_verify_2": 1.0},), {"step": 3})
    assert mlflow.named("end_run")


@pytest.mark.parametrize("kind", ["trackio", "wandb"])
def test_trackio_and_wandb_get_project_run_name_and_config(kind, tmp_path, monkeypatch):
    module = Recorder(kind)
    monkeypatch.setitem(sys.modules, kind, module)
    logger = MetricsLogger(tmp_path / "run-7", LoggingConfig(report_to=[kind]), RUN_CONFIG)
    logger.log(1, {"reward/mean": 0.25})
    logger.close()
    started = module.named("init")[0][2]
    assert (started["project"], started["name"], started["config"]) == ("rlpost", "run-7", RUN_CONFIG)
    assert module.named("log")[0][1:] == (({"reward/mean": 0.25},), {"step": 1})
    assert module.named("finish")


def test_a_tracker_that_fails_to_start_ends_those_started_before(tmp_path, monkeypatch):
    class Broken(types.ModuleType):
        def init(self, **kwargs):
            raise RuntimeError("no network")

    trackio = Recorder("trackio")
    monkeypatch.setitem(sys.modules, "trackio", trackio)
    monkeypatch.setitem(sys.modules, "wandb", Broken("wandb"))
    with pytest.raises(RuntimeError, match="no network"):
        MetricsLogger(tmp_path, LoggingConfig(report_to=["trackio", "wandb"]), RUN_CONFIG)
    assert [call[0] for call in trackio.calls] == ["init", "finish"]
