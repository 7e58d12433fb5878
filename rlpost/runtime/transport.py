"""Weight sync transports: how the learner's weights reach every rollout engine.

Both move (Hugging Face name, tensor) pairs, one tensor at a time on the learner side (ZeRO-3
parameters are gathered layer by layer by `Learner.named_weights`), and hand the engine an
iterator for its `update_weights(named_tensors, version)`.

- `ObjectStoreTransport` (CPU and anywhere): learner rank 0 casts each tensor to the wire dtype and
  packs them into objects of at most `bucket_bytes`, put into Ray's object store; the handle lists
  the object refs; each engine fetches the buckets one by one. One copy per version however many
  engines; engines synced at different times (async mode) read the same objects.
- `BroadcastGroup` (`cluster.sync_transport: nccl`): a torch.distributed process group of learner
  rank 0 (root) and every engine, separate from the learner's own group, built directly on a
  TCPStore so that it coexists with the learner's default group and the engines' own groups.
  Rank 0 broadcasts each tensor; engines receive into fresh tensors. NCCL on GPUs (untested on
  this machine), gloo on the CPU (tested). Its store listens on `cluster.bind_host` only (the root
  serves it on a socket bound there: `rlpost.learner.distributed.rendezvous_store`).

Every receive has a deadline: a stuck sync raises `WeightSyncError` (the runtime names the engine).
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class WeightSyncError(RuntimeError):
    """A weight sync failed or did not finish in time."""


@dataclass
class WeightHandle:
    """One published version of the policy weights."""

    version: int
    transport: str
    refs: list[Any] = field(default_factory=list)
    """Object-store transport: refs of the weight buckets (dicts name -> tensor), in order."""
    num_tensors: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    """Time the learner spent exporting (gather + cast + put)."""


def wire_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """CPU, contiguous, floating tensors cast to `dtype` (None keeps the dtype)."""
    out = tensor.detach()
    if dtype is not None and out.is_floating_point() and out.dtype != dtype:
        out = out.to(dtype)
    return out.to("cpu").contiguous()


class ObjectStoreTransport:
    """Learner side: `publish`; engine side: `receive` (both need a connected Ray worker)."""

    name = "object_store"

    @staticmethod
    def publish(named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, dtype: torch.dtype | None, bucket_bytes: int) -> WeightHandle:
        import ray

        started = time.perf_counter()
        handle = WeightHandle(version=version, transport=ObjectStoreTransport.name)
        bucket: dict[str, torch.Tensor] = {}
        size = 0
        for name, tensor in named_tensors:
            out = wire_tensor(tensor, dtype)
            nbytes = out.numel() * out.element_size()
            if bucket and size + nbytes > bucket_bytes:
                handle.refs.append(ray.put(bucket))
                bucket, size = {}, 0
            if out.data_ptr() == tensor.data_ptr() and out.untyped_storage().nbytes() != nbytes:
                out = out.clone()  # a view of a bigger storage would ship the whole storage
            bucket[name] = out
            size += nbytes
            handle.num_tensors += 1
            handle.nbytes += nbytes
        if bucket:
            handle.refs.append(ray.put(bucket))
        handle.seconds = time.perf_counter() - started
        return handle

    @staticmethod
    def receive(handle: WeightHandle, deadline: float) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors of `handle`, bucket by bucket; raises `WeightSyncError` past `deadline` (time.monotonic)."""
        import ray
        from ray.exceptions import GetTimeoutError

        for index, ref in enumerate(handle.refs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WeightSyncError(f"timed out fetching weight bucket {index + 1}/{len(handle.refs)} of version {handle.version}")
            try:
                bucket = ray.get(ref, timeout=remaining)
            except GetTimeoutError:
                raise WeightSyncError(
                    f"timed out fetching weight bucket {index + 1}/{len(handle.refs)} of version {handle.version}"
                ) from None
            yield from bucket.items()


def weights_checksum(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
    """Sum of |w| over the tensors in their order (fp64): compares what a learner sent and an engine received."""
    total = 0.0
    for _, tensor in named_tensors:
        total += float(tensor.double().abs().sum())
    return total


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str


def weight_meta(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> list[TensorMeta]:
    """What receivers allocate for a broadcast (names, shapes, wire dtypes), in send order."""
    return [
        TensorMeta(name, tuple(tensor.shape), str(dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype))
        for name, tensor in named_tensors
    ]


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
