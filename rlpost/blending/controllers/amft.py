"""AMFT (Adaptive Meta Fine-Tuning), ALGORITHMS.md §9: an "inspired-by" implementation.

Read §9's warnings: the paper is under an integrity investigation and the released code is a
skeleton (its rollouts are random tensors). What is reproduced is the code's controller:

    warm-up: `warmup_steps` SFT-only steps
    H_target = the policy's mean token entropy on demonstrations right after warm-up
               (measured on the first hybrid step's demonstrations, before its update)
    each hybrid step, before its update (the code updates mu, then uses it):
        H_t    = the policy's mean token entropy on the step's rollouts
        g_meta = -eta * <grad L_val, grad L_SFT - grad L_RL>   on every `meta_update_freq`-th hybrid step
                                                              (the first included), else 0
        mu     <- clip(mu - meta_lr * g_meta + entropy_lr * (H_target - H_t), mu_min, mu_max)
        L      = (1 - mu) L_RL + mu L_SFT

**The sign of the meta term.** With theta' = theta - eta [(1 - mu) grad L_RL + mu grad L_SFT], the
one-step look-ahead gives dL_val(theta')/dmu ~ -eta <grad L_val, grad L_SFT - grad L_RL> = g_meta.
The published code computes this g_meta and then *adds* meta_lr * g_meta to mu, a gradient step
that *increases* the validation loss. rlpost subtracts it (descends L_val; §9.1's recommendation):
when the SFT gradient agrees with the validation gradient more than the RL gradient does, mu grows.

Other choices, documented:
- L_RL is the configured `objective` (GRPO family); the code's PPO with a value head does not apply.
- L_val is the SFT NLL of the demonstrations of `validation_size` training rows held out from
  training by a seeded draw (the code uses a separate validation set); all of them, every meta step.
- eta is `policy_lr`, or the optimizer's learning rate at that step when null. meta_lr * eta is
  tiny (1e-4 * 1e-6 in the authors' config), so in practice mu follows the entropy term (§9.1).
- Entropies are means over completion tokens (the code's target also averages prompt tokens).
- The meta-gradient is first order and ignores that AdamW does not step along the raw gradient.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import Field, model_validator

from rlpost.blending.base import BlendController, BlendPlan, BlendProbe, Metrics, StepStats, register_controller
from rlpost.config.base import Section
from rlpost.types import Prompt


class AmftConfig(Section):
    """AMFT (§9): SFT warm-up, then L = (1 - mu) L_RL + mu L_SFT with a learned mu.

    Each hybrid step, before the update: mu <- clip(mu - meta_lr * g_meta + entropy_lr * (H_target - H_t)),
    with H_t the policy's token entropy on the step's rollouts and H_target its entropy on
    demonstrations right after warm-up. Every `meta_update_freq` hybrid steps,
    g_meta = -eta * <grad L_val, grad L_SFT - grad L_RL> (one-step look-ahead, first order; L_val is
    the NLL of held-out demonstrations), otherwise 0. The published code *adds* meta_lr * g_meta,
    which ascends the validation loss; rlpost subtracts it, descending L_val (§9.1).
    """

    warmup_steps: int = Field(5, ge=0)
    """SFT-only steps before the hybrid phase (the authors' config: 50)."""
    initial_mu: float = Field(0.8, ge=0, le=1)
    """mu at the start of the hybrid phase (the configs use 0.8; the controller's default and the README say 0.5)."""
    mu_min: float = Field(0.05, ge=0, le=1)
    """Lower clamp of mu."""
    mu_max: float = Field(0.95, ge=0, le=1)
    """Upper clamp of mu."""
    meta_lr: float = Field(1e-4, ge=0)
    """eta_meta: step size of the meta-gradient term."""
    entropy_lr: float = Field(5e-4, ge=0)
    """eta_ent: step size of the entropy term (lower entropy than the target -> more SFT)."""
    meta_update_freq: int = Field(20, ge=1)
    """Compute g_meta on every this many hybrid steps (the first hybrid step included); it costs one more backward pass and two gradient-sized buffers."""
    policy_lr: float | None = Field(None, gt=0)
    """eta in g_meta; null uses the optimizer's learning rate at that step (the authors use their policy_lr, 1e-6)."""
    validation_size: int = Field(16, ge=1)
    """Training rows held out (by a seeded draw) whose demonstrations form the validation batch of L_val; they are never trained on."""

    @model_validator(mode="after")
    def _ordered(self) -> AmftConfig:
        if self.mu_min > self.mu_max:
            raise ValueError(f"mu_min ({self.mu_min}) must be <= mu_max ({self.mu_max})")
        return self


def meta_gradient(val_dot_sft: float, val_dot_rl: float, eta: float) -> float:
    """g_meta = dL_val(theta')/dmu ~ -eta * (<grad L_val, grad L_SFT> - <grad L_val, grad L_RL>)."""
    return -eta * (val_dot_sft - val_dot_rl)


def update_mu(
    mu: float,
    *,
    g_meta: float,
    target_entropy: float | None,
    entropy: float | None,
    meta_lr: float,
    entropy_lr: float,
    mu_min: float,
    mu_max: float,
) -> tuple[float, bool]:
    """(new mu, whether it was clipped): mu - meta_lr * g_meta + entropy_lr * (H_target - H_t), clipped.

    The entropy term is left out when either entropy is unknown (no demonstration or rollout tokens).
    """
    change = -meta_lr * g_meta
    if target_entropy is not None and entropy is not None:
        change += entropy_lr * (target_entropy - entropy)
    raw = mu + change
    clipped = min(max(raw, mu_min), mu_max)
    return clipped, clipped != raw


@register_controller("amft", config=AmftConfig, holds_out_validation=True, combines_gradients=True)
class AMFT(BlendController):
    def __init__(self, config, seed: int):
        super().__init__(config, seed)
        self.settings = config.amft
        self.mu = float(self.settings.initial_mu)
        self.target_entropy: float | None = None
        self.steps_done = 0
        self.hybrid_steps = 0
        self.bound_hits = 0
        self._pending: BlendPlan | None = None
        self._last: Metrics = {}

    @property
    def in_warmup(self) -> bool:
        return self.steps_done < self.settings.warmup_steps

    def split_validation(self, prompts: list[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
        """Hold out `validation_size` prompts, drawn with a seeded RNG (the same on every resume)."""
        size = self.settings.validation_size
        if len(prompts) <= size:
            raise ValueError(
                f"amft: blending.amft.validation_size = {size} leaves no training prompts out of {len(prompts)}"
            )
        order = list(range(len(prompts)))
        random.Random(f"rlpost.amft/{self.seed}").shuffle(order)
        held = set(order[:size])
        return [p for i, p in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held)]

    def plan(self, stats: StepStats) -> BlendPlan:
        n = len(stats.groups)
        if self.in_warmup:
            plan = BlendPlan.sft_only(n, metrics={"amft/warmup": 1.0})
        else:
            everything = list(range(n))
            plan = BlendPlan(
                "mixed",
                everything,
                everything,
                rl_weight=1.0 - self.mu,
                sft_weight=self.mu,
                defer_weights=True,
                rl_entropy=True,
                sft_entropy=self.target_entropy is None,
                meta_gradient=self.hybrid_steps % self.settings.meta_update_freq == 0,
                metrics={"amft/warmup": 0.0},
            )
        self._pending = plan
        return plan

    def decide(self, probe: BlendProbe) -> tuple[float, float]:
        plan = self._pending
        if plan is None or not plan.defer_weights:
            raise RuntimeError("amft: decide() outside a hybrid step")
        s = self.settings
        if self.target_entropy is None:
            self.target_entropy = probe.sft_entropy
        g_meta = 0.0
        if plan.meta_gradient and probe.val_dot_sft is not None and probe.val_dot_rl is not None:
            eta = s.policy_lr if s.policy_lr is not None else probe.lr
            g_meta = meta_gradient(probe.val_dot_sft, probe.val_dot_rl, eta)
        self.mu, hit = update_mu(
            self.mu,
            g_meta=g_meta,
            target_entropy=self.target_entropy,
            entropy=probe.rl_entropy,
            meta_lr=s.meta_lr,
            entropy_lr=s.entropy_lr,
            mu_min=s.mu_min,
            mu_max=s.mu_max,
        )
        self.bound_hits += int(hit)
        self._last = {"amft/meta_grad": g_meta, "amft/mu_at_bound": float(hit)}
        return 1.0 - self.mu, self.mu

    def observe(self, probe: BlendProbe) -> Metrics:
        plan = self._pending
        if plan is None:
            raise RuntimeError("amft: observe() without a plan() for this step")
        self._pending = None
        metrics: Metrics = {"amft/mu": self.mu, "amft/bound_hits": float(self.bound_hits)}
        if plan.defer_weights:
            self.hybrid_steps += 1
            metrics.update(self._last)
            metrics["amft/meta_step"] = float(plan.meta_gradient)
        self._last = {}
        self.steps_done += 1
        if self.target_entropy is not None:
            metrics["amft/H_target"] = self.target_entropy
        if probe.rl_entropy is not None:
            metrics["amft/entropy"] = probe.rl_entropy
        if probe.val_loss is not None:
            metrics["amft/val_loss"] = probe.val_loss
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "target_entropy": self.target_entropy,
            "steps_done": self.steps_done,
            "hybrid_steps": self.hybrid_steps,
            "bound_hits": self.bound_hits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu = float(state["mu"])
        self.target_entropy = state["target_entropy"]
        self.steps_done = int(state["steps_done"])
        self.hybrid_steps = int(state["hybrid_steps"])
        self.bound_hits = int(state["bound_hits"])
