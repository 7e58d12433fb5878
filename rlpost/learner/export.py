"""Weights out of the learner: Hugging Face names, LoRA merged, ZeRO-3 partitions gathered one
parameter at a time: on the CPU (where safetensors and the object store read them), or left on the
parameters' device for transports that move device tensors (NCCL broadcast, CUDA IPC)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from rlpost.learner.policy import hf_model, lora_layers_by_weight_name, merged_lora_weight


def gathering(params: list[torch.nn.Parameter], zero3: bool) -> contextlib.AbstractContextManager:
    """Under ZeRO-3, `params` whole inside the context (collective: every rank enters it); else nothing."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def gathered(tensor: torch.Tensor, zero3: bool) -> torch.Tensor:
    """`tensor` whole: a copy of a ZeRO-3 parameter gathered from every rank, else a detached view."""
    if not hasattr(tensor, "ds_id"):
        return tensor.detach()
    with gathering([tensor], zero3):
        return tensor.detach().clone()


def named_weights(policy: torch.nn.Module, zero3: bool, on_device: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of every policy weight, LoRA merged, gathered one at a time under ZeRO-3;
    on the CPU, or with `on_device` on the parameter's own device (no host round trip for a GPU transport).

    The policy is left untouched: LoRA-merged, ZeRO-3-gathered and device-copied weights are new
    tensors; any other weight is a detached view of the live parameter, valid until the next
    optimizer step.
    """
    model = hf_model(policy)
    adapted = lora_layers_by_weight_name(model)
    # keep_vars: ZeRO-3 parameters keep the attributes GatheredParameters needs (a plain
    # state_dict() holds their empty local shards).
    for name, tensor in model.state_dict(keep_vars=True).items():
        if "lora_" in name:
            continue
        layer = adapted.get(name)
        if layer is None:
            weight = gathered(tensor, zero3)
        else:
            with gathering(list(layer.parameters()), zero3):
                weight = merged_lora_weight(layer)
        # Copied off the accelerator inside the loop: one weight at a time, never the whole model.
        yield name.replace(".base_layer.", "."), weight if on_device else weight.cpu()


def export_hf(policy: torch.nn.Module, zero3: bool, folder: Path, tokenizer) -> None:
    """Save a Hugging Face folder (config, safetensors, tokenizer) that transformers and vLLM load."""
    folder = Path(folder)
    state = {name: tensor.clone() for name, tensor in named_weights(policy, zero3)}
    hf_model(policy).save_pretrained(folder, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(folder)
