"""Weight sync: how the learner's weights reach every rollout engine, behind one interface.

`WeightSync` is what the Ray executor calls; each transport is one file:
`sync_object_store.py` (`cluster.sync_transport: object_store`), `sync_broadcast.py` (`nccl`) and
`sync_ipc.py` (`ipc`). This module holds what they share. Every transport moves (Hugging Face name,
tensor) pairs, one tensor at a time on the learner side (ZeRO-3 parameters are gathered layer by
layer by `Learner.named_weights`); object store and broadcast hand the engine an iterator for its
`update_weights(named_tensors, version)`, IPC hands a vLLM engine one bucket of handles per call.

- object store (CPU and anywhere): learner rank 0 casts each tensor to the wire dtype and
  packs them into objects of at most `bucket_bytes`, put into Ray's object store; the handle lists
  the object refs; each engine fetches the buckets one by one. One copy per version however many
  engines; engines synced at different times (async mode) read the same objects.
- broadcast (`cluster.sync_transport: nccl`): a torch.distributed process group of learner
  rank 0 (root) and every engine, separate from the learner's own group, built directly on a
  TCPStore so that it coexists with the learner's default group and the engines' own groups.
  Rank 0 broadcasts each tensor; engines receive into fresh tensors: a vLLM engine inside its own
  workers, which load each tensor as it arrives (`rlpost.rollout.vllm_weights`), other engines in
  the rollout actor. NCCL on GPUs (vLLM's PyNccl for vLLM engines; untested on this machine), gloo
  on the CPU (tested). Its store listens on `cluster.bind_host` only (the root serves it on a
  socket bound there: `rlpost.learner.distributed.rendezvous_store`).
- CUDA IPC (`cluster.sync_transport: ipc`; colocated vLLM engines on CUDA): every learner rank
  copies a bucket (`sync_bucket_mb`) of wire-dtype tensors on its own GPU and returns their CUDA
  IPC handles; the engine sharing that GPU opens them in its worker and loads them, bucket by
  bucket inside one update session. No copy through the object store. Untested on a GPU.

Every receive has a deadline: a stuck sync raises `WeightSyncError` (the runtime names the engine).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def wire_dtype(config: Any) -> torch.dtype:
    """The dtype weights travel in: `cluster.sync_dtype`, or the engines' `rollout.dtype` for `auto`."""
    choice = config.cluster.sync_dtype
    return DTYPES[config.rollout.dtype if choice == "auto" else choice]


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




class WeightSync:
    """The executor's side of a transport: publish after an optimizer step, bring engines up to date.

    `executor` is the `RayExecutor`: its learner `ranks`, rollout `workers` (slots with a `version`),
    `published_version` and `cluster` settings.
    """

    name = ""

    def __init__(self, executor: Any):
        self.executor = executor

    def start(self) -> None:
        """After the actors started: anything the transport sets up once."""

    def publish_with_step(self, version: int) -> int | None:
        """The version learner rank 0 publishes at the end of the optimizer step, or None."""
        del version
        return None

    def on_trained(self, outputs: list[dict[str, Any]]) -> float:
        """The ranks' step outputs arrived; seconds the learner spent publishing."""
        del outputs
        return 0.0

    def on_resume(self, version: int) -> None:
        """A checkpoint was loaded into the learner: make its weights the published `version`."""
        del version

    def blocks_training(self) -> bool:
        """Whether the next optimizer step must wait (rank 0 has a sync to serve first)."""
        return False

    def schedule(self) -> None:
        """Start syncs of engines behind `executor.published_version` (called every turn)."""
        raise NotImplementedError


class SyncWhileIdle(WeightSync):
    """A transport that updates engines while the learner ranks serve the weights: only when every live
    engine is idle and no optimizer step runs, and the next step waits for it (broadcast, CUDA IPC)."""

    def behind(self) -> list:
        """The live engines' slots behind the published version."""
        newest = self.executor.published_version
        return [s for s in self.executor.workers if s.alive and newest is not None and s.version < newest]

    def blocks_training(self) -> bool:
        return bool(self.behind())

    def idle(self) -> bool:
        """Whether the learner is not training and no live engine has a task."""
        executor = self.executor
        return executor.training is None and all(slot.task is None for slot in executor.workers if slot.alive)

    def synced(self, slots: list, version: int, seconds: float) -> None:
        """`slots` now hold `version`; the sync took `seconds` of every one of them and of the learner."""
        for slot in slots:
            slot.version = version
        self.executor.times.sync += seconds * len(slots)
        self.executor.times.learner += seconds
