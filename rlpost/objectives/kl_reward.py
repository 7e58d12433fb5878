"""KL in the reward: a per-token k1 penalty folded into the advantages, with a fixed or adaptive coefficient.

PPO's KL-in-reward (Ziegler et al. 2019, arXiv 1909.08593 §2.2; verl `use_kl_in_reward` with
`algorithm.kl_ctrl`; OpenRLHF `compute_reward`), usable with every objective, beside the KL-in-loss
term (`objective.kl_coef`). Per token, with no gradient,

    kl_t = old_logp_t - ref_logp_t                          (k1, verl's `kl`)
    A_t  = A_seq - beta * sum_{s >= t} kl_s                 (the reward-to-go of the penalty)

where A_seq is the objective's advantage ([N], or [N, T] taken per token). This is OpenRLHF's
placement: the outcome advantage is computed from the task reward alone and the penalty's
reward-to-go (gamma 1) is added per token, so no group statistics are needed and the learner applies
it (`rlpost.learner.learner.Learner`, where the reference log-probs are). verl instead folds beta·kl
into `token_level_rewards` before the advantage estimator: with GRPO the penalty is summed over the
sequence and group-normalised with the task reward (mean-centred, divided by the group std), so its
per-token credit is lost; rlpost does not do that.

The coefficient beta is a controller's state (`KLController`): fixed, or PPO's adaptive one, which
after each step moves beta towards the target KL:

    error = clip(current_kl / target_kl - 1, -0.2, 0.2)
    beta  <- beta * (1 + error * n_steps / horizon)

with current_kl the step's mean KL (mean over sequences of each one's token mean, as verl measures
it) and n_steps the step's number of sequences (verl passes the batch size).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from rlpost.config.base import Section

ADAPTIVE_ERROR_CLIP = 0.2
"""Bound of the proportional error of the adaptive controller (PPO, verl, OpenRLHF, TRL)."""


class KLInRewardConfig(Section):
    """KL penalty in the reward: per-token k1 KL to the reference (no gradient) subtracted from the advantages
    as its reward-to-go, with a fixed or adaptive coefficient (PPO). Works with every objective, beside `kl_coef`."""

    enabled: bool = False
    """Fold beta * sum_{s>=t} (old_logp_s - ref_logp_s) into every token's advantage; loads the reference model."""
    init_coef: float = Field(0.001, gt=0)
    """Initial coefficient beta (verl `kl_ctrl.kl_coef`, default 0.001)."""
    type: Literal["fixed", "adaptive"] = "fixed"
    """`fixed`: beta stays init_coef. `adaptive`: PPO's controller moves beta towards target_kl after each step."""
    target_kl: float = Field(0.1, gt=0)
    """Adaptive controller: the step mean KL that beta is steered towards (verl default 0.1)."""
    horizon: int = Field(10000, ge=1)
    """Adaptive controller: beta changes by at most 20% * sequences_per_step / horizon per step (verl default 10000)."""


def k1_kl(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] per-token k1 estimate old_logp - ref_logp on valid tokens, 0 elsewhere (no gradient)."""
    return ((old_logp.detach() - ref_logp.detach()) * mask).to(torch.float32)


def reward_to_go(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> [N, T]: sum_{s >= t} values_s * mask_s on valid tokens (undiscounted), 0 elsewhere."""
    masked = values * mask
    return masked.flip(1).cumsum(1).flip(1) * mask


def penalized_advantages(advantages: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """[N] or [N, T] advantages -> [N, T]: A_t - coef * reward_to_go(kl)_t (padding keeps A)."""
    per_token = advantages.unsqueeze(1).expand_as(kl) if advantages.dim() == 1 else advantages[:, : kl.shape[1]]
    return per_token.to(torch.float32) - coef * reward_to_go(kl, mask)


def sequence_mean_sums(kl: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(sum over sequences of each one's token-mean KL, number of sequences with a valid token).

    Sums, so that ranks can add theirs: the step's mean KL is their ratio (verl's
    mean over sequences of `masked_mean(kld, mask, axis=-1)`)."""
    tokens = mask.sum(dim=1)
    present = tokens > 0
    means = (kl * mask).sum(dim=1)[present] / tokens[present]
    return float(means.double().sum()), int(present.sum())


class KLController:
    """The KL-in-reward coefficient beta: fixed, or PPO's adaptive controller. `value` is beta."""

    def __init__(self, init_coef: float, kind: Literal["fixed", "adaptive"] = "fixed", target_kl: float = 0.1,
                 horizon: int = 10000):
        if kind not in ("fixed", "adaptive"):
            raise ValueError(f"unknown KL controller type {kind!r}: use fixed or adaptive")
        self.value = float(init_coef)
        self.kind = kind
        self.target_kl = target_kl
        self.horizon = horizon

    @classmethod
    def from_config(cls, config: KLInRewardConfig) -> KLController | None:
        """The controller of `objective.kl_in_reward`, or None when the penalty is off."""
        if not config.enabled:
            return None
        return cls(config.init_coef, config.type, config.target_kl, config.horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move beta after a step whose mean KL was `current_kl` over `n_steps` sequences; returns the new beta."""
        if self.kind == "adaptive":
            error = min(max(current_kl / self.target_kl - 1.0, -ADAPTIVE_ERROR_CLIP), ADAPTIVE_ERROR_CLIP)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
