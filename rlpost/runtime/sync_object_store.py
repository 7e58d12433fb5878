"""`cluster.sync_transport: object_store`: weights through Ray's object store (CPU and anywhere).

Learner rank 0 casts each tensor to the wire dtype and packs them into objects of at most
`cluster.sync_bucket_mb`, put into the object store at the end of the optimizer step; every engine
fetches the buckets when it is idle. One copy per version however many engines, and engines
synced at different times (async training) read the same objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from rlpost.runtime.transport import WeightHandle, WeightSync, WeightSyncError, wire_tensor


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


class ObjectStoreSync(WeightSync):
    name = ObjectStoreTransport.name

    def __init__(self, executor: Any):
        super().__init__(executor)
        self.published: WeightHandle | None = None

    def publish_with_step(self, version: int) -> int | None:
        return version

    def on_trained(self, outputs: list[dict[str, Any]]) -> float:
        self.published = outputs[0]["handle"]
        return self.published.seconds

    def on_resume(self, version: int) -> None:
        import ray

        self.published = ray.get([rank.publish.remote(version) for rank in self.executor.ranks])[0]

    def schedule(self) -> None:
        """Each idle engine behind the published version fetches it (engines sync independently)."""
        if self.published is None:
            return
        timeout = self.executor.cluster.sync_timeout_seconds
        for slot in self.executor.workers:
            if slot.alive and slot.task is None and slot.version < self.published.version:
                slot.task, slot.unit, slot.started = "sync", None, time.monotonic()
                slot.target_version = self.published.version
                slot.ref = slot.actor.update_weights.remote(self.published, timeout)
