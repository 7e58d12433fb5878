"""The process's memory: readings for the step metrics, and returning freed heap memory to the OS.

glibc's malloc keeps freed memory for reuse instead of handing it back, and a learner step frees
gigabytes of activations and gradients: between steps the process stays near its step peak though its
live tensors are back to the weights and optimizer state (docs/results/README.md, "Learner memory").
`malloc_trim(0)` (`learner.release_memory`) hands the free pages back to the rest of the machine.

Growth of the peak from step to step has a second glibc cause: its dynamic mmap threshold. A block
of 128 KiB or more starts out mmap-ed (unmapped when freed), but each free of such a block raises the
threshold to its size (up to 32 MiB), so from then on activations of that size come from the heap,
where blocks of ever-different sizes (micro-batch shapes change within and between steps) fragment it
and the heap only grows. `set_mmap_threshold` (`learner.mmap_threshold_mib`) pins the threshold,
which also turns the dynamic adjustment off: large tensors are mmap-ed and unmapped again on free.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc/self")
# Memory another thread may map between the reset and the two readings that check it.
RESET_SLACK_GIB = 1 / 16


@functools.cache
def _glibc_function(name: str) -> Callable[..., int] | None:
    """glibc's function `name` (`malloc_trim`, `mallopt`), or None where there is none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return getattr(libc, name, None)


M_MMAP_THRESHOLD = -3
"""mallopt parameter number (glibc malloc.h)."""


def set_mmap_threshold(mib: float) -> bool:
    """Serve every heap allocation of at least `mib` MiB with its own mmap, unmapped on free (process-wide);
    False where glibc's `mallopt` is missing or refused it."""
    mallopt = _glibc_function("mallopt")
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, int(mib * 2**20)) == 1


def release_free_heap() -> bool:
    """Give the pages malloc holds free back to the OS; False where that is not possible."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def resident_gib() -> float:
    """Resident memory of this process now (NaN where /proc is missing)."""
    try:
        pages = int((PROC / "statm").read_text().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def reset_peak() -> bool:
    """Start a new peak window: the peak becomes the current resident memory (Linux >= 4.0 `clear_refs` 5).

    False where the window did not restart, and the peak stays the process's lifetime peak: `clear_refs`
    is missing or not writable, or (some sandboxes) the write is accepted and ignored. A restarted window
    is told apart by its peak: right after the reset it is the current resident memory.
    """
    try:
        (PROC / "clear_refs").write_text("5")
    except OSError:
        return False
    return peak_resident_gib() - resident_gib() <= RESET_SLACK_GIB


def peak_resident_gib() -> float:
    """Peak resident memory since the last `reset_peak` (or since the process started)."""
    try:
        status = (PROC / "status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return float("nan")
