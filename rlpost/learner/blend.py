"""The gradient passes of an SFT–RL blended step (`rlpost.blending`): validation, SFT and RL sides
through the one micro-batch engine, and gradients weighed after the fact for deferred plans."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlpost.blending.base import BlendPlan, BlendProbe
from rlpost.learner.accumulate import Accumulated, Demonstration, PolicyGradient, Strategy, accumulate
from rlpost.learner.batch import PolicyTargets, TrainBatch
from rlpost.learner.distributed import all_reduce_sum

Gradients = list[torch.Tensor | None]
Decide = Callable[[BlendProbe], tuple[float, float]]


@dataclass
class BlendSides:
    """What the passes of one blended step measured, before its optimizer step."""

    probe: BlendProbe
    rl: Accumulated | None = None
    sft: Accumulated | None = None


def check_plan(learner, plan: BlendPlan, decide: Decide | None) -> None:
    if learner.config.learner.updates_per_batch != 1:
        raise ValueError("SFT–RL blending needs learner.updates_per_batch = 1")
    if plan.meta_gradient and not plan.defer_weights:
        raise ValueError("a meta-gradient plan must defer its weights")
    if plan.defer_weights:
        if decide is None:
            raise ValueError("a plan that defers its weights needs decide()")
        learner.check_gradient_access()


def run_side(learner, batch: TrainBatch, strategy: Strategy, is_last: bool) -> tuple[Accumulated, float | None]:
    """One side over its whole batch, normalised by that batch alone; and the policy's mean token
    entropy over it (all ranks) when the strategy measures it."""
    rows = torch.arange(batch.size)
    scale = learner.step_scale(batch, rows)
    result = accumulate(learner, batch, rows, scale, strategy, is_last)
    if not strategy.measure_entropy:
        return result, None
    (entropy_sum,) = all_reduce_sum([result.entropy_sum])
    return result, entropy_sum / max(scale.tokens, 1)


@torch.no_grad()
def mean_entropy(learner, batch: TrainBatch, temperature: float) -> float:
    """The policy's mean token entropy over `batch` at `temperature` (no top-k/top-p), all ranks."""
    total = 0.0
    for rows in learner.micro_batch_rows(batch, torch.arange(batch.size)):
        sub = batch.select(rows)
        _, entropy = learner.token_logprobs(learner.module, sub, compute_entropy=True, temperature=temperature)
        total += float((entropy.double().cpu() * sub.response_mask.double()).sum())
    total, tokens = all_reduce_sum([total, float(batch.response_mask.sum())])
    return total / max(tokens, 1.0)


def take_gradients(params: list[torch.nn.Parameter]) -> Gradients:
    """The accumulated gradients (one per parameter), leaving them cleared."""
    grads = []
    for param in params:
        grads.append(param.grad)
        param.grad = None
    return grads


def dot_gradients(params: list[torch.nn.Parameter], other: Gradients) -> float:
    """<other, current gradients> over `params`."""
    total = 0.0
    for param, grad in zip(params, other, strict=True):
        if param.grad is not None and grad is not None:
            total += float((param.grad.float() * grad.float()).sum(dtype=torch.float64))
    return total


def combine_gradients(params: list[torch.nn.Parameter], rl_weight: float, sft_grads: Gradients | None, sft_weight: float) -> None:
    """param.grad <- rl_weight·param.grad + sft_weight·sft_grad (the RL gradient is the current one)."""
    for param, sft_grad in zip(params, sft_grads if sft_grads is not None else [None] * len(params), strict=True):
        combined = param.grad.mul_(rl_weight) if param.grad is not None else None
        if sft_grad is not None:
            combined = sft_grad.mul_(sft_weight) if combined is None else combined.add_(sft_grad, alpha=sft_weight)
        param.grad = combined


def validation_gradients(learner, plan: BlendPlan, batch: TrainBatch | None, probe: BlendProbe) -> Gradients | None:
    """The gradient of the SFT loss of the validation batch (meta-gradient plans), taken out of `param.grad`."""
    if not plan.meta_gradient or batch is None or batch.size == 0:
        return None
    validation, _ = run_side(learner, batch, Demonstration(learner.sft_loss), is_last=False)
    probe.val_loss = validation.loss
    return take_gradients(learner.trainable_parameters())


