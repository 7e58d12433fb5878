"""The weight folders that engines of earlier versions, killed mid-update, left in shared memory."""

from __future__ import annotations

import os
import subprocess
import sys

from rlpost.rollout import vllm as vllm_engine


def test_only_the_folders_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    prefix = vllm_engine.STAGING_PREFIX
    orphan = tmp_path / f"{prefix}{dead_pid}-abc123"
    live = tmp_path / f"{prefix}{os.getpid()}-def456"
    unrelated = tmp_path / f"{prefix}notapid"
    other = tmp_path / "someone-else"
    for folder in (orphan, live, unrelated, other):
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"x")

    vllm_engine.remove_orphaned_staging(tmp_path)

    assert not orphan.exists()
    assert live.exists() and unrelated.exists() and other.exists()
