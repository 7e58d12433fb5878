"""Checkpoints are complete or ignored: temp name + fsync + rename, verified by a manifest."""

import errno
import os

import pytest

from rlpost.io.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)


def _write(content: bytes):
    def write(folder):
        (folder / "weights.bin").write_bytes(content)
        (folder / "sub").mkdir()
        (folder / "sub" / "state.json").write_text("{}")

    return write


def test_write_verify_and_latest(tmp_path):
    first = write_checkpoint(tmp_path, 5, _write(b"a"), "digest")
    second = write_checkpoint(tmp_path, 10, _write(b"b"), "digest")
    assert verify_checkpoint(second)["step"] == 10
    assert latest_checkpoint(tmp_path) == second
    assert complete_checkpoints(tmp_path) == [first, second]


def test_crash_during_write_leaves_no_complete_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 5, _write(b"a"), "digest")

    def crash(folder):
        (folder / "weights.bin").write_bytes(b"partial")
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        write_checkpoint(tmp_path, 10, crash, "digest")
    assert (tmp_path / "ckpt-00000010.tmp").exists()
    assert latest_checkpoint(tmp_path).name == "ckpt-00000005"
    prune_checkpoints(tmp_path, keep_last=2)
    assert not (tmp_path / "ckpt-00000010.tmp").exists()


def test_disk_full_removes_the_partial_folder_and_names_the_checkpoint_to_resume_from(tmp_path):
    write_checkpoint(tmp_path, 5, _write(b"a"), "digest")

    def disk_full(folder):
        (folder / "weights.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    expected = r"cannot write checkpoint ckpt-00000010 in .*: No space left on device; train.resume=auto continues from ckpt-00000005"
    with pytest.raises(CheckpointError, match=expected):
        write_checkpoint(tmp_path, 10, disk_full, "digest")
    assert [path.name for path in tmp_path.iterdir()] == ["ckpt-00000005"]
    verify_checkpoint(tmp_path / "ckpt-00000005")


def test_corrupted_file_is_detected_and_skipped(tmp_path):
    write_checkpoint(tmp_path, 5, _write(b"a"), "digest")
    newest = write_checkpoint(tmp_path, 10, _write(b"b"), "digest")
    (newest / "weights.bin").write_bytes(b"flipped")
    with pytest.raises(CheckpointError, match="weights.bin does not match its checksum"):
        verify_checkpoint(newest)
    assert latest_checkpoint(tmp_path).name == "ckpt-00000005"


def test_missing_manifest_or_file(tmp_path):
    folder = write_checkpoint(tmp_path, 1, _write(b"a"), "digest")
    (folder / "sub" / "state.json").unlink()
    with pytest.raises(CheckpointError, match="sub/state.json is missing"):
        verify_checkpoint(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(folder)


def test_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3, 4):
        write_checkpoint(tmp_path, step, _write(b"x"), "digest")
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["ckpt-00000003", "ckpt-00000004"]
