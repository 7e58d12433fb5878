"""Atomic, verifiable checkpoints.

A checkpoint is written into `ckpt-XXXXXXXX.tmp`, every file fsynced, a manifest with the
SHA-256 of each file written last, then the folder renamed to `ckpt-XXXXXXXX`. A folder is
complete iff it has its final name and its manifest matches: a crash at any moment leaves
either a complete checkpoint or a `.tmp` folder that is ignored (and cleaned up later). A write
that fails with an OSError (a full disk) removes its `.tmp` folder at once and raises `CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"
_NAME = re.compile(r"^ckpt-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or from a different run configuration."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}"


def write_checkpoint(root: Path, step: int, write_files: Callable[[Path], None], config_digest: str) -> Path:
    """Create checkpoint `step` under `root`; `write_files(folder)` writes its content."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    partial = root / (final.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        write_files(partial)
        files = {
            str(path.relative_to(partial)): _sha256(path)
            for path in sorted(partial.rglob("*"))
            if path.is_file()
        }
        manifest = {"step": step, "config_digest": config_digest, "files": files}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_tree(partial)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)  # frees the space a full disk needs for the next attempt
        raise CheckpointError(_write_failure(root, final.name, exc)) from exc
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)
    _fsync_dir(root)
    return final


def _write_failure(root: Path, name: str, exc: OSError) -> str:
    newest = latest_checkpoint(root)
    resume = f"train.resume=auto continues from {newest.name}" if newest else "there is no complete checkpoint yet"
    return f"cannot write checkpoint {name} in {root}: {exc.strerror or exc}; {resume} once the cause is fixed"


def verify_checkpoint(folder: Path) -> dict:
    """The manifest of a complete checkpoint; raises `CheckpointError` naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    if not _NAME.match(folder.name):
        raise CheckpointError(f"{folder} is not a complete checkpoint folder (expected a name like ckpt-00000010)")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: it is incomplete")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is unreadable ({exc})") from None
    _check_manifest_fields(folder, manifest)
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: file {name} is missing")
        if _sha256(path) != expected:
            raise CheckpointError(f"checkpoint {folder}: file {name} does not match its checksum")
    return manifest


def _check_manifest_fields(folder: Path, manifest: object) -> None:
    """A manifest damaged by hand or by another tool is named, not a KeyError (and resume passes over it)."""
    problem = None
    if not isinstance(manifest, dict):
        problem = f"holds a {type(manifest).__name__}, not an object"
    elif not isinstance(manifest.get("files"), dict) or not all(
        isinstance(name, str) and isinstance(digest, str) for name, digest in manifest["files"].items()
    ):
        problem = "has no 'files' mapping of file names to SHA-256 digests"
    elif not isinstance(manifest.get("step"), int) or isinstance(manifest["step"], bool):
        problem = "has no integer 'step'"
    elif not isinstance(manifest.get("config_digest"), str):
        problem = "has no 'config_digest' text"
    if problem:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is damaged: it {problem}")


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (incomplete ones are skipped)."""
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if _NAME.match(path.name) and (path / MANIFEST).is_file():
            found.append(path)
    return found


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupted ones are passed over."""
    for folder in reversed(complete_checkpoints(root)):
        try:
            verify_checkpoint(folder)
        except CheckpointError:
            continue
        return folder
    return None


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and leftover partial folders."""
    for stale in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    for partial in root.glob("ckpt-*.tmp"):
        shutil.rmtree(partial, ignore_errors=True)


def resume_checkpoint(root: Path, resume: str, config_digest: str) -> Path | None:
    """The checkpoint a run resumes from under `train.resume` (`auto`, `never` or a folder), verified.

    Raises `CheckpointError` when it is damaged or was written with a different config.
    """
    if resume == "never":
        check_new_run_folder(root.parent)
        return None
    folder = latest_checkpoint(root) if resume == "auto" else Path(resume)
    if folder is None:
        return None
    manifest = verify_checkpoint(folder)
    if manifest["config_digest"] != config_digest:
        raise CheckpointError(
            f"checkpoint {folder} was written with a different config (digest {manifest['config_digest']} "
            f"vs {config_digest}); start the new run in another train.output_dir"
        )
    return folder


RUN_FILES = ("checkpoints", "metrics.jsonl", "config.yaml", "tensorboard", "final")
"""What a run leaves in its `train.output_dir`; a new run never writes over another run's."""


def check_new_run_folder(output_dir: Path) -> None:
    """Refuse a new run (`train.resume=never`) in a folder that already holds a run's files; creates nothing.

    A new run there would prune the old run's checkpoints by step number (or its own) and replace
    its metrics.jsonl and config.yaml.
    """
    output_dir = Path(output_dir)
    # An empty folder holds nothing to lose.
    found = [name for name in RUN_FILES if _holds_something(output_dir / name)]
    if found:
        raise CheckpointError(
            f"train.output_dir = {output_dir} already holds a run ({', '.join(found)}) and train.resume=never "
            "starts a new one, which would overwrite it: choose another train.output_dir, continue that run "
            "with train.resume=auto, or move its files away yourself"
        )


def _holds_something(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))
