"""The Ray actors: rollout workers, learner ranks, reward workers.

Plain classes; `rlpost.runtime.placement` turns them into Ray actors with resources and placement.
Each sets its environment (threads, DeepSpeed accelerator) before importing torch-heavy modules.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EngineFactory = Callable[[Any, str, int, int], Any]
"""(rollout_config, model_path, seed, worker_index) -> RolloutEngine; default: `rlpost.rollout.build_engine`."""


def default_engine_factory(rollout_config: Any, model_path: str, seed: int, worker_index: int,
                           sleep_mode: bool = False) -> Any:
    """`sleep_mode`: the engine shares its GPU with a learner rank (colocated placement)."""
    del worker_index
    from rlpost.rollout import build_engine

    return build_engine(rollout_config, model_path, seed=seed, sleep_mode=sleep_mode)


def _actor_environment(threads: int | None, device: str) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _node() -> dict[str, Any]:
    import ray

    return {"pid": os.getpid(), "node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}


def resolve_bind_host(bind_host: str) -> str:
    """`auto`: this node's Ray IP (multi-node); anything else as given (default loopback)."""
    if bind_host == "auto":
        import ray

        return ray.util.get_node_ip_address()
    return bind_host


# ------------------------------------------------------------------------------------- rollout


class RolloutWorker:
    """One rollout engine (`rollout.engine`), generating requests and loading published weights."""

    def __init__(self, index: int, config: Any, model_path: str, seed: int, threads: int | None, device: str,
                 engine_factory: EngineFactory | None = None):
        _actor_environment(threads, device)
        started = time.perf_counter()
        self.index = index
        self.config = config
        self.model_path = model_path
        sleep_mode = config.cluster.placement == "colocated" and device == "cuda"
        factory = engine_factory or functools.partial(default_engine_factory, sleep_mode=sleep_mode)
        self.engine = factory(config.rollout, model_path, seed, index)
        self.version = int(getattr(self.engine, "policy_version", 0))
        self.broadcast = None
        self.eval_rewards = None
        self.startup_seconds = time.perf_counter() - started
        self.asleep = False
        self.ipc_version: int | None = None
        """The version the open IPC weight-update session brings (error messages)."""

    def info(self) -> dict[str, Any]:
        """`weight_ranks`: ranks the engine takes in the broadcast weight group (its workers when they
        receive themselves, one per tensor-parallel rank; 1 when this actor receives)."""
        return {**_node(), "index": self.index, "version": self.version, "startup_seconds": self.startup_seconds,
                "engine": type(self.engine).__name__, "weight_ranks": self._receivers()}

    def _receives_in_engine(self) -> bool:
        return callable(getattr(self.engine, "join_weight_group", None))

    def _receivers(self) -> int:
        return int(getattr(self.engine, "weight_group_ranks", 1)) if self._receives_in_engine() else 1

    def describe(self) -> str:
        return f"rollout worker {self.index} ({type(self.engine).__name__}, pid {os.getpid()})"

    def generate(self, unit) -> dict[str, Any]:
        from rlpost.runtime.work import generate_unit

        started = time.perf_counter()
        groups = generate_unit(self.engine, unit, self.config.rollout)
        return {"groups": groups, "version": self.version, "seconds": time.perf_counter() - started}

    def update_weights(self, handle, timeout_seconds: float) -> dict[str, float]:
        """Load the weights of `handle` (object-store transport)."""
        from rlpost.runtime.sync_object_store import ObjectStoreTransport

        started = time.perf_counter()
        deadline = time.monotonic() + timeout_seconds
        self.engine.update_weights(ObjectStoreTransport.receive(handle, deadline), version=handle.version)
        self.version = handle.version
        return {"version": handle.version, "seconds": time.perf_counter() - started}

    # ---- broadcast transport
    def join_broadcast(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout: float, tag: str) -> None:
        """Join the weight group as ranks `rank`.. (`info()["weight_ranks"]` of them): inside the
        engine's workers when the engine receives itself (vLLM), else in this actor."""
        from rlpost.learner.distributed import bind_gloo_to
        from rlpost.runtime.sync_broadcast import BroadcastGroup

        bind_host = resolve_bind_host(self.config.cluster.bind_host)
        self.leave_broadcast()
        if self._receives_in_engine():
            self.engine.join_weight_group(host, port, rank, world_size, backend, timeout, tag, bind_host=bind_host)
            return
        if backend == "gloo":
            bind_gloo_to(bind_host)
        self.broadcast = BroadcastGroup(host, port, rank, world_size, backend, timeout, tag)

    def leave_broadcast(self) -> None:
        if self.broadcast is not None:
            self.broadcast.close()
            self.broadcast = None
        if self._receives_in_engine():
            self.engine.leave_weight_group()

    def receive_broadcast(self, meta, version: int) -> dict[str, float]:
        """Receive one broadcast of learner rank 0; the error of a failed or late receive names this worker
        (each tensor's receive is bounded by `cluster.sync_timeout_seconds`)."""
        from rlpost.runtime.transport import WeightSyncError

        started = time.perf_counter()
        try:
            if self._receives_in_engine():
                stats = self.engine.receive_broadcast(meta, version=version)
            elif self.broadcast is None:
                raise RuntimeError("no broadcast group joined")
            else:
                self.engine.update_weights(self.broadcast.receive(meta), version=version)
                stats = {}
        except Exception as exc:
            raise WeightSyncError(f"weight sync of version {version} to {self.describe()} failed: {exc}") from exc
        self.version = version
        return {**stats, "version": version, "seconds": time.perf_counter() - started}

    # ---- CUDA IPC transport (colocated vLLM engines on GPUs; untested on a GPU)
    def begin_ipc_update(self, version: int, names: list[str] | None = None) -> None:
        """Open the engine's weight-update session for `version` (`names`: every weight that will arrive)."""
        self.ipc_version = version
        self._sync_step("opening the session", lambda: self.engine.begin_weight_update(names))

    def load_ipc(self, payload: list[dict[str, Any]]) -> int:
        """Load one bucket of IPC handles (merged over the learner ranks) into the open session."""
        return self._sync_step("loading a bucket", lambda: self.engine.load_ipc_bucket(payload))

    def finish_ipc_update(self, version: int) -> dict[str, Any]:
        loaded = self._sync_step("closing the session", lambda: self.engine.finish_weight_update(version))
        self.version = version
        return {"version": version, "loaded": loaded}

    def _sync_step(self, what: str, step: Callable[[], Any]) -> Any:
        """Run one step of a weight sync; its error names this worker (and the version being synced)."""
        from rlpost.runtime.transport import WeightSyncError

        try:
            return step()
        except Exception as exc:
            raise WeightSyncError(f"weight sync of version {self.ipc_version} to {self.describe()} failed {what}: {exc}") from exc

    # ---- colocated placement on GPUs (vLLM sleep mode; not tested on this machine)
    def release_memory(self) -> bool:
        """Free the engine's GPU memory while the learner trains (an engine without sleep mode ignores it)."""
        sleep = getattr(self.engine, "sleep", None)
        if sleep is None or self.asleep:
            return False
        sleep(level=1)
        self.asleep = True
        return True

    def restore_memory(self) -> bool:
        if not self.asleep:
            return False
        self.engine.wake_up()
        self.asleep = False
        return True

    # ---- evaluation
    def evaluate(self, prompts, max_new_tokens: int, num_reward_workers: int) -> dict[str, float]:
        from rlpost.runtime.work import eval_rewards, evaluate_engine

        if self.eval_rewards is None:
            self.eval_rewards = eval_rewards(num_reward_workers)
        return evaluate_engine(self.engine, self.eval_rewards, prompts, max_new_tokens, self.version)

    def close(self) -> None:
        if self.eval_rewards is not None:
            self.eval_rewards.close()
        self.leave_broadcast()
        self.engine.close()


