"""Code shared by the rollout engines: seeds, weight names, stop tokens and output assembly.

Both engines reduce their raw output to `SampledSequence`s in a flat, prompt-major order and
hand them to `assemble_groups`, so detokenisation, truncation after the end-of-sequence token and
`Completion` construction exist once and behave identically for HF and vLLM.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from rlpost.types import Completion, Group, Prompt

_SEED_RANGE = 2**31 - 2**16
"""Derived seeds stay below 2**31 minus room for vLLM's `seed + index` per child of an n>1 request."""


def derive_seed(base: int, *keys: int) -> int:
    """A well-mixed seed for a sub-stream (`keys`) of `base`: stable across processes and runs.

    Python's `hash` is salted per process for strings and too regular for ints, so hash bytes.
    """
    digest = hashlib.blake2b(repr((base, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_RANGE


def check_request(prompts: Sequence[Prompt], n_per_prompt: Sequence[int]) -> None:
    """Reject mismatched or negative group sizes before any expensive work starts."""
    if len(prompts) != len(n_per_prompt):
        raise ValueError(f"{len(prompts)} prompts but {len(n_per_prompt)} group sizes")
    for prompt, n in zip(prompts, n_per_prompt, strict=True):
        if n < 0:
            raise ValueError(f"negative group size {n} for prompt {prompt.prompt_id!r}")
        if not prompt.token_ids:
            raise ValueError(f"prompt {prompt.prompt_id!r} has no tokens")


# --------------------------------------------------------------------------- stop tokens


def _as_id_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def stop_token_ids(model_path: str, tokenizer_eos_id: int | None) -> frozenset[int]:
    """End-of-sequence ids: the tokenizer's plus `generation_config.json`'s, the set vLLM stops on.

    Instruct models often list several (e.g. Llama 3's end-of-turn token), and both engines must
    stop on the same set for their outputs to agree.
    """
    ids = set(_as_id_list(tokenizer_eos_id))
    gen_config = Path(model_path) / "generation_config.json"
    if gen_config.is_file():
        ids.update(_as_id_list(json.loads(gen_config.read_text()).get("eos_token_id")))
    else:  # a Hub id: let transformers fetch or read the cached file
        from transformers import GenerationConfig

        try:
            ids.update(_as_id_list(GenerationConfig.from_pretrained(model_path).eos_token_id))
        except OSError:
            pass  # the model has no generation config: the tokenizer's EOS is all there is
    if not ids:
        raise ValueError(f"{model_path}: no end-of-sequence token in the tokenizer or generation config")
    return frozenset(ids)


# --------------------------------------------------------------------------- weight names

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
"""Prefixes added by DDP/DeepSpeed (`module.`), torch.compile (`_orig_mod.`) and peft (`base_model.model.`)."""
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.[^.]+\.")


def hf_weight_name(name: str) -> str | None:
    """The plain Hugging Face name of a learner parameter, or None if it carries no weights to load.

    Accepts names from a plain model, a DDP/compiled wrapper, or a peft model whose adapters are
    merged (`merge_adapter()`: the merged weights live in `.base_layer.`, the `lora_*` tensors are
    then redundant; `merge_and_unload()` already gives plain names). Unmerged adapters cannot be
    detected from names alone: merge before syncing.
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    if ".lora_" in name or ".original_module." in name:
        return None
    name = name.replace(".base_layer.", ".")
    return _MODULES_TO_SAVE.sub(".", name)


def hf_named_weights(
    named_tensors: Iterable[tuple[str, torch.Tensor]], tied_embeddings: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """Normalise names (`hf_weight_name`) and drop entries the engines must not load separately.

    With tied embeddings `lm_head.weight` is the embedding matrix itself: loading it again would be
    redundant, and a second name for one storage breaks safetensors serialisation.
    """
    for raw_name, tensor in named_tensors:
        name = hf_weight_name(raw_name)
        if name is None or (tied_embeddings and name == "lm_head.weight"):
            continue
        yield name, tensor


# --------------------------------------------------------------------------- output assembly


@dataclass
class SampledSequence:
    """One completion as an engine produced it, before detokenisation."""

    token_ids: list[int]
    logprobs: list[float]
    """Log-prob of each token in `token_ids` (same length) under the distribution it was sampled from."""
    finish_reason: str | None = None
    """The engine's reason if it reports one; None: derive it from the stop tokens."""


class Decoder(Protocol):
    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = ...) -> list[str]: ...


def finalize_sequence(seq: SampledSequence, stop_ids: frozenset[int]) -> SampledSequence:
    """Cut after the first stop token (generate pads finished rows) and settle the finish reason."""
    cut = next((i + 1 for i, token in enumerate(seq.token_ids) if token in stop_ids), None)
    if cut is not None:
        return SampledSequence(seq.token_ids[:cut], seq.logprobs[:cut], seq.finish_reason or "stop")
    return SampledSequence(seq.token_ids, seq.logprobs, seq.finish_reason or "length")


def assemble_groups(
    prompts: Sequence[Prompt],
    n_per_prompt: Sequence[int],
    sequences: Sequence[SampledSequence],
    tokenizer: Decoder,
    stop_ids: frozenset[int],
    policy_version: int,
) -> list[Group]:
    """One `Group` per prompt from the engine's flat, prompt-major list of sequences."""
    if len(sequences) != sum(n_per_prompt):
        raise RuntimeError(f"engine returned {len(sequences)} sequences for {sum(n_per_prompt)} requested")
    finished = [finalize_sequence(seq, stop_ids) for seq in sequences]
    for seq in finished:
        if len(seq.token_ids) != len(seq.logprobs):
            raise RuntimeError(f"{len(seq.token_ids)} tokens but {len(seq.logprobs)} log-probs")
    texts = tokenizer.batch_decode([seq.token_ids for seq in finished], skip_special_tokens=True)
    completions = [
        Completion(
            token_ids=seq.token_ids,
            text=text,
            logprobs=seq.logprobs,
            finish_reason=seq.finish_reason or "length",
            policy_version=policy_version,
        )
        for seq, text in zip(finished, texts, strict=True)
    ]
    groups, start = [], 0
    for prompt, n in zip(prompts, n_per_prompt, strict=True):
        groups.append(Group(prompt=prompt, completions=completions[start : start + n]))
        start += n
    return groups
