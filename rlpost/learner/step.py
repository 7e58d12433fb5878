"""The optimizer side of a step: the DeepSpeed engine's set-up, backward passes that accumulate
gradients (ours or ZeRO's), and the clipped optimizer step with a per-step learning-rate factor."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from rlpost.config.schema import RLPostConfig
from rlpost.learner.memory import release_free_heap


def deepspeed_config(config: RLPostConfig) -> dict:
    learner = config.learner
    zero: dict = {"stage": learner.zero_stage}
    if learner.offload_optimizer and learner.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        # We accumulate ourselves (variable micro-batch counts); DeepSpeed sees one micro-batch per step.
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "gradient_clipping": deepspeed_clip(config),
        "bf16": {"enabled": config.model.dtype == "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def deepspeed_clip(config: RLPostConfig) -> float:
    # ZeRO partitions gradients, so DeepSpeed clips them; at stage 0 we clip ourselves to read the norm.
    clip = config.optimizer.grad_clip
    return float(clip) if clip and config.learner.zero_stage > 0 else 0.0


def init_deepspeed(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict):
    """(engine, its optimizer); the engine puts the model on this rank's accelerator."""
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, dist_init_required=False)
    return engine, optimizer


def backward(engine, loss: torch.Tensor, is_last: bool) -> None:
    """Accumulate the gradient of `loss`; `is_last` closes the step's accumulation (DeepSpeed reduces then)."""
    if engine is None:
        loss.backward()
        return
    engine.set_gradient_accumulation_boundary(is_last)
    engine.backward(loss)
    end_micro_step(engine)


def end_micro_step(engine) -> None:
    """Close a ZeRO micro-step, as `DeepSpeedEngine.forward` does at the start of the next one.

    The log-prob path calls the module's parts, not the engine, so without this ZeRO never
    counts micro-steps and each micro-batch's gradient overwrites the previous one's.
    """
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    if isinstance(engine.optimizer, ZeROOptimizer):
        engine.optimizer.clear_backward_seen_flag()


def apply_gradients(optimizer, engine, module: torch.nn.Module, config: RLPostConfig) -> float:
    """Clip (where we do) and step; the pre-clip gradient norm (NaN where nobody measured it)."""
    grad_norm = float("nan")
    if engine is None or config.learner.zero_stage == 0:
        params = [p for p in module.parameters() if p.grad is not None]
        clip = config.optimizer.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf")))
    if engine is None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm
    engine.step()
    if config.learner.zero_stage > 0:
        norm = engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else grad_norm
    return grad_norm


@contextlib.contextmanager
def updates_switched_off(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """While open, `optimizer.step()` does nothing: no parameter, moment or step count moves.

    Shadows the method on the instance (the learning-rate scheduler may have wrapped it there too)
    and puts back whatever was there before."""
    shadowed = optimizer.__dict__.get("step")
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if shadowed is None:
            del optimizer.step
        else:
            optimizer.step = shadowed


def skip_step(engine, module: torch.nn.Module) -> None:
    """Drop the step's gradients, moving neither the weights nor the optimizer (moments, step count).

    Plain torch: the gradients are the parameters' `.grad`. DeepSpeed keeps them where its backend
    puts them (ZeRO partitions, the bf16 optimizer's fp32 buffers), so the engine's own step runs
    with the update of the optimizer it wraps (`basic_optimizer`, AdamW) switched off: the engine
    reduces, clips and drops the gradients, copies the unchanged master weights back and advances
    its micro-step counters, exactly as after a step, and no moment moves. (Skipped before the very
    first update, DeepSpeed links its empty optimizer state for universal checkpoints, which rlpost
    does not use.)
    """
    if engine is None:
        module.zero_grad(set_to_none=True)
        return
    with updates_switched_off(engine.basic_optimizer):
        engine.step()


def optimizer_step(optimizer, scheduler, engine, module: torch.nn.Module, config: RLPostConfig, lr_factor: float) -> tuple[float, float]:
    """Clip, step with the learning rate scaled for this step only, restore, advance the schedule.
    Returns (pre-clip gradient norm, applied learning rate).

    A factor of exactly 0 (VCPO: no usable sample in the step) skips the step on every backend
    (`skip_step`): the gradients are dropped and neither the weights, the optimizer (Adam's moments,
    its step count) nor the schedule moves.
    """
    if lr_factor == 0.0:
        skip_step(engine, module)
        return 0.0, 0.0
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] *= lr_factor
    applied_lr = optimizer.param_groups[0]["lr"]
    grad_norm = apply_gradients(optimizer, engine, module, config)
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base
    scheduler.step()
    if config.learner.release_memory:
        release_free_heap()
    return grad_norm, applied_lr
