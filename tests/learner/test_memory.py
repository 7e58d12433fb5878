"""`release_free_heap` hands memory that free() kept back to the OS (glibc, Linux)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.reliability.runs import REPO

# In a fresh process: 400 one-MiB tensors served from the heap (as a long run's are, once glibc's
# mmap threshold has grown), then a small block on top of them, then the tensors freed. free()
# cannot shrink a heap whose top is in use, so the memory stays resident until it is released.
SCRIPT = textwrap.dedent(
    """
    import ctypes, json
    import torch
    from rlpost.learner.memory import release_free_heap, resident_gib

    M_MMAP_THRESHOLD = -3
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 30)

    def resident_mib():
        return resident_gib() * 1024

    start = resident_mib()
    blocks = [torch.ones(2**18) for _ in range(400)]
    top = torch.ones(1024)
    del blocks
    freed = resident_mib()
    released = release_free_heap()
    print(json.dumps({"held_mib": freed - start, "released": released, "returned_mib": freed - resident_mib()}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_freed_heap_memory_is_returned_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["held_mib"] > 300, "free() alone keeps the 400 MiB resident"
    assert result["released"] is True
    assert result["returned_mib"] > 300


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_step_peak_window_restarts_at_reset():
    import torch

    from rlpost.learner.memory import peak_resident_gib, reset_peak, resident_gib

    reset_peak()
    start = peak_resident_gib()
    block = torch.ones(2**27)  # 512 MiB, touched
    del block  # mmap-served: returned at once
    high = peak_resident_gib()
    reset_peak()
    assert high - start > 0.45
    assert peak_resident_gib() == pytest.approx(resident_gib(), abs=0.05)
    assert high - peak_resident_gib() > 0.45
