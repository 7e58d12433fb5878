"""`cluster.sync_transport: ipc`: colocated vLLM engines on CUDA open the learner's tensors through CUDA IPC handles.

With `placement: colocated` learner rank i and rollout worker i share bundle i and its GPU. A sync runs
when every live engine is idle, no optimizer step runs and some engine is behind the published version:

1. every engine behind opens one weight-update session (`VLLMEngine.begin_weight_update`; the names
   `start` read from the learner are checked against the checkpoint before anything is loaded);
2. bucket by bucket: every learner rank copies its next tensors (at least `cluster.sync_bucket_mb`,
   one tensor more at most), cast to the wire dtype, into fresh tensors on its own GPU and returns
   their IPC handles keyed by its GPU's uuid (`LearnerRank.ipc_bucket`, built by `ipc_buckets`). All
   ranks advance together, as ZeRO-3's gathers are collective. `merge_ipc_parts` joins the ranks'
   entries into one per tensor holding every rank's handle; each engine's worker opens the handle of
   its own GPU, loads the tensors and synchronises its stream before it returns, so the ranks may
   then drop the bucket (on their next call);
3. every engine closes its session and takes the version; the ranks drop their last bucket
   (`LearnerRank.ipc_release`, also sent after a failure).

Memory: one bucket per rank on top of the learner's own, no copy through the host or the object
store (`named_weights(on_device=True)` leaves each tensor on the learner's GPU; the bucket holds a
copy in the wire dtype). The bucket of a rank that does not answer within
`cluster.sync_timeout_seconds` fails the sync naming the rank; an engine's failure names the engine.

**Untested on a GPU**: the orchestration is tested with stand-in actors, the bucketing, handles and
rebuild on CPU tensors (`reduce_tensor` shares CPU storage through a file descriptor); CUDA handles
have not run on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from rlpost.runtime.transport import SyncWhileIdle, WeightSyncError

IpcEntry = dict[str, Any]
"""One tensor of a payload: name, dtype, shape and `handles` {GPU uuid: (rebuild, args)} (`rlpost.rollout.vllm_weights.ipc_payload`)."""

Wait = Callable[[list[Any], float], list[int]]
"""Waits at most the seconds given for the calls behind the refs; returns the positions still running."""

Get = Callable[[Any], Any]
"""The result of a finished call (raises the call's error)."""


def wire_copy(tensor: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """A fresh contiguous copy on `device`, floating tensors cast to `dtype`. Always a copy: a ZeRO-3
    parameter gathered for the yield is freed when the weights' generator moves on."""
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    return tensor.detach().to(device=device, dtype=target, copy=True).contiguous()


def ipc_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int, dtype: torch.dtype | None,
                device: torch.device, device_uuid: str) -> Iterator[tuple[list[IpcEntry], list[torch.Tensor]]]:
    """The learner side of a sync: the tensors copied (`wire_copy`) in buckets that close once they hold
    `bucket_bytes` (so at most one tensor more), each as `ipc_payload`'s (entries, tensors to keep
    alive). Nothing is pulled from `named_tensors` before the caller asks for the next bucket."""
    from rlpost.rollout.vllm_weights import ipc_payload

    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        out = wire_copy(tensor, dtype, device)
        bucket.append((name, out))
        size += out.numel() * out.element_size()
        if size >= bucket_bytes:
            payload = ipc_payload(bucket, device_uuid)
            bucket, size = [], 0  # the caller alone holds the bucket from here on
            yield payload
    if bucket:
        yield ipc_payload(bucket, device_uuid)


def merge_ipc_parts(parts: list[list[IpcEntry] | None]) -> list[IpcEntry] | None:
    """One entry per tensor holding every rank's handle, from each rank's bucket (`parts[r]`: rank r's
    entries, or None once its weights are exhausted). None when every rank is done. Every rank must send
    the same tensors in the same order; the first mismatch is named."""
    done = [rank for rank, part in enumerate(parts) if part is None]
    if len(done) == len(parts):
        return None
    if done:
        busy = next(rank for rank, part in enumerate(parts) if part is not None)
        raise WeightSyncError(f"learner ranks out of step in the IPC weight sync: rank {done[0]} has no more "
                              f"weights while rank {busy} sent {parts[busy][0]['name']!r}")
    first: list[IpcEntry] = parts[0]  # type: ignore[assignment]
    merged = [{**entry, "handles": dict(entry["handles"])} for entry in first]
    for rank, part in enumerate(parts[1:], start=1):
        _check_same_tensors(first, part, rank)  # type: ignore[arg-type]
        for entry, theirs in zip(merged, part, strict=True):  # type: ignore[arg-type]
            _add_handles(entry, theirs["handles"], rank)
    return merged


def _tensor_key(entries: list[IpcEntry], index: int) -> tuple[str, str, list[int]] | None:
    """(name, dtype, shape) of the `index`-th entry, None past the end."""
    if index >= len(entries):
        return None
    entry = entries[index]
    return entry["name"], entry["dtype"], [int(d) for d in entry["shape"]]


def _check_same_tensors(first: list[IpcEntry], other: list[IpcEntry], rank: int) -> None:
    for index in range(max(len(first), len(other))):
        ours, theirs = _tensor_key(first, index), _tensor_key(other, index)
        if ours != theirs:
            raise WeightSyncError(
                f"learner ranks disagree on tensor {index} of an IPC weight bucket: rank 0 sent {ours}, "
                f"rank {rank} sent {theirs}"
            )


def _add_handles(entry: IpcEntry, handles: dict[str, Any], rank: int) -> None:
    shared = sorted(set(handles) & set(entry["handles"]))
    if shared:
        raise WeightSyncError(f"learner rank {rank} exports {entry['name']!r} from GPU {shared[0]}, "
                              "which an earlier rank already uses: colocated ranks need a GPU each")
    entry["handles"].update(handles)


def ray_pending(refs: list[Any], timeout: float) -> list[int]:
    import ray

    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    return [refs.index(ref) for ref in pending]


def ray_get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


class IpcSync(SyncWhileIdle):
    """Syncs every engine behind at once, bucket by bucket (see the module docstring).

    `wait` and `get` reach the actors' results (Ray's by default; the tests pass plain stand-ins).
    """

    name = "ipc"

    def __init__(self, executor: Any, wait: Wait = ray_pending, get: Get = ray_get):
        super().__init__(executor)
        self.wait = wait
        self.get = get
        self.names: list[str] | None = None

    def start(self) -> None:
        """Read the weights' names once (every rank takes part: ZeRO-3's gathers are collective)."""
        metas = self.get([rank.weight_meta.remote() for rank in self.executor.ranks])
        self.names = [meta.name for meta in metas[0]]

    def schedule(self) -> None:
        """Sync the engines behind once every live engine is idle and the learner is not training."""
        executor = self.executor
        targets = self.behind()
        if not self.idle() or not targets:
            return
        newest = executor.published_version
        started = time.perf_counter()
        finished = False
        try:
            self._call(targets, newest, "ipc_release", "begin_ipc_update", (), (newest, self.names))
            while self._send_bucket(targets, newest):
                pass
            self._call(targets, newest, "ipc_release", "finish_ipc_update", (), (newest,))
            finished = True
        finally:
            if not finished:
                # Not awaited: a rank stuck in its bucket runs this after it, and the sync has failed anyway.
                for rank in executor.ranks:
                    rank.ipc_release.remote()
        self.synced(targets, newest, time.perf_counter() - started)

    def _call(self, targets: list, version: int, rank_method: str, engine_method: str, rank_args: tuple,
              engine_args: tuple) -> None:
        """One call on every rank and every engine in `targets`, awaited together (errors name who failed)."""
        refs = [getattr(rank, rank_method).remote(*rank_args) for rank in self.executor.ranks]
        refs += [getattr(slot.actor, engine_method).remote(*engine_args) for slot in targets]
        self.executor.await_sync(refs, targets, version)

    def _send_bucket(self, targets: list, version: int) -> bool:
        """The ranks' next bucket, loaded by every engine in `targets`; False once the weights are exhausted."""
        bucket_bytes = self.executor.cluster.sync_bucket_mb * 2**20
        refs = [rank.ipc_bucket.remote(bucket_bytes) for rank in self.executor.ranks]
        payload = merge_ipc_parts(self._parts(refs, version))
        if payload is None:
            return False
        loads = [slot.actor.load_ipc.remote(payload) for slot in targets]
        # The ranks' refs have finished: listed first, as `await_sync` expects, they cost no wait.
        self.executor.await_sync(refs + loads, targets, version)
        return True

    def _parts(self, refs: list[Any], version: int) -> list[list[IpcEntry] | None]:
        """Every rank's bucket, within `cluster.sync_timeout_seconds`; an error names the rank."""
        timeout = self.executor.cluster.sync_timeout_seconds
        pending = self.wait(refs, timeout)
        if pending:
            raise WeightSyncError(
                f"learner rank {pending[0]} did not export its IPC weight bucket of version {version} within "
                f"{timeout:.0f} s (cluster.sync_timeout_seconds)"
            )
        parts = []
        for rank, ref in enumerate(refs):
            try:
                parts.append(self.get(ref))
            except Exception as exc:
                raise WeightSyncError(f"learner rank {rank} failed to export an IPC weight bucket of version "
                                      f"{version}: {exc}") from exc
        return parts
