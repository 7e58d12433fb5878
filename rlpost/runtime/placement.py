"""Connecting to Ray, placement groups, and creating the actors with their resources.

`split`: one placement group of learner bundles (one per rank: `learner_cpus` CPUs, one GPU on
GPUs, plus `learner_resources`) and one of rollout bundles. On GPUs every rollout bundle holds one
GPU, as vLLM's Ray executor requires: an engine with `tensor_parallel_size` t takes t consecutive
bundles; with t = 1 the worker actor holds the GPU itself, with t > 1 the actor holds none and
vLLM's Ray workers take the GPUs of its bundles (`VLLM_RAY_BUNDLE_INDICES`). `colocated`: one group
of bundles, bundle i holding learner rank i and rollout worker i, which split its GPU (0.5 each).
Reward actors need only `reward_cpus` and go wherever Ray finds room.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rlpost.config.cluster import ClusterConfig
from rlpost.learner.distributed import is_loopback

log = logging.getLogger(__name__)

PLACEMENT_WAIT_SECONDS = 600.0

ACTOR_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
"""Set in every actor before torch starts: busy-waiting OpenMP threads slow a shared CPU 10x."""


class PlacementError(RuntimeError):
    """The cluster cannot host the actors the `cluster:` section asks for."""


def connect(cluster: ClusterConfig) -> bool:
    """Start a private local Ray instance, or join `cluster.address`; True if this call started Ray.

    If Ray is already initialised in this process (a test's `ray.cluster_utils.Cluster`, a notebook),
    that connection is used as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    env = dict(ACTOR_ENV)
    runtime_env = {"env_vars": env}
    if cluster.address:
        ray.init(address=cluster.address, runtime_env=runtime_env, log_to_driver=True)
        return True
    kwargs: dict[str, Any] = {
        "include_dashboard": cluster.dashboard,
        "dashboard_host": cluster.dashboard_host,
        "runtime_env": runtime_env,
    }
    if cluster.num_cpus is not None:
        kwargs["num_cpus"] = cluster.num_cpus
    if cluster.num_gpus is not None:
        kwargs["num_gpus"] = cluster.num_gpus
    if cluster.object_store_memory_gib is not None:
        kwargs["object_store_memory"] = int(cluster.object_store_memory_gib * 2**30)
    # Without an address ray.init would join a cluster found via RAY_ADDRESS or a running `ray start`;
    # "local" always starts a private instance.
    with _ray_on_loopback(is_loopback(cluster.bind_host)):
        ray.init(address="local", **kwargs)
    return True


RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's documented switch for single-machine (Windows/macOS) mode: off, a local instance takes 127.0.0.1
as its node address, and its GCS, raylet, workers, agents and monitor listen there only. Without it Ray
resolves even `_node_ip_address=127.0.0.1` to the machine's address and binds to all interfaces."""


@contextmanager
def _ray_on_loopback(enabled: bool) -> Iterator[None]:
    """While a local Ray instance starts: keep it on loopback (if `enabled`), then restore the settings.

    The processes Ray starts inherit the variable. This process read it when `ray._private.ray_constants`
    was imported, so the cached value is switched too.
    """
    import ray._private.ray_constants as constants

    if not enabled:
        yield
        return
    saved_env, saved_constant = os.environ.get(RAY_CLUSTER_SWITCH), constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTER_SWITCH], constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(RAY_CLUSTER_SWITCH)
        else:
            os.environ[RAY_CLUSTER_SWITCH] = saved_env


def resolve_device(cluster: ClusterConfig) -> str:
    import ray

    if cluster.device != "auto":
        return cluster.device
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def actor_threads(cluster: ClusterConfig, cpus: float) -> int:
    return cluster.threads_per_actor or max(1, math.ceil(cpus))


@dataclass
class Layout:
    """Where each actor goes: (placement group, bundle index) and what it requests inside it."""

    learner_groups: list[tuple[Any, int]]
    rollout_groups: list[tuple[Any, int]]
    """Per rollout worker: its placement group and the bundle its actor sits in."""
    learner_gpus: float
    rollout_gpus: float
    """GPUs each rollout worker actor takes itself (0 when vLLM's Ray workers take them)."""
    groups: list[Any]
    rollout_bundles: list[list[int]] = field(default_factory=list)
    """Per rollout worker on GPUs: the bundles whose GPUs its engine's tensor-parallel ranks use."""

    def rollout_env(self, worker: int) -> dict[str, str]:
        """Environment of rollout worker `worker`: the bundles vLLM's Ray executor places its ranks in."""
        bundles = self.rollout_bundles[worker] if self.rollout_bundles else []
        if len(bundles) <= 1:
            return {}
        return {"VLLM_RAY_BUNDLE_INDICES": ",".join(str(b) for b in bundles)}


def _bundle(cpus: float, gpus: float, extra: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": cpus, **extra}
    if gpus:
        bundle["GPU"] = gpus
    return bundle


def _wait_ready(group: Any, name: str, bundles: list[dict[str, float]]) -> None:
    import ray

    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_WAIT_SECONDS)
    if not ready:
        raise PlacementError(
            f"the {name} placement group ({len(bundles)} x {bundles[0]}) could not be placed within "
            f"{PLACEMENT_WAIT_SECONDS:.0f} s; the cluster has {ray.cluster_resources()}. Lower cluster.*_cpus, "
            "the worker/rank counts, or add nodes"
        )


