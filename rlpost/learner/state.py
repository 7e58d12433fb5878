"""The learner's checkpoint state: trainable weights, optimizer, schedule and step count (safe
formats only; ZeRO's partitioned state through DeepSpeed's own checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, on the CPU (safetensors writes from there)."""
    return {name: p.detach().contiguous().cpu() for name, p in module.named_parameters() if p.requires_grad}


def save_state(learner, folder: Path) -> None:
    """Write the trainable weights, optimizer and schedule into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if learner.zero_partitioned:
        learner.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)
    else:
        save_file(trainable_state(learner.module), folder / "policy.safetensors")
        torch.save(learner.optimizer.state_dict(), folder / "optimizer.pt")
    (folder / "learner.json").write_text(
        json.dumps({"scheduler": learner.scheduler.state_dict(), "steps_taken": learner.steps_taken})
    )


def load_weights(module: torch.nn.Module, folder: Path) -> None:
    """Copy the saved trainable weights into `module` (onto its parameters' devices)."""
    weights = load_file(folder / "policy.safetensors")
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    missing = trainable - set(weights)
    if missing:
        raise ValueError(f"checkpoint {folder} lacks weights {sorted(missing)[:3]}: saved with another model or LoRA setting")
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in weights:
                param.copy_(weights[name])


def load_state(learner, folder: Path) -> None:
    if learner.zero_partitioned:
        learner.engine.load_checkpoint(str(folder / "deepspeed"), tag="state")
    else:
        load_weights(learner.module, folder)
        # map_location: optimizer tensors go where their parameters are (load_state_dict casts them there).
        learner.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
    state = json.loads((folder / "learner.json").read_text())
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.steps_taken = state["steps_taken"]