def sft_side(learner, plan: BlendPlan, batch: TrainBatch, probe: BlendProbe, val_grads: Gradients | None,
             is_last: bool) -> tuple[Accumulated, Gradients | None]:
    """The SFT side; its gradient taken aside when the plan defers its weights."""
    weight = 1.0 if plan.defer_weights else plan.sft_weight
    strategy = Demonstration(learner.sft_loss, weight=weight, measure_entropy=plan.sft_entropy)
    sft, probe.sft_entropy = run_side(learner, batch, strategy, is_last)
    probe.sft_loss = sft.loss
    if val_grads is not None:
        probe.val_dot_sft = dot_gradients(learner.trainable_parameters(), val_grads)
    return sft, take_gradients(learner.trainable_parameters()) if plan.defer_weights else None


def rl_side(learner, plan: BlendPlan, batch: TrainBatch, targets: PolicyTargets, probe: BlendProbe,
            val_grads: Gradients | None) -> Accumulated:
    """The RL side (one update per batch: the current policy is the old one), closing the accumulation."""
    ref_logp = learner.frozen_logprobs(learner.reference, batch) if learner.reference is not None else None
    if plan.rl_entropy:
        # Measured at temperature 1 like the demonstrations' entropy it is compared with (AMFT), not at
        # the rollout temperature the RL loss's own forward uses.
        probe.rl_entropy = mean_entropy(learner, batch, temperature=1.0)
    strategy = PolicyGradient(
        learner.objective, targets, ref_logp=ref_logp, weight=1.0 if plan.defer_weights else plan.rl_weight,
    )
    rl, _ = run_side(learner, batch, strategy, is_last=True)
    probe.rl_loss = rl.loss
    probe.kl = rl.metrics.get("actor/kl_loss")
    if val_grads is not None:
        probe.val_dot_rl = dot_gradients(learner.trainable_parameters(), val_grads)
    return rl


def gradient_passes(learner, plan: BlendPlan, rl: tuple[TrainBatch | None, PolicyTargets | None],
                    sft_batch: TrainBatch | None, validation_batch: TrainBatch | None, decide: Decide | None) -> BlendSides:
    """Every pass `plan` asks for, the gradients weighed and left in `param.grad` for the one step.

    A side without rows, or not trained by the plan, is skipped entirely."""
    rl_batch, rl_targets = rl
    use_rl = plan.trains_rl and rl_batch is not None and rl_batch.size > 0
    use_sft = plan.trains_sft and sft_batch is not None and sft_batch.size > 0
    if use_rl and rl_targets is None:
        raise ValueError("the RL side needs the PolicyTargets of its batch")
    sides = BlendSides(BlendProbe(lr=float(learner.optimizer.param_groups[0]["lr"])))
    val_grads = validation_gradients(learner, plan, validation_batch, sides.probe)
    sft_grads = None
    if use_sft:
        sides.sft, sft_grads = sft_side(learner, plan, sft_batch, sides.probe, val_grads, is_last=not use_rl)
    if use_rl:
        sides.rl = rl_side(learner, plan, rl_batch, rl_targets, sides.probe, val_grads)
    rl_weight, sft_weight = decide(sides.probe) if plan.defer_weights else (plan.rl_weight, plan.sft_weight)
    if plan.defer_weights:
        combine_gradients(learner.trainable_parameters(), rl_weight if use_rl else 0.0, sft_grads, sft_weight if use_sft else 0.0)
    sides.probe.rl_weight = float(rl_weight) if use_rl else 0.0
    sides.probe.sft_weight = float(sft_weight) if use_sft else 0.0
    return sides


def blend_shares(sides: BlendSides, rl_batch: TrainBatch | None, sft_batch: TrainBatch | None) -> dict[str, float]:
    """This rank's additive step values of a blended step."""
    probe = sides.probe
    total = probe.rl_weight * (probe.rl_loss or 0.0) + probe.sft_weight * (probe.sft_loss or 0.0)
    shares = {
        "actor/loss": total,
        "blend/rl_sequences": float(rl_batch.size) if sides.rl is not None else 0.0,
        "blend/sft_sequences": float(sft_batch.size) if sides.sft is not None else 0.0,
        **(sides.rl.metrics if sides.rl is not None else {}),
        **(sides.sft.metrics if sides.sft is not None else {}),
    }
    if probe.val_loss is not None:
        shares["blend/val_loss"] = probe.val_loss
    return shares
