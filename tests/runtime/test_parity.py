"""One loop, two runtimes: the same tiny config trained in-process and on Ray (synchronous, one
rollout worker, one learner rank) gives the same step metrics and the same checkpoint, and a
checkpoint of either runtime resumes on the other.

Both runs use the tiny random model (SmolLM2's tokenizer) with the HF engine and a DeepSpeed learner in fp32, one thread
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
    # Step 1 is SFT on worked solutions with nothing generated, step 2 GRPO.
    "sft_warmup": ["blending.sft.warmup_steps=1", "blending.sft.warmup_demos=4"],
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
        "cluster.threads_per_actor=1", f"cluster.runtime={runtime}", "checkpoint.at_end=true", *overrides,
    )


def _train(model_path, output_dir, runtime: str, *overrides: str) -> None:
    TrainingRun(_config(model_path, output_dir, runtime, *overrides)).fit()


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


@pytest.fixture(scope="module")
def run_pairs(tiny_chat_model_path, tmp_path_factory, ray_session):
    """method -> (local run folder, Ray run folder), each trained once for the whole module."""
    trained: dict[str, tuple] = {}

    def pair(method: str):
        if method not in trained:
            root = tmp_path_factory.mktemp(method)
            for runtime in ("local", "ray"):
                _train(tiny_chat_model_path, root / runtime, runtime, *METHODS[method])
            trained[method] = (root / "local", root / "ray")
        return trained[method]

    return pair


@pytest.mark.parametrize("method", list(METHODS))
def test_local_and_ray_runs_match(method, run_pairs):
    local_dir, ray_dir = run_pairs(method)
    local, remote = read_metrics(local_dir), read_metrics(ray_dir)
    assert len(local) == STEPS
    _assert_same_metrics(local, remote)
    _assert_same_checkpoint(local_dir, ray_dir)
    if method == "dapo":
        assert any(record["train/num_gen_batches"] > 1 for record in local), "the filter never asked for another round"
    if method != "grpo":  # 1.6 GB of checkpoint each; GRPO's are resumed below
        shutil.rmtree(local_dir.parent)


def test_checkpoints_resume_across_runtimes(tiny_chat_model_path, run_pairs, tmp_path):
    """GRPO's two local steps then one on Ray, and its two Ray steps then one locally: the same third step."""
    continued = {}
    for source, then in zip(run_pairs("grpo"), ("ray", "local"), strict=True):
        folder = tmp_path / f"{source.name}_then_{then}"
        shutil.copytree(source, folder)
        run = TrainingRun(_config(tiny_chat_model_path, folder, then, "train.steps=3", "train.resume=auto"))
        run.fit()
        assert run.start_step == STEPS
        continued[then] = read_metrics(folder)
        assert [r["step"] for r in continued[then]] == [1, 2, 3]
    _assert_same_metrics(continued["ray"][-1:], continued["local"][-1:])