def check_device_settings(cluster: ClusterConfig, tensor_parallel_size: int, device: str) -> None:
    """Settings that cannot work on `device`, refused before any actor starts (the message names the keys)."""
    from rlpost.config.errors import ConfigError

    if cluster.sync_transport == "ipc":
        check_ipc_settings(cluster, device)
    if device != "cuda" or cluster.placement != "colocated":
        return
    if cluster.sync_transport == "nccl":
        raise ConfigError(
            "cluster.placement: colocated with cluster.sync_transport: nccl cannot work on GPUs: learner rank i "
            "and rollout worker i share one GPU, and NCCL cannot put two ranks of a group on the same device; "
            "use sync_transport: ipc (CUDA IPC handles on the shared GPU, vLLM engines) or object_store, "
            "or placement: split"
        )
    if tensor_parallel_size != 1:
        raise ConfigError("cluster.placement: colocated needs rollout.vllm.tensor_parallel_size: 1 (one GPU per bundle)")


def check_ipc_settings(cluster: ClusterConfig, device: str) -> None:
    """`sync_transport: ipc` shares GPU memory between a learner rank and the engine on its GPU."""
    from rlpost.config.errors import ConfigError

    if device != "cuda":
        raise ConfigError(
            f"cluster.sync_transport: ipc needs cluster.device: cuda (this run computes on {device}): CUDA IPC "
            "shares GPU memory between processes; use sync_transport: object_store or nccl on the CPU"
        )
    if cluster.placement != "colocated":
        raise ConfigError(
            f"cluster.sync_transport: ipc needs cluster.placement: colocated (not {cluster.placement}): an engine "
            "opens the tensors of the learner rank on its own GPU, and only colocated placement puts one there; "
            "use sync_transport: nccl with placement: split"
        )


def make_layout(cluster: ClusterConfig, tensor_parallel_size: int, device: str) -> Layout:
    from ray.util.placement_group import placement_group

    gpu = device == "cuda"
    if cluster.placement == "split":
        learner_bundles = [_bundle(cluster.learner_cpus, 1 if gpu else 0, cluster.learner_resources)] * cluster.learner_ranks
        learner_pg = placement_group(learner_bundles, strategy=cluster.placement_strategy)
        _wait_ready(learner_pg, "learner", learner_bundles)
        width = tensor_parallel_size if gpu else 1
        rollout_bundles = rollout_bundle_specs(cluster, width, gpu)
        rollout_pg = placement_group(rollout_bundles, strategy=cluster.placement_strategy)
        _wait_ready(rollout_pg, "rollout", rollout_bundles)
        engines = [list(range(w * width, (w + 1) * width)) for w in range(cluster.num_rollout_workers)]
        return Layout(
            learner_groups=[(learner_pg, i) for i in range(cluster.learner_ranks)],
            rollout_groups=[(rollout_pg, bundles[0]) for bundles in engines],
            learner_gpus=1 if gpu else 0,
            rollout_gpus=1 if gpu and width == 1 else 0,
            groups=[learner_pg, rollout_pg],
            rollout_bundles=engines if gpu else [],
        )
    check_device_settings(cluster, tensor_parallel_size, device)
    extra = {**cluster.learner_resources, **cluster.rollout_resources}
    bundles = [_bundle(cluster.learner_cpus + cluster.rollout_cpus, 1 if gpu else 0, extra)] * cluster.learner_ranks
    group = placement_group(bundles, strategy=cluster.placement_strategy)
    _wait_ready(group, "colocated", bundles)
    return Layout(
        learner_groups=[(group, i) for i in range(cluster.learner_ranks)],
        rollout_groups=[(group, i) for i in range(cluster.num_rollout_workers)],
        learner_gpus=0.5 if gpu else 0,
        rollout_gpus=0.5 if gpu else 0,
        groups=[group],
    )


def rollout_bundle_specs(cluster: ClusterConfig, width: int, gpu: bool) -> list[dict[str, float]]:
    """The rollout placement group's bundles: `width` per worker (one GPU each on GPUs); the worker's
    CPUs sit in its first bundle."""
    specs = []
    for _ in range(cluster.num_rollout_workers):
        specs.append(_bundle(cluster.rollout_cpus, 1 if gpu else 0, cluster.rollout_resources))
        specs += [{"GPU": 1, **cluster.rollout_resources}] * (width - 1)
    return specs


def actor_options(group: Any, bundle: int, cpus: float, gpus: float, env: dict[str, str] | None = None,
                  **extra: Any) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if env:
        extra["runtime_env"] = {"env_vars": {**ACTOR_ENV, **env}}
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=True
        ),
        **extra,
    }


def remove_layout(layout: Layout | None) -> None:
    if layout is None:
        return
    from ray.util.placement_group import remove_placement_group

    for group in layout.groups:
        try:
            remove_placement_group(group)
        except Exception:
            log.debug("could not remove placement group", exc_info=True)

