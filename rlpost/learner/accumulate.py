"""The learner's one micro-batch engine: micro-batch -> log-probs -> loss -> gradient, every loss
normalised by the whole step's `StepScale`, so gradient accumulation gives the update of one big batch.

What differs between an RL update, the two sides of a blended step and VCPO's OPOB is only what a
micro-batch's loss sees and where its gradient goes: each is a `Strategy` plugged into `accumulate`.
Tensors meet the model on its device: each micro-batch is moved there alone, never the whole batch;
what is kept of it (log-probs, metrics) comes back to the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from rlpost.learner.batch import PolicyTargets, TrainBatch
from rlpost.learner.distributed import all_reduce_max, all_reduce_sum, world_size
from rlpost.objectives.base import LossInputs, Objective, StepScale
from rlpost.objectives.sft import SFTLoss

if TYPE_CHECKING:
    from rlpost.config.schema import RLPostConfig

Backward = Callable[[torch.Tensor, bool], None]


class Runner(Protocol):
    """What the engine needs of the learner."""

    config: RLPostConfig
    module: torch.nn.Module
    device: torch.device
    micro_batch_size: int

    def token_logprobs(self, model, batch, compute_entropy, temperature=None): ...

    def backward(self, loss: torch.Tensor, is_last: bool) -> None: ...

    def micro_batch_rows(self, batch: TrainBatch, rows: torch.Tensor) -> list[torch.Tensor]: ...


@dataclass
class Micro:
    """One micro-batch, its tensors on the model's device."""

    local: torch.Tensor | None
    """Positions of its rows within the accumulated `rows` (None: a padding micro-batch)."""
    picked: torch.Tensor
    """Its rows of the whole batch (CPU indices)."""
    sub: TrainBatch
    logp: torch.Tensor
    entropy: torch.Tensor | None
    is_last: bool

    @property
    def width(self) -> int:
        return self.sub.response_mask.shape[1]


@dataclass
class Accumulated:
    """What one pass over a batch measured (this rank's rows)."""

    current_logp: torch.Tensor
    """[len(rows), T] fp32 CPU log-probs under the policy before this step (no grad)."""
    loss: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    """Sums over micro-batches of each loss metric (each one is that micro-batch's share of the step value)."""
    entropy_sum: float = 0.0
    """Σ token entropy · mask, when the strategy measures entropy."""


