"""KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language
Models", arXiv 2505.22617; verl `policy_loss.loss_mode: kl_cov`).

The sibling of Clip-Cov (`rlpost.objectives.clip_cov`): instead of removing the gradient of the tokens
with the largest covariance between log-probability and advantage, it keeps them in the loss with a
KL penalty towards the old policy. With cov_t as in Clip-Cov, the top kl_cov_ratio × (valid tokens)
of the step (at least 1) by cov_t get

    loss_t = -A_t · r_t + ppo_kl_coef · |log π_θ(o_t) - log π_old(o_t)|

and every other token -A_t · r_t: no PPO clip at all (the KL term replaces it; registered default
`clip: false`). Advantages are GRPO's. Defaults are verl's: ratio 2e-4, coefficient 1.

The penalty |log r_t| and its gradient are 0 while the policy equals the old one, so it acts only from
the second optimizer step on a batch: configs/kl_cov.yaml sets `learner.updates_per_batch: 2` (the
paper's runs take 8 mini-batch updates per batch).

Reconstructed, as Clip-Cov's: the top-k is taken once per optimizer step over the whole step's tokens
(`token_weights`), with the rollout engine's log-probs, instead of per micro-batch with the learner's,
so the update does not depend on the micro-batching.
"""

from __future__ import annotations

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, LossInputs, Metrics, StepScale
from rlpost.objectives.clip_cov import selection_count, step_covariance
from rlpost.objectives.core import LOG_RATIO_CLAMP, PolicyLossTerms, token_share
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES


class KlCovConfig(Section):
    """Which high-covariance tokens get the KL penalty, and its weight."""

    kl_cov_ratio: float = Field(2e-4, gt=0.0, le=1.0)
    """Fraction of the step's valid tokens, those of largest covariance, that get the penalty (at least one; verl's default)."""
    ppo_kl_coef: float = Field(1.0, ge=0.0)
    """Weight of the |log π_θ - log π_old| penalty on the selected tokens (verl's default)."""


def kl_cov_selection(cov: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """[N, T] bool: the `selection_count(mask, ratio)` valid tokens of largest covariance (ties: torch.topk's order)."""
    selected = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    valid = torch.nonzero(mask.flatten() > 0).squeeze(-1)
    if valid.numel() == 0:
        return selected.view_as(cov)
    count = min(selection_count(mask, ratio), valid.numel())
    top = torch.topk(cov.flatten()[valid], count, largest=True).indices
    selected[valid[top]] = True
    return selected.view_as(cov)


@OBJECTIVES.register(
    "kl_cov",
    config=KlCovConfig,
    defaults={"clip": False, "clip_c": None, "loss_agg": "token-mean"},
    group_relative=True,
)
class KLCov(GRPO):
    """A = GRPO's; loss = -A·r + ppo_kl_coef·|log r| on the top-covariance tokens (token_weights), -A·r elsewhere."""

    name = "kl_cov"

    def token_weights(self, inputs: AdvantageInputs) -> torch.Tensor:
        """[N, T]: 1 on the step's selected tokens, 0 elsewhere (the weight of the KL penalty)."""
        selected = kl_cov_selection(step_covariance(self, inputs), inputs.mask, self.config.kl_cov.kl_cov_ratio)
        return selected.to(torch.float32)

    def abs_log_ratio(self, inputs: LossInputs) -> torch.Tensor:
        """[N, T] |log π_θ - log π_old|, the log-ratio clamped to ±20 as the surrogate's."""
        return torch.clamp(inputs.logp - inputs.old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).abs()

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        terms = super().policy_terms(inputs)
        if inputs.token_weights is not None:
            weights = inputs.token_weights.to(terms.loss.dtype)
            terms.loss = terms.loss + self.config.kl_cov.ppo_kl_coef * weights * self.abs_log_ratio(inputs)
        return terms

    def clip_metrics(self, terms: PolicyLossTerms, inputs: LossInputs, scale: StepScale) -> Metrics:
        """PPO's metrics plus kl_cov/selected_frac (tokens penalised) and kl_cov/abs_kl (mean |log r| over
        them, as a share of all tokens: the penalty before its coefficient)."""
        metrics = super().clip_metrics(terms, inputs, scale)
        weights = inputs.token_weights if inputs.token_weights is not None else torch.zeros_like(inputs.mask)
        metrics["kl_cov/selected_frac"] = token_share(weights, inputs.mask, scale)
        metrics["kl_cov/abs_kl"] = token_share(weights * self.abs_log_ratio(inputs).detach(), inputs.mask, scale)
        return metrics
