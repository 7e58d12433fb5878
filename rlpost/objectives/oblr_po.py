"""OBLR-PO: optimal baseline and learning-rate policy optimization (Huang et al. 2025, arXiv 2511.23310;
ALGORITHMS.md §12.1). Only the abstract and summaries were available; no code.

The paper derives (1) a learning rate governed by the signal-to-noise ratio of the gradient and
(2) a variance-optimal baseline that weights rewards by gradient norms. rlpost's reconstruction:

Learning rate, per optimizer step. The step's micro-batches give K gradient pieces g_k summing to the
step gradient G; h_k = K g_k are K estimates of G. With S = Σ_k ‖g_k‖², the noise of G is
V/K = (K S - ‖G‖²)/(K - 1) and the unbiased signal ‖G‖² - V/K, so

    SNR = (‖G‖² - V/K) / (V/K),    lr multiplier = SNR / (1 + SNR) = K/(K-1) · (1 - S/‖G‖²)

clamped to [min_scale, 1] (the step size that minimises the one-step bound of an L-smooth loss,
η* = (1/L)·‖μ‖²/(‖μ‖² + tr Σ/B), relative to its noise-free value). With `ema` > 0 the signal and
noise are exponential moving averages over steps before the ratio is taken. A step with one
micro-batch (K = 1) or without readable gradients gets the multiplier 1 and says so in
`oblr_po/snr_available`.

How the gradient pieces are read without a learner change: before each micro-batch's loss the
objective reads the accumulated `param.grad` of the parameters its log-probs depend on (found once
from the autograd graph) and keeps one gradient-sized copy, so g_k = G_k - G_{k-1}; `lr_scale`,
which the learner calls after the last backward and before the optimizer step, adds the last piece.
This needs the gradients in `param.grad` (learner.backend: torch, or DeepSpeed stage 0 with float32
weights); under a DeepSpeed engine that keeps them elsewhere the multiplier stays 1. Blended steps
(SFT + RL) also accumulate SFT gradients there and are not supported.

Baseline: the variance-optimal b = Σ_i ‖∇log π(o_i)‖² R_i / Σ_i ‖∇log π(o_i)‖² per group needs
per-trajectory gradient norms (VCPO's OPOB path computes them, at one backward per trajectory).
`baseline: length_weighted` takes ‖∇log π(o_i)‖² ∝ |o_i| (token score gradients of equal norm and
uncorrelated), b = Σ |o_i| R_i / Σ |o_i|; `group_mean` is GRPO's baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, LossInputs, Metrics, StepScale
from rlpost.objectives.core import group_statistics
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import ObjectiveConfig


class OblrPoConfig(Section):
    """OBLR-PO (arXiv 2511.23310, reconstructed from the abstract): the learning rate of each step
    scaled by SNR/(1 + SNR) of the gradient, estimated from the step's micro-batch gradients, and a
    length-weighted baseline standing in for the gradient-norm-weighted optimal one. Needs at least
    two micro-batches per step (learner.micro_batch_size below the step's sequences)."""

    min_scale: float = Field(0.1, ge=0, le=1)
    """Floor of the learning-rate multiplier (a step whose gradient looks like pure noise still moves a little)."""
    ema: float = Field(0.0, ge=0, lt=1)
    """Smoothing of the signal and noise estimates over steps (0: this step's alone)."""
    baseline: Literal["length_weighted", "group_mean"] = "length_weighted"
    """`length_weighted`: b = Σ|o_i| R_i / Σ|o_i| per group (the gradient-weighted optimal baseline with ‖∇log π(o_i)‖² ∝ |o_i|); `group_mean`: GRPO's."""


def snr_lr_scale(sq_norm_sum: float, total_sq_norm: float, pieces: int) -> tuple[float, float, float]:
    """(multiplier SNR/(1+SNR) unclamped, signal, noise) from S = Σ‖g_k‖², ‖G‖² and K pieces.

    noise = (K S - ‖G‖²)/(K - 1), signal = ‖G‖² - noise; multiplier = signal/‖G‖² = K/(K-1)·(1 - S/‖G‖²).
    """
    if pieces < 2 or total_sq_norm <= 0:
        return 1.0, total_sq_norm, 0.0
    noise = (pieces * sq_norm_sum - total_sq_norm) / (pieces - 1)
    signal = total_sq_norm - noise
    return signal / total_sq_norm, signal, noise


def length_weighted_baseline(rewards: torch.Tensor, lengths: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """b_g = Σ|o_i| R_i / Σ|o_i| over each group, broadcast to members ([N] -> [N]); the group mean
    when the group has no tokens."""
    stats = group_statistics(rewards, group_index)
    weights = lengths.to(torch.float64)
    num = torch.zeros(len(stats.size), dtype=torch.float64).index_add_(0, stats.ids, weights * rewards.to(torch.float64))
    den = torch.zeros(len(stats.size), dtype=torch.float64).index_add_(0, stats.ids, weights)
    mean = stats.mean.to(torch.float64)
    return torch.where(den > 0, num / den.clamp(min=1e-12), mean)[stats.ids]


def autograd_parameters(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors requiring grad that `tensor` was computed from (its model's trainable parameters)."""
    leaves, seen, stack = [], set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    return leaves


class GradientPieces:
    """Σ_k ‖g_k‖² of the micro-batch gradients of one step, read from the accumulated `param.grad`.

    One float32 buffer per parameter holds G_{k-1}; it is updated in place (never an alias of
    `param.grad`, which the next backward accumulates into).
    """

    def __init__(self) -> None:
        self.params: list[torch.Tensor] | None = None
        self.previous: list[torch.Tensor] | None = None
        self.sq_norm_sum = 0.0
        self.pieces = 0

    def _advance(self) -> tuple[float, float]:
        """(‖G_k - G_{k-1}‖², ‖G_k‖²), with the buffers moved on to G_k."""
        assert self.params is not None and self.previous is not None
        piece, total = 0.0, 0.0
        for param, previous in zip(self.params, self.previous, strict=True):
            current = torch.zeros_like(previous) if param.grad is None else param.grad.detach().to(previous.dtype)
            piece += float((current - previous).double().pow(2).sum())
            total += float(current.double().pow(2).sum())
            previous.copy_(current)
        return piece, total

    def before_micro_batch(self, logp: torch.Tensor) -> None:
        """Record the piece of the previous micro-batch (G_k - G_{k-1}) and remember G_k."""
        if not logp.requires_grad:
            return
        if self.params is None:
            self.params = autograd_parameters(logp)
        if self.previous is None:
            self.previous = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
            self._advance()  # the step's starting gradient (zero after the optimizer's zero_grad)
            return
        piece, _ = self._advance()
        self.sq_norm_sum += piece
        self.pieces += 1

    def finish(self) -> tuple[float, float, int]:
        """(S, ‖G‖², K) of the step, the last piece included; resets for the next step."""
        if self.params is None or self.previous is None:
            self.sq_norm_sum, self.pieces = 0.0, 0
            return 0.0, 0.0, 0
        piece, total = self._advance()
        result = (self.sq_norm_sum + piece, total, self.pieces + 1)
        self.previous, self.sq_norm_sum, self.pieces = None, 0.0, 0
        return result


@OBJECTIVES.register("oblr_po", config=OblrPoConfig, group_relative=True)
class OBLRPO(GRPO):
    """GRPO with the SNR-scaled learning rate and the length-weighted baseline."""

    name = "oblr_po"

    def __init__(self, config: ObjectiveConfig, max_response_length: int):
        super().__init__(config, max_response_length)
        self.gradients = GradientPieces()
        self.signal_ema: float | None = None
        self.noise_ema: float | None = None

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        if self.config.oblr_po.baseline == "group_mean":
            advantages, metrics = super().compute_advantages(inputs)
            return advantages, {**metrics, "oblr_po/baseline_mean": float(inputs.rewards.double().mean() - advantages.double().mean())}
        baseline = length_weighted_baseline(inputs.rewards, inputs.response_lengths, inputs.group_index)
        centred = inputs.rewards.to(torch.float64) - baseline
        if self.normalize_by_std:
            stats = group_statistics(inputs.rewards, inputs.group_index, std_unbiased=self.config.std_unbiased)
            centred = centred / (stats.std[stats.ids].to(torch.float64) + self.config.adv_eps)
        advantages = centred.to(torch.float32)
        metrics = self.advantage_metrics(inputs, advantages)
        metrics["oblr_po/baseline_mean"] = float(baseline.mean()) if baseline.numel() else 0.0
        return advantages, metrics

    def compute_loss(self, inputs: LossInputs, scale: StepScale) -> tuple[torch.Tensor, Metrics]:
        self.gradients.before_micro_batch(inputs.logp)
        return super().compute_loss(inputs, scale)

    def lr_scale(self, step_inputs: dict[str, torch.Tensor]) -> tuple[float, Metrics]:
        del step_inputs
        sq_sum, total, pieces = self.gradients.finish()
        if pieces < 2 or total <= 0:
            return 1.0, {"oblr_po/snr_available": 0.0, "oblr_po/lr_scale": 1.0, "oblr_po/micro_batches": float(pieces)}
        _, signal, noise = snr_lr_scale(sq_sum, total, pieces)
        cfg = self.config.oblr_po
        if cfg.ema > 0 and self.signal_ema is not None and self.noise_ema is not None:
            signal = cfg.ema * self.signal_ema + (1 - cfg.ema) * signal
            noise = cfg.ema * self.noise_ema + (1 - cfg.ema) * noise
        self.signal_ema, self.noise_ema = signal, noise
        raw = signal / (signal + noise) if signal + noise > 0 else 1.0
        multiplier = min(max(raw, cfg.min_scale), 1.0)
        snr = signal / noise if noise > 0 else float("inf")
        return multiplier, {
            "oblr_po/snr_available": 1.0,
            "oblr_po/snr": min(snr, 1e12),
            "oblr_po/lr_scale": multiplier,
            "oblr_po/micro_batches": float(pieces),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"signal_ema": self.signal_ema, "noise_ema": self.noise_ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.signal_ema = state.get("signal_ema")
        self.noise_ema = state.get("noise_ema")
