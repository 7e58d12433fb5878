"""Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language
Models", arXiv 2505.22617; verl `policy_loss.loss_mode: clip_cov`).

The paper shows that the policy entropy falls in proportion to the covariance between a token's
log-probability and its advantage, and that a small fraction of tokens with a large covariance drives
the collapse. Clip-Cov takes those tokens out of the gradient: per valid token of the step

    cov_t = (A_t - mean(A)) · (log π(o_t) - mean(log π))      (means over the step's valid tokens)

and among the tokens with clip_cov_lb < cov_t < clip_cov_ub, clip_cov_ratio × (valid tokens) of them
(at least 1) are drawn at random; their loss is multiplied by 0 (they stay in the normalisers). The loss
is otherwise GRPO's clipped surrogate with GRPO's advantages. Defaults are verl's: ratio 2e-4, bounds
1 and 5, clip 0.2.

Reconstructed, to keep the update independent of the micro-batching (rlpost's rule, and
`tests/objectives/test_split_invariance.py`): the selection is made once per optimizer step over the
whole step's tokens (`token_weights`, as GTPO's), not per micro-batch as verl does, and the log-probs
it uses are the rollout engine's (the sampling policy's; on-policy, the current policy's before the
step up to the engine's numerics) instead of the learner's. verl also leaves out tokens the PPO clip
already removed; on the first update no ratio is clipped, so the selection ignores the clip.
"""

from __future__ import annotations

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, LossInputs, Metrics, StepScale
from rlpost.objectives.core import PolicyLossTerms, broadcast_to_tokens, clip_advantages, masked_mean, token_share
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES


class ClipCovConfig(Section):
    """Which high-covariance tokens leave the gradient."""

    clip_cov_ratio: float = Field(2e-4, gt=0.0, le=1.0)
    """Fraction of the step's valid tokens whose gradient is removed (at least one token; verl's default)."""
    clip_cov_lb: float = 1.0
    """Lower bound: only tokens with covariance above it are candidates (verl's default)."""
    clip_cov_ub: float = 5.0
    """Upper bound: only tokens with covariance below it are candidates (verl's default)."""


def token_covariance(advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] float64 per-token covariance term (A - mean A)·(logp - mean logp), means over valid tokens;
    0 on padding. `advantages` [N] (per sequence) or [N, T]; `logp` is used detached."""
    adv = broadcast_to_tokens(advantages.detach().to(torch.float64), logp)
    logp64 = logp.detach().to(torch.float64)
    cov = (adv - masked_mean(adv, mask)) * (logp64 - masked_mean(logp64, mask))
    return torch.where(mask.bool(), cov, torch.zeros_like(cov))


def selection_count(mask: torch.Tensor, ratio: float) -> int:
    """max(int(ratio · valid tokens), 1), verl's count of selected tokens."""
    return max(int(ratio * float(mask.sum())), 1)


def clip_cov_selection(
    cov: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio: float,
    lower: float,
    upper: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[N, T] bool: at most `selection_count(mask, ratio)` valid tokens drawn uniformly at random among
    those with lower < cov < upper (all of them if there are fewer)."""
    candidates = (mask > 0) & (cov > lower) & (cov < upper)
    index = torch.nonzero(candidates.flatten()).squeeze(-1)
    count = selection_count(mask, ratio)
    if index.numel() > count:
        index = index[torch.randperm(index.numel(), generator=generator)[:count]]
    selected = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    selected[index] = True
    return selected.view_as(cov)


def step_covariance(objective: GRPO, inputs: AdvantageInputs) -> torch.Tensor:
    """The step's per-token covariance [N, T] from its final advantages (the method's, clipped by the
    shared `advantage_clip`) and the rollout's log-probs, for the step-level token selections."""
    if inputs.behaviour_logp is None or inputs.mask is None:
        raise ValueError(f"{objective.name}: the token selection needs AdvantageInputs.behaviour_logp and .mask")
    advantages, _ = objective.compute_advantages(inputs)
    advantages, _ = clip_advantages(advantages, objective.config.advantage_clip, inputs.mask)
    return token_covariance(advantages, inputs.behaviour_logp, inputs.mask)


@OBJECTIVES.register(
    "clip_cov",
    config=ClipCovConfig,
    defaults={"clip_low": 0.2, "clip_high": 0.2, "clip_c": None, "loss_agg": "token-mean"},
    group_relative=True,
)
class ClipCov(GRPO):
    """A = GRPO's; loss = GRPO's clipped surrogate times 0 on a few high-covariance tokens (token_weights)."""

    name = "clip_cov"

    def token_weights(self, inputs: AdvantageInputs) -> torch.Tensor:
        """[N, T]: 0 on the step's selected tokens, 1 elsewhere (the loss multiplier, verl's `corr`)."""
        cfg = self.config.clip_cov
        cov = step_covariance(self, inputs)
        selected = clip_cov_selection(
            cov, inputs.mask, ratio=cfg.clip_cov_ratio, lower=cfg.clip_cov_lb, upper=cfg.clip_cov_ub
        )
        return (~selected).to(torch.float32)

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        terms = super().policy_terms(inputs)
        if inputs.token_weights is not None:
            terms.loss = terms.loss * inputs.token_weights.to(terms.loss.dtype)
        return terms

    def clip_metrics(self, terms: PolicyLossTerms, inputs: LossInputs, scale: StepScale) -> Metrics:
        """PPO's clip metrics plus clip_cov/selected_frac, the fraction of tokens taken out of the gradient."""
        metrics = super().clip_metrics(terms, inputs, scale)
        removed = 1.0 - inputs.token_weights if inputs.token_weights is not None else torch.zeros_like(inputs.mask)
        metrics["clip_cov/selected_frac"] = token_share(removed, inputs.mask, scale)
        return metrics
