"""The policy and reference models: loading (LoRA, ZeRO-3 partitioned loading), device placement,
and the LoRA helpers the weight export needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from rlpost.config.schema import RLPostConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def compute_device() -> torch.device:
    """This process's accelerator (LOCAL_RANK's GPU, as DeepSpeed picks it) or the CPU without one."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where `model`'s parameters live (under ZeRO-3: its partitions' device)."""
    return next(model.parameters()).device


@contextlib.contextmanager
def zero3_loading(ds_config: dict | None) -> Iterator[None]:
    """While open, `from_pretrained` builds the model under `deepspeed.zero.Init`: each rank holds only
    its partition, never a full copy. Closed before any other model loads (the reference, an engine):
    transformers reads the setting through a process-wide reference."""
    if not ds_config or ds_config["zero_optimization"]["stage"] < 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    setting = HfDeepSpeedConfig(ds_config)  # registers itself; held alive while loading
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del setting


def load_policy(config: RLPostConfig, model_path: str, ds_config: dict | None = None) -> torch.nn.Module:
    """The trainable policy: a causal LM, optionally wrapped with LoRA adapters.

    `ds_config`: the DeepSpeed config the policy will train under (ZeRO-3 loads it partitioned)."""
    from transformers import AutoModelForCausalLM

    with zero3_loading(ds_config):
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=DTYPES[config.model.dtype],
            trust_remote_code=config.model.trust_remote_code,
        )
    model.config.use_cache = False
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = config.model.lora
    if lora.enabled:
        from peft import LoraConfig, get_peft_model

        if config.model.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    if config.learner.compile:
        compile_body(model)
    return model


def compile_body(policy: torch.nn.Module) -> None:
    """Replace the decoder body's `forward` with its `torch.compile`d version (the LM head and the
    log-prob op stay eager: they run chunked, on a subset of positions). The module, its parameters and
    its state dict are unchanged, so checkpoints and exports do not see the compilation."""
    body = hf_model(policy).get_decoder()
    body.forward = torch.compile(body.forward, dynamic=True)


def load_reference(config: RLPostConfig, model_path: str, device: torch.device) -> torch.nn.Module:
    """The frozen KL reference, on `device` (a full copy on every rank)."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[config.model.dtype])
    reference.requires_grad_(False)
    return reference.to(device).eval()


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "merge_adapter")


def hf_model(policy: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside the policy: peft's wrapper removed (adapted layers stay in it,
    their base weight under `<layer>.base_layer.weight`)."""
    return policy.get_base_model() if is_peft(policy) else policy


def lora_layers_by_weight_name(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each LoRA-adapted layer of `model`, keyed by the state-dict name of the base weight it adapts."""
    from peft.tuners.lora import LoraLayer

    return {
        f"{prefix}.base_layer.weight": module
        for prefix, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def merged_lora_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The layer's base weight with its active adapters merged (W + scaling·B@A each), as a new tensor.

    The same sum as peft's `merge` (which adds `get_delta_weight` into W), on a copy: merging into
    the live W and unmerging afterwards leaves W off by rounding after every export, and a reader of
    the live W sees the unmerged values again once the export ends. Dropout acts on activations
    only, so it plays no part in the merged weight.
    """
    merged = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        for adapter in layer.active_adapters:
            if adapter in layer.scaling:
                merged += layer.get_delta_weight(adapter)
    return merged
