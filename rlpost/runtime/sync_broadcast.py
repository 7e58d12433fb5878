"""`cluster.sync_transport: nccl`: learner rank 0 broadcasts every tensor to all engines at once.

A torch.distributed process group of learner rank 0 (root) and every engine, separate from the
learner's own group, built directly on a TCPStore so that it coexists with the learner's default
group and the engines' own groups; rebuilt when a worker restarts. NCCL on GPUs, gloo on the CPU
(tested). Its store listens on `cluster.bind_host` only (the root serves it on a socket bound
there: `rlpost.learner.distributed.rendezvous_store`). A broadcast runs when every live engine is
idle and no optimizer step runs; it has a deadline and fails naming the engine.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from rlpost.runtime.transport import TensorMeta, WeightSync, WeightSyncError, wire_tensor


def _dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


class BroadcastGroup:
    """A process group of rank 0 (learner rank 0, the root) and the engines (ranks 1..W)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_seconds: float, tag: str,
                 listener: socket.socket | None = None):
        """Join the group whose store is at host:port; the root (rank 0) serves it on `listener`."""
        import torch.distributed as dist

        from rlpost.learner.distributed import rendezvous_store

        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.timeout = datetime.timedelta(seconds=timeout_seconds)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        store = rendezvous_store(host, port, rank, world_size, listener, self.timeout)
        prefixed = dist.PrefixStore(f"rlpost-weights-{tag}", store)
        if backend == "gloo":
            self.group = dist.ProcessGroupGloo(prefixed, rank, world_size, self.timeout)
        elif backend == "nccl":  # GPU only: not tested on this machine
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = self.timeout
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
        else:
            raise ValueError(f"unknown broadcast backend {backend!r}")
        self._store = store  # the master's store must outlive the group

    def _broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        options.timeout = self.timeout
        work = self.group.broadcast([tensor], options)
        try:
            work.wait(self.timeout)
        except RuntimeError as exc:
            raise WeightSyncError(f"weight broadcast failed on group rank {self.rank}: {exc}") from exc

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> tuple[int, int]:
        """Root: broadcast every tensor in order; returns (tensors, bytes)."""
        count = nbytes = 0
        for _, tensor in named_tensors:
            out = wire_tensor(tensor, dtype).to(self.device)
            self._broadcast(out)
            count += 1
            nbytes += out.numel() * out.element_size()
        return count, nbytes

    def receive(self, meta: list[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
        """Engines: the broadcast tensors, in `meta` order (allocated on this group's device)."""
        for item in meta:
            tensor = torch.empty(item.shape, dtype=_dtype_of(item.dtype), device=self.device)
            self._broadcast(tensor)
            yield item.name, tensor

    def close(self) -> None:
        group, self.group = getattr(self, "group", None), None
        if group is not None and hasattr(group, "shutdown"):
            try:
                group.shutdown()
            except RuntimeError:
                pass


class BroadcastSync(WeightSync):
    name = "nccl"

    def __init__(self, executor: Any):
        super().__init__(executor)
        self.members: tuple | None = None
        self.epoch = 0
        self.meta = None

    def start(self) -> None:
        import ray

        executor = self.executor
        nodes = {slot.info["node_ip"] for slot in executor.workers} | {executor.rank_info[0]["node_ip"]}
        executor.check_loopback("learner rank 0 and the engines (sync_transport: nccl)", nodes)
        self.meta = ray.get([rank.weight_meta.remote() for rank in executor.ranks])[0]

    def _behind(self) -> list:
        newest = self.executor.published_version
        return [s for s in self.executor.workers if s.alive and newest is not None and s.version < newest]

    def blocks_training(self) -> bool:
        return bool(self._behind())

    def schedule(self) -> None:
        """Broadcast the newest version once every live engine is idle and the learner is not training."""
        import ray

        executor = self.executor
        alive = [slot for slot in executor.workers if slot.alive]
        if executor.training is not None or not self._behind() or any(slot.task is not None for slot in alive):
            return
        newest = executor.published_version
        self._ensure_group(alive)
        started = time.perf_counter()
        refs = [rank.broadcast_weights.remote() for rank in executor.ranks]
        worker_refs = [slot.actor.receive_broadcast.remote(self.meta, newest) for slot in alive]
        executor.await_sync(refs + worker_refs, alive, newest)
        for slot in alive:
            slot.version = newest
        elapsed = time.perf_counter() - started
        executor.times.sync += elapsed * len(alive)
        executor.times.learner += elapsed
        ray.get(refs)

    def _ensure_group(self, alive: list) -> None:
        import ray

        executor = self.executor
        members = tuple((slot.index, slot.restarts) for slot in alive)
        if members == self.members:
            return
        self.epoch += 1
        backend = "nccl" if executor.device == "cuda" else "gloo"
        host, port = ray.get(executor.ranks[0].broadcast_rendezvous.remote())
        world = len(alive) + 1
        timeout = executor.cluster.sync_timeout_seconds
        tag = str(self.epoch)
        refs = [rank.join_broadcast.remote(host, port, world, backend, timeout, tag) for rank in executor.ranks]
        refs += [slot.actor.join_broadcast.remote(host, port, i + 1, world, backend, timeout, tag)
                 for i, slot in enumerate(alive)]
        executor.await_sync(refs, alive, -1)
        self.members = members
