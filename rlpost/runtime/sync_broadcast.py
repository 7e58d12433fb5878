"""`cluster.sync_transport: nccl`: learner rank 0 broadcasts every tensor to all engines at once.

A process group of learner rank 0 (root) and every engine, separate from the learner's own group,
built directly on a TCPStore so that it coexists with the learner's default group and the engines'
own groups; rebuilt when a worker restarts. Its store listens on `cluster.bind_host` only (the root
serves it on a socket bound there: `rlpost.learner.distributed.rendezvous_store`). A broadcast runs
when every live engine is idle and no optimizer step runs; it has a deadline and fails naming the
engine.

Who receives: an engine with `join_weight_group` / `receive_broadcast` (vLLM) receives inside its
own workers, one group rank per tensor-parallel worker, and loads each tensor as it arrives
(`rlpost.rollout.vllm_weights`); any other engine (HF) receives in the rollout actor and gets an
iterator for `update_weights`. The group's backend (`group_backend`): gloo on the CPU (tested,
in-worker included); on CUDA vLLM's `PyNcclCommunicator` over a `StatelessProcessGroup` when the
engines are vLLM (`pynccl`: what vLLM's workers are built to host), torch's `ProcessGroupNCCL`
otherwise (`nccl`). Neither CUDA backend has run on this machine.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from rlpost.runtime.transport import SyncWhileIdle, TensorMeta, WeightSyncError

GROUP_BACKENDS = ("gloo", "nccl", "pynccl")


def _dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def group_backend(device: str, engine: str) -> str:
    """The weight group's backend: gloo on the CPU; on CUDA vLLM's PyNccl when the engines are vLLM
    (their workers receive), torch's NCCL otherwise (the rollout actors receive)."""
    if device != "cuda":
        return "gloo"
    return "pynccl" if engine == "vllm" else "nccl"


def group_ranks(widths: list[int]) -> tuple[list[int], int]:
    """First group rank of each engine (rank 0 is learner rank 0) and the group's size, when engine
    i takes `widths[i]` ranks (its tensor-parallel workers when they receive themselves, else 1)."""
    firsts, next_rank = [], 1
    for width in widths:
        firsts.append(next_rank)
        next_rank += width
    return firsts, next_rank


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
        if backend not in GROUP_BACKENDS:
            raise ValueError(f"unknown broadcast backend {backend!r}; one of {GROUP_BACKENDS}")
        self.device = torch.device("cpu") if backend == "gloo" else torch.device("cuda", torch.cuda.current_device())
        store = rendezvous_store(host, port, rank, world_size, listener, self.timeout)
        prefixed = dist.PrefixStore(f"rlpost-weights-{tag}", store)
        if backend == "gloo":
            self.group = dist.ProcessGroupGloo(prefixed, rank, world_size, self.timeout)
        elif backend == "nccl":  # GPU only: not tested on this machine
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = self.timeout
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
        else:  # pynccl, GPU only: not tested on this machine
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            stateless = StatelessProcessGroup(rank=rank, world_size=world_size, store=prefixed)
            self.group = PyNcclCommunicator(stateless, device=self.device)
        self._store = store  # the master's store must outlive the group

    def _broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        if self.backend == "pynccl":
            # No timeout of its own: a stuck broadcast is bounded by the runtime's sync deadline.
            self.group.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
            return
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
            out = tensor.detach()
            if dtype is not None and out.is_floating_point() and out.dtype != dtype:
                out = out.to(dtype)
            out = out.to(self.device).contiguous()  # a CUDA tensor stays on its GPU (no host round trip)
            self._broadcast(out)
            count += 1
            nbytes += out.numel() * out.element_size()
        if self.device.type == "cuda":
            torch.cuda.current_stream().synchronize()
        return count, nbytes

    def receive(self, meta: list[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
        """Engines: the broadcast tensors, in `meta` order (allocated on this group's device)."""
        for item in meta:
            tensor = torch.empty(item.shape, dtype=_dtype_of(item.dtype), device=self.device)
            self._broadcast(tensor)
            yield item.name, tensor

    def close(self) -> None:
        group, self.group = getattr(self, "group", None), None
        stop = getattr(group, "shutdown", None) or getattr(group, "destroy", None)
        if stop is not None:
            try:
                stop()
            except RuntimeError:
                pass


class BroadcastSync(SyncWhileIdle):
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

    def schedule(self) -> None:
        """Broadcast the newest version once every live engine is idle and the learner is not training."""
        import ray

        executor = self.executor
        if not self.idle() or not self.behind():
            return
        alive = [slot for slot in executor.workers if slot.alive]
        newest = executor.published_version
        self._ensure_group(alive)
        started = time.perf_counter()
        refs = [rank.broadcast_weights.remote() for rank in executor.ranks]
        worker_refs = [slot.actor.receive_broadcast.remote(self.meta, newest) for slot in alive]
        executor.await_sync(refs + worker_refs, alive, newest)
        self.synced(alive, newest, time.perf_counter() - started)
        ray.get(refs)

    def _ensure_group(self, alive: list) -> None:
        import ray

        executor = self.executor
        members = tuple((slot.index, slot.restarts) for slot in alive)
        if members == self.members:
            return
        self.epoch += 1
        backend = group_backend(executor.device, executor.config.rollout.engine)
        host, port = ray.get(executor.ranks[0].broadcast_rendezvous.remote())
        firsts, world = group_ranks([int(slot.info.get("weight_ranks", 1)) for slot in alive])
        timeout = executor.cluster.sync_timeout_seconds
        tag = str(self.epoch)
        refs = [rank.join_broadcast.remote(host, port, world, backend, timeout, tag) for rank in executor.ranks]
        refs += [slot.actor.join_broadcast.remote(host, port, first, world, backend, timeout, tag)
                 for first, slot in zip(firsts, alive, strict=True)]
        executor.await_sync(refs, alive, -1)
        self.members = members
