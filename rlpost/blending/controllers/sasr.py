"""SASR (Step-wise Adaptive integration of SFT and RL), ALGORITHMS.md §7.

**A reconstruction, not the paper's verified algorithm.** No author code was found. The rule below
is the one of a public third-party re-implementation that says it follows the paper's Algorithm 1
(§7.5, which supersedes the earlier reconstruction of §7.2); its defaults were not found, so every
knob is exposed (`blending.sasr.*`).

    warm-up: W SFT steps; G_warmup = ||grad L_SFT|| (before clipping) of the last warm-up step; G_last = G_warmup
    each later step t:
        p_t = G_last / (G_last + gamma * G_warmup + 1e-8), clamped to [p_min, p_max]
        u ~ Uniform(0, 1)
        u < p_t: a pure SFT step, then G_last = ||grad L_SFT|| of this step (before clipping)
        else:    a pure RL step (KL, if any, to the policy frozen after warm-up); G_last unchanged

Each step back-propagates exactly one loss, never a mix. The clamps are rlpost's guard against
G_warmup ~ 0 (p stuck at 1) and are not part of the re-implementation; p_min = 0, p_max = 1
disables them. The SFT gradient norm is the norm of the whole step gradient on SFT steps, read from
the optimizer step before clipping.

SASR's split of each group at the median advantage (§7.1: G+ = {A > median}, G- = {A < median}) is
the option `sasr.median_split`; how G± enters the loss was not visible, so the reconstruction is that
the median replaces the mean as the group's split point: A'_i = A_i - median_g(A), reinforcing the
outputs above the group's median, penalising those below it and leaving those at it out. The
controller rewrites the RL step's advantages in `rl_targets`, which `rlpost.blending.runner.plan_blend`
calls on the RL targets it built (per-sequence advantages only).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from rlpost.blending.base import BlendController, BlendPlan, BlendProbe, Metrics, StepStats, register_controller
from rlpost.config.base import Section

DENOMINATOR_EPS = 1e-8


class SasrConfig(Section):
    """SASR (§7.5): SFT warm-up, then each step is wholly SFT with probability p_t, else wholly RL.

    p_t = G_last / (G_last + gamma * G_warmup), clamped to [p_min, p_max]. G_warmup is the pre-clip
    SFT gradient norm of the last warm-up step; G_last is the pre-clip gradient norm of the latest
    SFT step (updated only on SFT steps). **A reconstruction**: the rule follows a third-party
    re-implementation that says it follows the paper's Algorithm 1; the paper's own code was not
    found (ALGORITHMS.md §7.2, §7.5). Defaults for gamma and the warm-up were not found either.
    """

    warmup_steps: int = Field(5, ge=1)
    """W: SFT-only steps before the hybrid phase (at least 1: G_warmup is measured on the last one)."""
    gamma: float = Field(1.0, gt=0)
    """Weight of the warm-up norm in p_t = G_last / (G_last + gamma * G_warmup); 1 gives p = 0.5 right after warm-up."""
    p_min: float = Field(0.05, ge=0, le=1)
    """Lower clamp of the SFT probability (keeps some SFT even when the SFT gradient vanishes)."""
    p_max: float = Field(0.95, ge=0, le=1)
    """Upper clamp of the SFT probability (keeps some RL when G_warmup is ~0, §7.3)."""
    kl_reference: Literal["post_warmup", "initial"] = "post_warmup"
    """Reference of the RL steps' KL term (when objective.kl_coef > 0): the policy frozen at the end of warm-up (§7.5) or the initial model."""
    seed: int | None = None
    """Seed of the per-step Bernoulli draws; null uses train.seed."""
    median_split: bool = False
    """Split each group at its median advantage on RL steps: A' = A - median of the group's advantages (a reconstruction of §7.1's G+/G- split)."""

    @model_validator(mode="after")
    def _ordered(self) -> SasrConfig:
        if self.p_min > self.p_max:
            raise ValueError(f"p_min ({self.p_min}) must be <= p_max ({self.p_max})")
        return self


def switch_probability(g_last: float, g_warmup: float, gamma: float, p_min: float = 0.0, p_max: float = 1.0) -> float:
    """p_t = G_last / (G_last + gamma * G_warmup + 1e-8), clamped to [p_min, p_max] (§7.5)."""
    p = g_last / (g_last + gamma * g_warmup + DENOMINATOR_EPS)
    return min(max(p, p_min), p_max)


