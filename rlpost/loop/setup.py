"""What a run sets up before its first step: seeds, the config digest, tokenizer, prompts."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlpost.config.schema import RLPostConfig
from rlpost.models import ModelNotFoundError

# Settings that may change between a checkpoint and its resumption without changing the run.
RESUMABLE_CHANGES = {("train", "steps"), ("train", "resume"), ("train", "threads"), ("logging",), ("eval",), ("checkpoint",)}
CLUSTER_KEYS_IN_DIGEST = ("max_staleness", "is_correction", "is_cap", "learner_ranks")
"""The `cluster` settings that change what is trained. The rest (runtime, placement, resources) may
change: a local checkpoint resumes on Ray and the other way round."""


def plugin_registries() -> dict[str, Any]:
    """The config sections whose `name` picks a plug-in, with the plug-ins' registries."""
    from rlpost.blending.base import CONTROLLERS
    from rlpost.objectives.registry import OBJECTIVES
    from rlpost.samplers.base import SAMPLERS

    return {"objective": OBJECTIVES, "sampler": SAMPLERS, "blending": CONTROLLERS}


def config_digest(config: RLPostConfig) -> str:
    """Hash of the settings a checkpoint depends on (a resumed run must match it).

    Only the chosen plug-in's sub-section counts: adding a method to rlpost (a new sub-section with
    defaults) does not orphan the checkpoints of runs that do not use it.
    """
    tree = config.model_dump(mode="json")
    for section, registry in plugin_registries().items():
        chosen = tree[section].get("name")
        for name in registry.names():
            if name != chosen:
                tree[section].pop(name, None)
    for path in RESUMABLE_CHANGES:
        node = tree
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    tree["train"].pop("output_dir", None)
    tree["cluster"] = {key: tree["cluster"][key] for key in CLUSTER_KEYS_IN_DIGEST}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def step_seed(seed: int, step: int) -> int:
    """Seed of step `step`'s generation: the same on a resumed run as on an uninterrupted one."""
    return (seed * 1_000_003 + step) % (2**31 - 1)


def round_seed(seed: int, step: int, round_index: int) -> int:
    """Seed of generation round `round_index` of step `step` (rounds of a group filter)."""
    return step_seed(seed, step) + 7919 * round_index


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_rng(folder: Path) -> dict:
    """Write torch's RNG state into `folder`; Python's and numpy's states for `trainer.json`."""
    save_file({"torch": torch.get_rng_state()}, folder / "rng.safetensors")
    version, state, gauss = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def load_rng(folder: Path, rng: dict) -> None:
    torch.set_rng_state(load_file(folder / "rng.safetensors")["torch"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


def load_tokenizer(model_path: str):
    """The model's tokenizer; a folder without one or an unreachable Hub id is a `ModelNotFoundError`."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:  # transformers: OSError when nothing is found, ValueError for no tokenizer files
        reason = str(exc).strip().splitlines()[0]
        raise ModelNotFoundError(
            f"model.path: cannot load a tokenizer from {model_path!r} ({reason}); "
            "a model folder needs the tokenizer files saved with the model"
        ) from exc


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
