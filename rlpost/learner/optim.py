"""AdamW and the warm-up + decay learning-rate schedule."""

from __future__ import annotations

import math

import torch

from rlpost.config.schema import OptimizerConfig


def lr_multiplier(step: int, total_steps: int, config: OptimizerConfig) -> float:
    """Learning-rate factor at optimizer step `step` (0-based): linear warm-up, then the schedule."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    decay_steps = max(total_steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / decay_steps, 1.0)
    floor = config.min_lr_ratio
    if config.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(parameters, config: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [p for p in parameters if p.requires_grad],
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        weight_decay=config.weight_decay,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: OptimizerConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, config))