# ------------------------------------------------------------------------------------- rewards


class RewardWorker:
    """A RewardManager (with its own scoring processes) behind an actor."""

    def __init__(self, reward_config: Any):
        from rlpost.rewards.manager import RewardManager

        self.manager = RewardManager(reward_config)

    def score(self, groups) -> dict[str, Any]:
        started = time.perf_counter()
        metrics = self.manager.score(groups)
        return {"groups": groups, "metrics": metrics, "seconds": time.perf_counter() - started}

    def close(self) -> None:
        self.manager.close()


# ------------------------------------------------------------------------------------- learner


class LearnerRank:
    """One rank of the learner's torch.distributed group (DeepSpeed data parallel).

    Rank 0 exports the weights. Under ZeRO-3 every rank iterates `named_weights` (each gather is
    collective) and only rank 0 keeps the tensors.
    """

    def __init__(self, rank: int, world_size: int, config: Any, model_path: str, threads: int | None, device: str,
                 bind_host: str):
        _actor_environment(threads, device)
        self.rank = rank
        self.world_size = world_size
        self.config = config
        self.model_path = model_path
        self.device = device
        self.bind_host = resolve_bind_host(bind_host)
        self.learner = None
        self.broadcast = None
        self.meta = None
        # Rank 0 holds the listening sockets of the stores it will serve (bound to bind_host) from
        # the moment it announces their ports: no other process can take the port meanwhile.
        self.rendezvous_listener = None
        self.broadcast_listener = None
        # CUDA IPC transport: the weights' generator of the sync in progress, and the tensors of the
        # bucket the engines are loading (their IPC handles do not own the memory).
        self.ipc_stream: Iterator | None = None
        self.ipc_keep: list | None = None

    def info(self) -> dict[str, Any]:
        return {**_node(), "rank": self.rank}

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: the (address, port) of the group's rendezvous, listening on `cluster.bind_host` only."""
        from rlpost.learner.distributed import listening_socket

        self.rendezvous_listener = listening_socket(self.bind_host)
        return self.bind_host, self.rendezvous_listener.getsockname()[1]

    def setup(self, master_addr: str, master_port: int, needs_gradient_access: bool = False) -> dict[str, Any]:
        from rlpost.learner.distributed import join_process_group
        from rlpost.runtime.work import build_learner

        if self.device == "cuda":
            import torch

            torch.cuda.set_device(0)  # Ray gives each rank one GPU (CUDA_VISIBLE_DEVICES)
        listener, self.rendezvous_listener = self.rendezvous_listener, None
        join_process_group(master_addr, master_port, self.rank, self.world_size, listener)
        started = time.perf_counter()
        self.learner = build_learner(self.config, self.model_path)
        if needs_gradient_access:
            self.learner.check_gradient_access()
        return {"seconds": time.perf_counter() - started}

    def _zero3(self) -> bool:
        return self.config.learner.backend == "deepspeed" and self.config.learner.zero_stage == 3

    def _exporting(self) -> bool:
        return self.rank == 0 or self._zero3()

    def _weights(self, on_device: bool = False) -> Iterator:
        """Rank 0: the (name, tensor) pairs (with `on_device` left on the learner's device). Other ranks
        under ZeRO-3: take part in the gathers."""
        if self.rank == 0:
            yield from self.learner.named_weights(on_device)
        elif self._zero3():
            for _ in self.learner.named_weights(on_device):
                pass

    def train(self, request, publish_version: int | None) -> dict[str, Any]:
        """One optimizer step on this rank's shard; then (object-store transport) publish the new weights."""
        from rlpost.runtime.work import run_learner_request

        started = time.perf_counter()
        result = run_learner_request(self.learner, request)
        train_seconds = time.perf_counter() - started
        handle = self.publish(publish_version) if publish_version is not None else None
        return {"result": result, "seconds": train_seconds, "handle": handle}

    def publish(self, version: int):
        """Object-store transport: export the weights; rank 0 returns the handle."""
        if not self._exporting():
            return None
        from rlpost.runtime.sync_object_store import ObjectStoreTransport
        from rlpost.runtime.transport import wire_dtype

        handle = ObjectStoreTransport.publish(
            self._weights(), version, wire_dtype(self.config), self.config.cluster.sync_bucket_mb * 2**20
        )
        return handle if self.rank == 0 else None

    # ---- broadcast transport
    def broadcast_rendezvous(self) -> tuple[str, int]:
        """Rank 0: the (address, port) of the weight group's store, listening on `cluster.bind_host` only."""
        from rlpost.learner.distributed import listening_socket

        if self.broadcast_listener is not None:
            self.broadcast_listener.close()
        self.broadcast_listener = listening_socket(self.bind_host)
        return self.bind_host, self.broadcast_listener.getsockname()[1]

    def join_broadcast(self, host: str, port: int, world_size: int, backend: str, timeout: float, tag: str) -> None:
        """Rank 0 joins as the root of the weight group; other ranks have nothing to join."""
        if self.rank != 0:
            return
        from rlpost.runtime.sync_broadcast import BroadcastGroup

        self.leave_broadcast()
        listener, self.broadcast_listener = self.broadcast_listener, None
        self.broadcast = BroadcastGroup(host, port, 0, world_size, backend, timeout, tag, listener=listener)

    def leave_broadcast(self) -> None:
        if self.broadcast is not None:
            self.broadcast.close()
            self.broadcast = None

    def weight_meta(self):
        from rlpost.runtime.transport import weight_meta, wire_dtype

        if self.meta is None:
            meta = weight_meta(self._weights(), wire_dtype(self.config))
            self.meta = meta if self.rank == 0 else []
        return self.meta if self.rank == 0 else None

    def broadcast_weights(self) -> dict[str, float]:
        started = time.perf_counter()
        if self.rank == 0:
            if self.broadcast is None:
                raise RuntimeError("learner rank 0 has no broadcast group")
            from rlpost.runtime.transport import wire_dtype

            # NCCL sends GPU tensors: no host round trip (gloo's CPU tensors are on the device already).
            count, nbytes = self.broadcast.send(self._weights(on_device=True), wire_dtype(self.config))
        else:
            for _ in self._weights(on_device=True):
                pass
            count = nbytes = 0
        return {"tensors": count, "bytes": nbytes, "seconds": time.perf_counter() - started}

    # ---- CUDA IPC transport (colocated engines on GPUs; untested on a GPU)
    def ipc_bucket(self, bucket_bytes: int) -> list[dict[str, Any]] | None:
        """This rank's next bucket of the weights as IPC entries keyed by its GPU's uuid
        (`rlpost.runtime.sync_ipc.ipc_buckets`), or None once they are exhausted (the sync's state is
        then dropped). Every rank runs this in step: ZeRO-3's gathers are collective, and with
        stages 0-2 each rank holds the full weights for the engine on its GPU. The previous bucket is
        dropped first: the engines returned from loading it, after synchronising their streams."""
        import torch

        from rlpost.runtime.sync_ipc import ipc_buckets
        from rlpost.runtime.transport import wire_dtype

        self.ipc_keep = None
        if self.ipc_stream is None:
            if self.device != "cuda":
                raise RuntimeError(f"cluster.sync_transport: ipc needs CUDA; learner rank {self.rank} runs on {self.device}")
            index = torch.cuda.current_device()
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            self.ipc_stream = ipc_buckets(self.learner.named_weights(on_device=True), bucket_bytes, wire_dtype(self.config),
                                          torch.device("cuda", index), uuid)
        bucket = next(self.ipc_stream, None)
        if bucket is None:
            self.ipc_release()
            return None
        entries, self.ipc_keep = bucket
        torch.cuda.current_stream().synchronize()  # the copies are complete before another process reads them
        return entries

    def ipc_release(self) -> None:
        """Drop the kept bucket and the weights' generator (after a sync, or what a failed one left)."""
        self.ipc_keep = None
        stream, self.ipc_stream = self.ipc_stream, None
        if stream is not None:
            stream.close()

    # ---- checkpoints and export
    def save_state(self, folder: str, with_reference: bool) -> None:
        """Rank 0 writes (all ranks under ZeRO >= 1, whose DeepSpeed checkpoint is per rank)."""
        from rlpost.runtime.work import REFERENCE_FILE

        zero = self.config.learner.backend == "deepspeed" and self.config.learner.zero_stage > 0
        if self.rank == 0 or zero:
            self.learner.save_state(Path(folder) / "learner")
        if self.rank == 0 and with_reference and self.learner.reference is not None:
            self.learner.save_reference(Path(folder) / REFERENCE_FILE)

    def load_state(self, folder: str) -> None:
        from rlpost.runtime.work import REFERENCE_FILE

        self.learner.load_state(Path(folder) / "learner")
        if (Path(folder) / REFERENCE_FILE).is_file():
            self.learner.load_reference(Path(folder) / REFERENCE_FILE)

    def objective_state(self) -> dict:
        return self.learner.objective.state_dict()

    def load_objective_state(self, state: dict) -> None:
        self.learner.objective.load_state_dict(state)

    def steps_taken(self) -> int:
        return self.learner.steps_taken

    def weights_checksum(self) -> float:
        """Sum of |w| over every policy weight: equal on every rank when data parallelism works."""
        from rlpost.runtime.transport import weights_checksum

        return weights_checksum(self.learner.named_weights())

    def export_hf(self, folder: str) -> None:
        if self.rank == 0:
            from transformers import AutoTokenizer

            self.learner.export_hf(Path(folder), AutoTokenizer.from_pretrained(self.model_path))
        elif self._zero3():
            for _ in self.learner.named_weights():
                pass

    def close(self) -> None:
        self.leave_broadcast()
        self.ipc_release()
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