class Strategy:
    """One kind of gradient pass. Subclasses say what a micro-batch's loss sees (`loss_inputs`)."""

    loss_fn: Objective | SFTLoss
    weight: float = 1.0
    temperature: float | None = None
    measure_entropy: bool = False

    @property
    def needs_entropy(self) -> bool:
        return self.loss_fn.needs_entropy or self.measure_entropy

    def micro_batches(self, runner: Runner, batch: TrainBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """Positions within `rows` of each micro-batch; any order (every tensor is indexed by them)."""
        return runner.micro_batch_rows(batch, rows)

    def loss_inputs(self, micro: Micro) -> LossInputs:
        raise NotImplementedError

    def apply(self, loss: torch.Tensor, micro: Micro, backward: Backward) -> None:
        # DeepSpeed/DDP average gradients over ranks; the loss is already a global sum-normalised value.
        backward(loss * self.weight * world_size(), micro.is_last)

    def finish(self, result: Accumulated) -> Accumulated:
        return result


def on_device(inputs: LossInputs, device: torch.device) -> LossInputs:
    """`inputs` with every tensor on `device` (the model's: `logp`'s)."""
    for item in fields(inputs):
        value = getattr(inputs, item.name)
        if isinstance(value, torch.Tensor):
            setattr(inputs, item.name, value.to(device))
    return inputs


@dataclass
class PolicyGradient(Strategy):
    """The RL loss of `loss_fn` on the batch's rows, with their advantages, token weights and the
    old and reference log-probs (CPU, [N, T] by batch row; old None: the current policy's)."""

    loss_fn: Objective
    targets: PolicyTargets
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    weight: float = 1.0
    measure_entropy: bool = False

    def loss_inputs(self, micro: Micro) -> LossInputs:
        picked, width, sub = micro.picked, micro.width, micro.sub
        advantages, token_weights = self.targets.advantages, self.targets.token_weights
        return on_device(
            LossInputs(
                logp=micro.logp,
                old_logp=self.old_logp[picked, :width] if self.old_logp is not None else micro.logp.detach(),
                advantages=advantages[picked] if advantages.dim() == 1 else advantages[picked, :width],
                mask=sub.response_mask,
                ref_logp=self.ref_logp[picked, :width] if self.ref_logp is not None else None,
                entropy=micro.entropy if self.loss_fn.needs_entropy else None,
                token_ids=sub.response_ids,
                group_index=sub.group_index,
                behaviour_logp=sub.behaviour_logp,
                token_weights=token_weights[picked, :width] if token_weights is not None else None,
            ),
            micro.logp.device,
        )


@dataclass
class Demonstration(Strategy):
    """A supervised loss on demonstrations: only the log-probs and the mask matter (advantages 0)."""

    loss_fn: SFTLoss
    weight: float = 1.0
    measure_entropy: bool = False
    temperature: float | None = 1.0

    def loss_inputs(self, micro: Micro) -> LossInputs:
        sub = micro.sub
        return on_device(
            LossInputs(
                logp=micro.logp,
                old_logp=micro.logp.detach(),
                advantages=torch.zeros(len(micro.picked)),
                mask=sub.response_mask,
                entropy=micro.entropy if self.loss_fn.needs_entropy else None,
                token_ids=sub.response_ids,
                group_index=sub.group_index,
                behaviour_logp=sub.behaviour_logp,
            ),
            micro.logp.device,
        )


def fused_ops_enabled(setting: bool | Literal["auto"], device: torch.device) -> bool:
    """Whether the objectives' per-token surrogate goes through the fused op (`learner.fused_ops`):
    `auto` turns it on where the policy is on CUDA (Triton), off on the CPU (slower there)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def step_scale(batch: TrainBatch, rows: torch.Tensor, max_response_length: int) -> StepScale:
    """The normalisers of a step over `rows` of `batch` on every rank."""
    mask = batch.response_mask[rows]
    tokens, sequences = all_reduce_sum([float(mask.sum()), float((mask.sum(dim=1) > 0).sum())])
    return StepScale(tokens=int(tokens), sequences=int(sequences), max_response_length=max_response_length)


def padded_count(count: int) -> int:
    """The most micro-batches any rank runs in this pass: every rank runs that many, because each
    forward and backward of a sharded (ZeRO-3) model is a collective every rank must enter."""
    return int(all_reduce_max([float(count)])[0])


def forward(runner: Runner, batch: TrainBatch, picked: torch.Tensor, strategy: Strategy) -> tuple:
    """The sub-batch of `picked` on the model's device, and its log-probs and entropies under the policy."""
    sub = batch.select(picked).to(runner.device)
    logp, entropy = runner.token_logprobs(
        runner.module, sub, compute_entropy=strategy.needs_entropy, temperature=strategy.temperature
    )
    return sub, logp, entropy


def record(result: Accumulated, micro: Micro, loss: torch.Tensor, metrics: dict, strategy: Strategy) -> None:
    """Add one micro-batch's loss, loss metrics, entropy and log-probs to `result` (on the CPU)."""
    result.loss += float(loss.detach())
    for key, value in metrics.items():
        result.metrics[key] = result.metrics.get(key, 0.0) + float(value)
    if strategy.measure_entropy:
        result.entropy_sum += float((micro.entropy.detach().double() * micro.sub.response_mask.double()).sum())
    result.current_logp[micro.local, : micro.width] = micro.logp.detach().float().cpu()


def accumulate(
    runner: Runner, batch: TrainBatch, rows: torch.Tensor, scale: StepScale, strategy: Strategy, is_last: bool = True
) -> Accumulated:
    """Back-propagate `strategy`'s loss over `rows` of `batch`, micro-batched (no optimizer step).

    `is_last`: this pass's last backward closes the step's gradient accumulation. A rank with fewer
    micro-batches than another runs extra ones on its first row at loss weight 0 (no gradient, no metrics).
    """
    chunks = strategy.micro_batches(runner, batch, rows)
    total = padded_count(len(chunks)) if world_size() > 1 else len(chunks)
    result = Accumulated(current_logp=torch.zeros_like(batch.response_mask[rows]))
    fused = fused_ops_enabled(runner.config.learner.fused_ops, runner.device)
    for index in range(total):
        local = chunks[index] if index < len(chunks) else None
        picked = rows[local] if local is not None else torch.zeros(1, dtype=torch.long)
        sub, logp, entropy = forward(runner, batch, picked, strategy)
        micro = Micro(local, picked, sub, logp, entropy, is_last=is_last and index == total - 1)
        loss, metrics = strategy.loss_fn.compute_loss(replace(strategy.loss_inputs(micro), fused_ops=fused), scale)
        if local is None:
            runner.backward(loss * 0.0, micro.is_last)
            continue
        strategy.apply(loss, micro, runner.backward)
        record(result, micro, loss, metrics, strategy)
    return strategy.finish(result)
