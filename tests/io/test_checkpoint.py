"""Checkpoints are complete or ignored: temp name + fsync + rename, verified by a manifest."""

import errno
import json
import os

import pytest

from rlpost.io.checkpoint import (
    CheckpointError,
    check_new_run_folder,
    complete_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
    resume_checkpoint,
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


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ({"step": 1, "config_digest": "digest"}, "has no 'files' mapping"),
        ({"step": 1, "config_digest": "digest", "files": ["weights.bin"]}, "has no 'files' mapping"),
        ({"step": "one", "config_digest": "digest", "files": {}}, "has no integer 'step'"),
        ({"step": 1, "files": {}}, "has no 'config_digest' text"),
        (["not", "an", "object"], "holds a list, not an object"),
    ],
)
def test_damaged_manifest_is_named_and_passed_over(tmp_path, manifest, problem):
    older = write_checkpoint(tmp_path, 1, _write(b"a"), "digest")
    newest = write_checkpoint(tmp_path, 2, _write(b"b"), "digest")
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"manifest.json is damaged: it {problem}"):
        verify_checkpoint(newest)
    assert latest_checkpoint(tmp_path) == older
    assert resume_checkpoint(tmp_path, "auto", "digest") == older


def test_new_run_refuses_a_folder_holding_another_run_and_changes_nothing(tmp_path):
    old = write_checkpoint(tmp_path / "checkpoints", 8, _write(b"a"), "old-run")
    (tmp_path / "metrics.jsonl").write_text('{"step": 8}\n')
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    expected = (
        rf"train.output_dir = {tmp_path} already holds a run \(checkpoints, metrics.jsonl\) and train.resume=never "
        "starts a new one, which would overwrite it: choose another train.output_dir, continue that run with "
        "train.resume=auto, or move its files away yourself"
    )
    with pytest.raises(CheckpointError, match=expected):
        resume_checkpoint(tmp_path / "checkpoints", "never", "new-run")
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before
    verify_checkpoint(old)


def test_new_run_in_a_new_or_empty_folder_creates_nothing(tmp_path):
    assert resume_checkpoint(tmp_path / "new" / "checkpoints", "never", "digest") is None
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    check_new_run_folder(tmp_path / "empty")
