"""GPU placement on a CPU machine: a private Ray instance with 8 logical GPUs.

Ray assigns logical GPUs exactly as it would real ones (bundles, `CUDA_VISIBLE_DEVICES` of each
actor), so the layout's bundles, what each actor sees and what vLLM's Ray executor is told are
checked here without a GPU.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

import ray

from rlpost.config.errors import ConfigError
from rlpost.runtime.placement import actor_options, check_device_settings, make_layout, remove_layout
from tests.runtime.helpers import runtime_config

pytestmark = [pytest.mark.ray]

GPUS = 8


@pytest.fixture(scope="module")
def gpu_cluster():
    """Ray with 8 logical GPUs (and CPUs enough for the fractional CPU requests below)."""
    ray.init(num_cpus=4, num_gpus=GPUS, include_dashboard=False, object_store_memory=100 * 2**20,
             runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
    yield
    ray.shutdown()


@ray.remote
class Seen:
    """What an actor placed with the layout's options sees of its GPUs."""

    def devices(self) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "VLLM_RAY_BUNDLE_INDICES")}


def _cluster(*overrides: str):
    config = runtime_config("unused", "unused", "cluster.rollout_cpus=0.1", "cluster.learner_cpus=0.1", *overrides)
    return config.cluster


def _seen(layout, cluster) -> tuple[list[dict], list[dict]]:
    learners = [Seen.options(**actor_options(group, bundle, 0.1, layout.learner_gpus)).remote()
                for group, bundle in layout.learner_groups]
    workers = [Seen.options(**actor_options(group, bundle, 0.1, layout.rollout_gpus, env=layout.rollout_env(i))).remote()
               for i, (group, bundle) in enumerate(layout.rollout_groups)]
    seen = ray.get([actor.devices.remote() for actor in learners + workers])
    for actor in learners + workers:
        ray.kill(actor)
    return seen[: len(learners)], seen[len(learners):]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_split_placement_gives_every_bundle_one_gpu(gpu_cluster, tp):
    cluster = _cluster("cluster.learner_ranks=2", f"cluster.num_rollout_workers={6 // tp if tp < 4 else 1}")
    layout = make_layout(cluster, tp, "cuda")
    try:
        rollout_group = layout.groups[1]
        # vLLM's Ray executor refuses bundles with more than one GPU: an engine spans tp bundles instead.
        assert all(spec.get("GPU") == 1 for spec in rollout_group.bundle_specs)
        workers = cluster.num_rollout_workers
        assert layout.rollout_bundles == [list(range(w * tp, (w + 1) * tp)) for w in range(workers)]
        assert [bundle for _, bundle in layout.rollout_groups] == [w * tp for w in range(workers)]
        learners, engines = _seen(layout, cluster)
        learner_gpus = [seen["CUDA_VISIBLE_DEVICES"] for seen in learners]
        assert all(gpus is not None and len(gpus.split(",")) == 1 for gpus in learner_gpus)
        if tp == 1:
            # The worker holds its GPU itself, one each, none shared with a learner rank.
            engine_gpus = [seen["CUDA_VISIBLE_DEVICES"] for seen in engines]
            assert len(set(engine_gpus + learner_gpus)) == workers + len(learners)
            assert all(seen["VLLM_RAY_BUNDLE_INDICES"] is None for seen in engines)
        else:
            # vLLM's Ray workers take the GPUs of the engine's bundles; the actor itself holds none.
            assert layout.rollout_gpus == 0
            assert [seen["VLLM_RAY_BUNDLE_INDICES"] for seen in engines] == [
                ",".join(str(b) for b in bundles) for bundles in layout.rollout_bundles
            ]
    finally:
        remove_layout(layout)


def test_colocated_rank_and_worker_share_one_gpu(gpu_cluster):
    cluster = _cluster("cluster.placement=colocated", "cluster.learner_ranks=2", "cluster.num_rollout_workers=2")
    layout = make_layout(cluster, 1, "cuda")
    try:
        assert layout.learner_gpus == layout.rollout_gpus == 0.5
        learners, engines = _seen(layout, cluster)
        for learner, engine in zip(learners, engines, strict=True):
            assert learner["CUDA_VISIBLE_DEVICES"] == engine["CUDA_VISIBLE_DEVICES"]
        assert learners[0]["CUDA_VISIBLE_DEVICES"] != learners[1]["CUDA_VISIBLE_DEVICES"]
    finally:
        remove_layout(layout)


def test_colocated_nccl_sync_is_refused_on_gpus():
    cluster = _cluster("cluster.placement=colocated", "cluster.sync_transport=nccl")
    with pytest.raises(ConfigError, match="cluster.placement: colocated with cluster.sync_transport: nccl") as refused:
        check_device_settings(cluster, 1, "cuda")
    assert "use sync_transport: ipc" in str(refused.value), "the refusal points at the colocated transport"
    check_device_settings(cluster, 1, "cpu")  # gloo puts two ranks on one CPU: allowed there


def test_ipc_sync_needs_colocated_gpus():
    colocated = _cluster("cluster.placement=colocated", "cluster.sync_transport=ipc", "rollout.engine=vllm")
    check_device_settings(colocated, 1, "cuda")
    with pytest.raises(ConfigError, match="cluster.sync_transport: ipc needs cluster.device: cuda"):
        check_device_settings(colocated, 1, "cpu")
    with pytest.raises(ConfigError, match="cluster.sync_transport: ipc needs cluster.placement: colocated"):
        check_device_settings(_cluster("cluster.sync_transport=ipc", "rollout.engine=vllm"), 1, "cuda")
