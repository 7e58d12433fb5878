"""`scripts/gpu_smoke.sh`: the dry run passes every CPU-runnable check and skips the CUDA-only ones
with a reason; without CUDA and without --dry it fails at once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fresh_process_environment

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(PASS|FAIL|SKIP) (\w+) \((.*)\)$", re.MULTILINE)
CPU_CHECKS = ["environment", "triton_kernels", "fused_ops", "logprob_bench", "grpo_3steps", "nccl"]


def _smoke(*args: str, **env: str) -> subprocess.CompletedProcess:
    # A hang guard, not a speed limit: the dry run takes ~3 minutes on a quiet 2-core machine.
    return subprocess.run(["bash", "scripts/gpu_smoke.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          env=fresh_process_environment(PYTHON=sys.executable, **env), timeout=1500)


def _lines(stdout: str) -> dict[str, tuple[str, str]]:
    return {name: (status, detail) for status, name, detail in LINE.findall(stdout)}


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_dry_run_passes_on_the_cpu_and_skips_cuda_only_checks(tiny_chat_model_path):
    # The GPU machine's GRPO check may run on a random-weight model too (gpu_wheels.sh's tiny-smollm2).
    out = _smoke("--dry", RLPOST_SMOKE_MODEL=tiny_chat_model_path)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    lines = _lines(out.stdout)
    for name in CPU_CHECKS:
        assert lines[name][0] == "PASS", (name, lines.get(name))
    assert "TRITON_INTERPRET=1" in lines["triton_kernels"][1]
    assert "learner cpu, HF engine cpu" in lines["grpo_3steps"][1]
    status, reason = lines["vllm"]
    assert status == "SKIP" and "CUDA only" in reason
    assert re.search(r"^SUMMARY 6 passed, 0 failed, 1 skipped", out.stdout, re.MULTILINE)


def test_without_cuda_the_gpu_run_fails_at_once():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = _smoke()
    assert out.returncode == 1
    assert _lines(out.stdout)["cuda"][0] == "FAIL"
    assert "SUMMARY 0 passed, 1 failed" in out.stdout
