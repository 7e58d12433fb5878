"""Weight updates inside vLLM's workers, tensor by tensor, without files.

`WeightReloadExtension` is mixed into vLLM's worker class (`LLM(worker_extension_cls=...)`); its
`rlpost_*` methods run inside each worker (in the engine's process with `multiprocessing: false`,
in the worker process otherwise) and are called through `LLM.collective_rpc`. Every update is one
session of vLLM's layerwise reload, the machinery behind `Worker.reload_weights` and behind vLLM's
own weight-transfer engines (`vllm.distributed.weight_transfer`: `start_weight_update`,
`update_weights`, `finish_weight_update`): `initialize_layerwise_reload(model)`, then
`model.load_weights` for each tensor as it arrives (a layer is re-processed, on the CPU re-packed
into oneDNN handles, once all its tensors are in), then `finalize_layerwise_reload`. The tensors
come from one of three sources:

- `rlpost_receive_broadcast`: the weight group of learner rank 0 and the engines
  (`cluster.sync_transport: nccl`). Each worker joins it itself (`rlpost_join_weight_group`, one
  group rank per tensor-parallel worker) and receives every tensor into a fresh buffer on its own
  device, loads it and drops it: at most one tensor in flight, nothing staged on the host. The
  group is `rlpost.runtime.sync_broadcast.BroadcastGroup` on a TCPStore served by learner rank 0:
  gloo on the CPU (tested here), on CUDA vLLM's `PyNcclCommunicator` over a `StatelessProcessGroup`
  (vLLM's recommended data plane between a trainer and its workers; not run here).
- `rlpost_load_safetensors`: buckets serialised with `safetensors.torch.save` and passed as bytes
  in the RPC (the object-store transport; tensors inside RPC arguments would arrive as lists).
- `rlpost_load_ipc`: CUDA IPC handles of tensors a colocated learner rank holds on the same GPU
  (`ipc_payload` builds them, `rebuild_ipc_tensor` opens them), one bucket per call inside a
  begin/finish session (`cluster.sync_transport: ipc`, driven by `rlpost.runtime.sync_ipc`): no copy
  through the host or the object store. CUDA only; the handles and the load ran here on CPU
  tensors only, the CUDA path is untested on a GPU.

vLLM 0.32 also ships this lifecycle as an API (`weight_transfer_config`, backends `nccl` and
`ipc`). rlpost uses its building blocks (the layerwise reload, `StatelessProcessGroup`,
`PyNcclCommunicator`, the IPC handle format) but not the engines themselves: their NCCL engine
cannot run on the CPU and has no timeout, the sender would have to be vLLM's trainer engine, and
the CPU needs the tied-head repack below, so one code path serves the CPU tests and the GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

TensorSpec = tuple[str, str, list[int], str | None]
"""What the worker receives, per tensor, in send order: (wire name, dtype, shape, name to load it
as, or None to receive and drop it, e.g. a tied `lm_head.weight`)."""


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


class WeightReloadExtension:
    """Mixed into vLLM's worker class; runs inside the worker.

    Methods are prefixed `rlpost_` so they cannot clash with the worker's own attributes.
    """

    # ------------------------------------------------------------------ one update session

    def rlpost_begin_update(self) -> None:
        """Start a layerwise reload: each layer is processed once all its tensors have arrived."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with _vllm_config(self):
            initialize_layerwise_reload(self.model_runner.get_model())  # type: ignore[attr-defined]
        self.rlpost_loaded = 0

    def rlpost_finish_update(self) -> int:
        """Finish the reload (layers that got no tensors keep their weights); returns the tensors loaded."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        worker: Any = self
        with _vllm_config(worker), _quiet_expected_reload_warnings():
            finalize_layerwise_reload(worker.model_runner.get_model(), worker.model_config)
        _repack_tied_lm_head(worker)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            getattr(worker.model_runner, reset, lambda: None)()
        return int(getattr(worker, "rlpost_loaded", 0))

    def rlpost_load_tensors(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load (name, tensor) pairs one at a time into the session; returns how many."""
        worker: Any = self
        model = worker.model_runner.get_model()
        dtype = worker.model_config.dtype
        count = 0
        with _vllm_config(worker), _quiet_expected_reload_warnings():
            for name, tensor in named_tensors:
                model.load_weights([(name, tensor.to(dtype) if tensor.is_floating_point() else tensor)])
                count += 1
        worker.rlpost_loaded = getattr(worker, "rlpost_loaded", 0) + count
        return count

    def rlpost_update(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """A whole session over `named_tensors`. On an error the session is closed (layers that got no
        tensor keep their old weights) and the error raised."""
        self.rlpost_begin_update()
        try:
            self.rlpost_load_tensors(named_tensors)
        except BaseException:
            self.rlpost_finish_update()
            raise
        return self.rlpost_finish_update()

    # ------------------------------------------------------------------ sources

    def rlpost_load_safetensors(self, data: bytes) -> int:
        """Load one bucket serialised by `safetensors.torch.save` (inside a begin/finish session)."""
        from safetensors.torch import load

        return self.rlpost_load_tensors(load(data).items())

    def rlpost_load_safetensors_file(self, path: str) -> int:
        """Load one bucket from a safetensors file on this host (memory-mapped; inside a begin/finish session)."""
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as bucket:
            return self.rlpost_load_tensors((name, bucket.get_tensor(name)) for name in bucket.keys())

    def rlpost_join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str,
                                 timeout: float, tag: str, bind_host: str | None) -> int:
        """Join learner rank 0's weight group as rank `first_rank` + this worker's rank; returns it."""
        from rlpost.runtime.sync_broadcast import BroadcastGroup

        worker: Any = self
        self.rlpost_leave_weight_group()
        if backend == "gloo" and bind_host is not None:
            from rlpost.learner.distributed import bind_gloo_to

            bind_gloo_to(bind_host)
        rank = first_rank + int(worker.rank)
        worker.rlpost_group = BroadcastGroup(host, port, rank, world_size, backend, timeout, tag)
        worker.rlpost_receives = 0
        return rank

    def rlpost_leave_weight_group(self) -> None:
        group = getattr(self, "rlpost_group", None)
        if group is not None:
            group.close()
        self.rlpost_group = None

    def rlpost_receive_broadcast(self, specs: list[TensorSpec], checksum: bool = False) -> dict[str, float]:
        """Receive every tensor of one broadcast from the weight group and load it as it arrives.

        Returns the tensors received and loaded and, if asked, the sum of |w| over every received
        tensor (fp64, in send order, as `rlpost.runtime.transport.weights_checksum` computes it).
        """
        group = getattr(self, "rlpost_group", None)
        if group is None:
            raise RuntimeError("the vLLM worker has not joined a weight group (rlpost_join_weight_group)")
        stats = {"received": 0, "loaded": 0, "checksum": 0.0}

        def received() -> Iterator[tuple[str, torch.Tensor]]:
            for spec, (_, tensor) in zip(specs, group.receive(_specs_as_meta(specs)), strict=True):
                stats["received"] += 1
                if checksum:
                    stats["checksum"] += float(tensor.double().abs().sum())
                if spec[3] is not None:
                    yield spec[3], tensor

        stats["loaded"] = self.rlpost_update(received())
        self.rlpost_receives = getattr(self, "rlpost_receives", 0) + 1
        return stats

    def rlpost_load_ipc(self, payload: list[dict[str, Any]]) -> int:
        """Open the CUDA IPC handles of `payload` (see `ipc_payload`) on this worker's GPU and load each
        tensor into the open session (`rlpost_begin_update`); returns how many. The stream is
        synchronised before returning: the sender frees its tensors once every engine has returned.
        Untested on a GPU."""
        worker: Any = self
        device = getattr(worker, "device", torch.device("cpu"))
        if device.type != "cuda":
            raise RuntimeError(f"CUDA IPC weight loading needs a CUDA worker; this one runs on {device}")
        uuid = str(torch.cuda.get_device_properties(device.index).uuid)
        count = self.rlpost_load_tensors((entry["name"], rebuild_ipc_tensor(entry, uuid, device.index)) for entry in payload)
        torch.cuda.current_stream().synchronize()
        return count

    def rlpost_worker_info(self) -> dict[str, Any]:
        """Where this worker runs and how many broadcasts it received (tests and diagnostics)."""
        return {"pid": os.getpid(), "rank": int(getattr(self, "rank", 0)), "receives": getattr(self, "rlpost_receives", 0)}


