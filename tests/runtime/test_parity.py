"""One loop, two runtimes: the same tiny config trained in-process and on Ray (synchronous, one
rollout worker, one learner rank) gives the same step metrics and the same checkpoint, and a
checkpoint of either runtime resumes on the other.

Both runs use the real SmolLM2 model with the HF engine and a DeepSpeed learner in fp32, one thread
per process (so the arithmetic is the same in the actors as in this process).
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

import ray
from safetensors.torch import load_file

from rlpost.io.checkpoint import latest_checkpoint
from rlpost.io.metrics import read_metrics
from rlpost.loop import TrainingRun
from tests.runtime.helpers import RUNTIME_DIR, runtime_config

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.deepspeed]

STEPS = 2
TOLERANCE = 1e-5

METHODS = {
    "grpo": [],
    # Groups of questions whose answer is even score a constant 0 and are filtered out: rounds repeat.
    "dapo": [
        "objective.name=dapo", "objective.dapo.filter_metric=score", "objective.dapo.max_gen_batches=20",
        f"reward.functions=[{{name: '{RUNTIME_DIR / 'rewards.py'}:odd_answers_length_reward'}}]",
    ],
    "hpt": ["blending.name=hpt", "blending.hpt.success=correct", "learner.updates_per_batch=1"],
    "vade": ["sampler.name=vade", "sampler.vade.pool_factor=2.0", "data.arithmetic.levels=[1, 2]"],
}

NOT_COMPARED = ("perf/", "rollout/worker_restarts", "rollout/regenerated_units")
"""Timing and the Ray executor's fault counters: the only metrics that may differ."""


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One private Ray instance for every Ray run of this module."""
    from rlpost.runtime.placement import connect

    config = runtime_config("unused", tmp_path_factory.mktemp("ray"))
    assert connect(config.cluster)
    yield
    ray.shutdown()


def _config(model_path, output_dir, runtime: str, *overrides: str):
    return runtime_config(
        model_path, output_dir, "rollout.engine=hf", f"train.steps={STEPS}", "train.threads=1",
        "cluster.threads_per_actor=1", f"cluster.runtime={runtime}", *overrides,
    )


def _train(model_path, output_dir, runtime: str, *overrides: str) -> list[dict]:
    TrainingRun(_config(model_path, output_dir, runtime, *overrides)).fit()
    return read_metrics(output_dir)


def _comparable(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith(NOT_COMPARED)}


def _assert_same_metrics(local: list[dict], remote: list[dict]) -> None:
    assert [r["step"] for r in local] == [r["step"] for r in remote]
    for a, b in zip(local, remote, strict=True):
        a, b = _comparable(a), _comparable(b)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], abs=TOLERANCE, rel=TOLERANCE), (a["step"], key)


def _checkpoint(output_dir) -> tuple[dict, dict]:
    folder = latest_checkpoint(output_dir / "checkpoints")
    state = json.loads((folder / "trainer.json").read_text())
    # The driver's torch RNG differs: the local HF engine re-seeds this process's generator, an actor's its own.
    state.pop("rng")
    return state, load_file(folder / "learner" / "policy.safetensors")


def _assert_same_checkpoint(local_dir, remote_dir) -> None:
    local_state, local_weights = _checkpoint(local_dir)
    remote_state, remote_weights = _checkpoint(remote_dir)
    assert remote_state == local_state
    assert remote_weights.keys() == local_weights.keys()
    for name, tensor in local_weights.items():
        assert (remote_weights[name] - tensor).abs().max() <= TOLERANCE, name


@pytest.mark.parametrize("method", list(METHODS))
def test_local_and_ray_runs_match(method, model_path, tmp_path, ray_session):
    overrides = METHODS[method]
    local = _train(model_path, tmp_path / "local", "local", *overrides)
    remote = _train(model_path, tmp_path / "ray", "ray", *overrides)
    assert len(local) == STEPS
    _assert_same_metrics(local, remote)
    _assert_same_checkpoint(tmp_path / "local", tmp_path / "ray")
    if method == "dapo":
        assert any(record["train/num_gen_batches"] > 1 for record in local), "the filter never asked for another round"


def test_checkpoints_resume_across_runtimes(model_path, tmp_path, ray_session):
    """Two steps locally then one on Ray, and two on Ray then one locally: the same third step."""
    _train(model_path, tmp_path / "local_first", "local")
    _train(model_path, tmp_path / "ray_first", "ray")
    continued = {}
    for first, then in (("local_first", "ray"), ("ray_first", "local")):
        run = TrainingRun(_config(model_path, tmp_path / first, then, "train.steps=3", "train.resume=auto"))
        run.fit()
        assert run.start_step == STEPS
        continued[first] = read_metrics(tmp_path / first)
        assert [r["step"] for r in continued[first]] == [1, 2, 3]
    _assert_same_metrics(continued["local_first"][-1:], continued["ray_first"][-1:])
    shutil.rmtree(tmp_path)
