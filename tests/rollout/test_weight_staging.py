"""Where the vLLM engine writes the weights file of an update, and the folders killed processes leave."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import namedtuple

from rlpost.rollout import vllm as vllm_engine

Usage = namedtuple("Usage", "total used free")


def test_shared_memory_is_used_when_it_has_room_twice_over(monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1000, 0, 1000))
    assert vllm_engine.staging_root(500) == vllm_engine.SHARED_MEMORY
    assert vllm_engine.staging_root(501) is None, "a file over half the free space goes to the temp folder"


def test_without_shared_memory_the_temp_folder_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr(vllm_engine, "SHARED_MEMORY", tmp_path / "missing")
    assert vllm_engine.staging_root(1) is None


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