def _specs_as_meta(specs: list[TensorSpec]) -> list[Any]:
    from rlpost.runtime.transport import TensorMeta

    return [TensorMeta(str(name), tuple(int(d) for d in shape), str(dtype)) for name, dtype, shape, _ in specs]


# ---------------------------------------------------------------------------------- CUDA IPC


def ipc_payload(named_tensors: Iterable[tuple[str, torch.Tensor]], device_uuid: str) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """The sender's side of a CUDA IPC update: one entry per tensor (name, dtype, shape and
    `{device_uuid: reduce_tensor args}`), and the contiguous tensors the handles point to, which the
    caller must keep alive until every engine has loaded them (the handles do not own the memory).

    The handle format is the one vLLM's IPC weight-transfer engine uses. Pure torch: on CPU tensors
    `reduce_tensor` shares the storage through a file descriptor instead, which the tests use.
    """
    from torch.multiprocessing.reductions import reduce_tensor

    payload: list[dict[str, Any]] = []
    keep: list[torch.Tensor] = []
    for name, tensor in named_tensors:
        weight = tensor.detach().contiguous()
        keep.append(weight)
        rebuild, args = reduce_tensor(weight)
        payload.append({"name": name, "dtype": str(weight.dtype), "shape": list(weight.shape),
                        "handles": {device_uuid: (rebuild, args)}})
    return payload, keep