def median_split_advantages(advantages: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """A_i - median of the advantages of i's group ([N] -> [N]); an even group's median is the mean
    of its two middle values."""
    if advantages.dim() != 1:
        raise ValueError("sasr.median_split needs per-sequence advantages ([N]), not per-token ones")
    result = advantages.clone()
    for group in torch.unique(group_index):
        members = group_index == group
        values = torch.sort(advantages[members]).values
        k = values.numel()
        median = values[k // 2] if k % 2 else (values[k // 2 - 1] + values[k // 2]) / 2
        result[members] = advantages[members] - median
    return result


@register_controller("sasr", config=SasrConfig)
class SASR(BlendController):
    def __init__(self, config, seed: int):
        super().__init__(config, seed)
        self.settings = config.sasr
        self.rng = random.Random(self.settings.seed if self.settings.seed is not None else seed)
        self.steps_done = 0
        self.sft_steps = 0
        self.g_warmup: float | None = None
        self.g_last: float | None = None
        self.reference_reset = False
        self._pending: BlendPlan | None = None
        self.median_shift: float | None = None
        """Mean |A' - A| of the pending RL step's median split (logged by `observe`)."""

    @property
    def in_warmup(self) -> bool:
        return self.steps_done < self.settings.warmup_steps

    def probability(self) -> float:
        """P(SFT) of the next hybrid step (1 during warm-up)."""
        if self.in_warmup:
            return 1.0
        s = self.settings
        if self.g_warmup is None or self.g_last is None:  # no finite warm-up norm (e.g. ZeRO gave none)
            return s.p_max
        return switch_probability(self.g_last, self.g_warmup, s.gamma, s.p_min, s.p_max)

    def plan(self, stats: StepStats) -> BlendPlan:
        n = len(stats.groups)
        p = self.probability()
        metrics: Metrics = {"sasr/p_sft": p, "sasr/warmup": float(self.in_warmup), "sasr/median_split": float(self.settings.median_split)}
        if self.in_warmup:
            last_warmup_step = self.steps_done == self.settings.warmup_steps - 1
            reset = last_warmup_step and self.settings.kl_reference == "post_warmup"
            plan = BlendPlan.sft_only(n, reset_reference=reset)
        else:
            u = self.rng.random()
            metrics["sasr/u"] = u
            plan = BlendPlan.sft_only(n) if u < p else BlendPlan.rl_only(n)
        metrics["sasr/step_type"] = 1.0 if plan.step_type == "sft" else 0.0
        plan.metrics = metrics
        self._pending = plan
        return plan

    def observe(self, probe: BlendProbe) -> Metrics:
        plan = self._pending
        if plan is None:
            raise RuntimeError("sasr: observe() without a plan() for this step")
        self._pending = None
        was_warmup = self.in_warmup
        metrics: Metrics = {}
        if plan.step_type == "sft":
            self.sft_steps += 1
            if math.isfinite(probe.grad_norm):
                self.g_last = probe.grad_norm
                if was_warmup and self.steps_done == self.settings.warmup_steps - 1:
                    self.g_warmup = probe.grad_norm
            metrics["sasr/sft_grad_norm"] = probe.grad_norm
        if plan.reset_reference:
            self.reference_reset = True
        self.steps_done += 1
        metrics["sasr/sft_fraction"] = self.sft_steps / self.steps_done
        if self.g_warmup is not None:
            metrics["sasr/G_warmup"] = self.g_warmup
        if self.g_last is not None:
            metrics["sasr/G_last"] = self.g_last
        if probe.kl is not None:
            metrics["sasr/kl_to_reference"] = probe.kl
        if self.median_shift is not None:
            metrics["sasr/median_split_abs_shift"] = self.median_shift
            self.median_shift = None
        return metrics

    @property
    def reference_was_reset(self) -> bool:
        return self.reference_reset

    def rl_targets(self, batch: Any, targets: Any) -> Any:
        """The RL step's targets, with advantages split at each group's median when `median_split` is on."""
        if not self.settings.median_split:
            return targets
        advantages = median_split_advantages(targets.advantages, batch.group_index)
        self.median_shift = float((advantages - targets.advantages).abs().mean()) if advantages.numel() else 0.0
        return replace(targets, advantages=advantages)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "steps_done": self.steps_done,
            "sft_steps": self.sft_steps,
            "g_warmup": self.g_warmup,
            "g_last": self.g_last,
            "reference_reset": self.reference_reset,
            "rng": [version, list(internal), gauss],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.sft_steps = int(state["sft_steps"])
        self.g_warmup = state["g_warmup"]
        self.g_last = state["g_last"]
        self.reference_reset = bool(state["reference_reset"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