CUDA_DEVICE_ARG = 6
"""Index of the device in `rebuild_cuda_tensor`'s arguments (as vLLM's IPC engine overwrites it)."""


def rebuild_ipc_tensor(entry: dict[str, Any], device_uuid: str, device_index: int | None) -> torch.Tensor:
    """Open one payload entry on the device `device_uuid` (the receiver's GPU, which may have another
    index in its process than in the sender's); checks the dtype and shape it was announced with."""
    handles = entry["handles"]
    if device_uuid not in handles:
        raise ValueError(f"no IPC handle of {entry['name']} for device {device_uuid}; have {sorted(handles)}")
    rebuild, args = handles[device_uuid]
    args = list(args)
    if getattr(rebuild, "__name__", "") == "rebuild_cuda_tensor" and device_index is not None:
        args[CUDA_DEVICE_ARG] = device_index
    tensor = rebuild(*args)
    if str(tensor.dtype) != entry["dtype"] or list(tensor.shape) != list(entry["shape"]):
        raise ValueError(f"IPC tensor {entry['name']}: got {tensor.dtype} {list(tensor.shape)}, "
                         f"announced {entry['dtype']} {entry['shape']}")
    return tensor


# ---------------------------------------------------------------------------------- CPU details


@contextmanager
def _vllm_config(worker: Any) -> Iterator[None]:
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config):
        yield


class _ExpectedReloadWarnings(logging.Filter):
    """Drops vLLM's "Failed to load weights" for layers that have no checkpoint tensors by design.

    The rotary embedding holds only computed buffers, and a tied LM head shares the embedding's
    tensor (it is repacked by `_repack_tied_lm_head`); vLLM warns about both on every reload.
    """

    _BENIGN = ("RotaryEmbedding: Failed to load weights", "ParallelLMHead: Failed to load weights")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.getMessage().startswith(text) for text in self._BENIGN)


@contextmanager
def _quiet_expected_reload_warnings() -> Iterator[None]:
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    quiet = _ExpectedReloadWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _repack_tied_lm_head(worker: Any) -> None:
    """CPU only: rebuild the tied LM head's packed weight after a reload.

    vLLM-CPU pre-packs the LM head's GEMM weight when the model loads. A tied head shares its
    parameter with the embedding, so the reload refreshes the parameter but no layer owns the
    head's packing: it would keep producing logits from the old weights. GPU vLLM multiplies by
    the parameter directly and needs nothing (untested here).
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    if not getattr(worker.model_config.hf_text_config, "tie_word_embeddings", False):
        return
    lm_head = getattr(worker.model_runner.get_model(), "lm_head", None)
    quant_method = getattr(lm_head, "quant_method", None)
    if quant_method is not None:
        quant_method.process_weights_after_loading(lm_head)
