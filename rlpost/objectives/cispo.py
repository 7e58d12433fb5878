"""CISPO: Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, eq. 4-5).

Instead of clipping the update (PPO's min, which drops the gradient of every token whose ratio left
the trust region, often the rare "fork" tokens of a reasoning chain), CISPO clips the importance
weight and stops its gradient, so every token keeps a REINFORCE gradient:

    loss_t = -sg(clip(r_t, 1 - is_clip_low, 1 + is_clip_high)) · A_i · log π_θ(o_t),  r_t = π_θ / π_old

aggregated per token over the step (the paper's 1/Σ|o_i| normaliser: `loss_agg: token-mean`). The
advantage is GRPO's group-normalised one; the paper uses no KL term (`kl_coef: 0`). The shared PPO knobs
clip_low, clip_high and clip_c play no part; `objective.clip: false` removes the IS truncation as well.

Reconstructed: the paper sets no lower bound ("ε_low^IS large") and tunes ε_high^IS without publishing
it; the defaults here, is_clip_low 1.0 (weight floor 0) and is_clip_high 0.28, are Trinity-RFT's. The
loss is written in the paper's form (-ŵ·A·log π, whose value is not the PPO loss's -A·r; the gradient
-ŵ·A·∇log π is what matters). The log-ratio is clamped to ±20 before exp, as the PPO surrogate's.
"""

from __future__ import annotations

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import LossInputs, Metrics, StepScale
from rlpost.objectives.core import LOG_RATIO_CLAMP, PolicyLossTerms, broadcast_to_tokens, ppo_kl_share, token_share
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES


class CispoConfig(Section):
    """Bounds of the clipped, stop-gradient importance weight."""

    is_clip_low: float = Field(1.0, ge=0.0)
    """eps_low^IS: the weight is floored at 1 - is_clip_low; 1.0 (floor 0) imposes no lower bound, as the paper."""
    is_clip_high: float = Field(0.28, ge=0.0)
    """eps_high^IS: the weight is capped at 1 + is_clip_high (the paper's only tuned bound; Trinity-RFT's default)."""


def cispo_policy_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    is_clip_low: float,
    is_clip_high: float,
    clip_enabled: bool = True,
) -> PolicyLossTerms:
    """Per-token CISPO loss -sg(ŵ)·A·logp, [N, T], ŵ = clip(exp(clamp(logp - old_logp, ±20)), 1-low, 1+high).

    `clipped_upper` / `clipped_lower` mark weights truncated at the cap / floor: unlike PPO's clip, the
    token keeps its gradient (scaled by the bound). `dual_clipped` is never set.
    """
    adv = broadcast_to_tokens(advantages, logp).to(logp.dtype)
    ratio = torch.exp(torch.clamp(logp.detach() - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    no_event = torch.zeros_like(ratio, dtype=torch.bool)
    if clip_enabled:
        upper, lower = ratio > 1.0 + is_clip_high, ratio < 1.0 - is_clip_low
        weight = torch.clamp(ratio, min=1.0 - is_clip_low, max=1.0 + is_clip_high)
    else:
        upper, lower, weight = no_event, no_event, ratio
    loss = -weight * adv * logp
    return PolicyLossTerms(loss=loss, ratio=ratio, clipped_upper=upper, clipped_lower=lower, dual_clipped=no_event)


@OBJECTIVES.register(
    "cispo",
    config=CispoConfig,
    defaults={"clip_c": None, "loss_agg": "token-mean", "kl_coef": 0.0},
    group_relative=True,
)
class CISPO(GRPO):
    """A = GRPO's; loss = -sg(clip(r, 1-eps_low, 1+eps_high))·A·log π on every token, token-mean."""

    name = "cispo"

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        cfg = self.config
        return cispo_policy_terms(
            inputs.logp,
            inputs.old_logp,
            inputs.advantages,
            is_clip_low=cfg.cispo.is_clip_low,
            is_clip_high=cfg.cispo.is_clip_high,
            clip_enabled=cfg.clip,
        )

    def clip_metrics(self, terms: PolicyLossTerms, inputs: LossInputs, scale: StepScale) -> Metrics:
        """cispo/is_clip_frac_high|low: tokens whose weight hit the cap / floor (they keep a gradient);
        cispo/is_weight_mean: the mean truncated weight; actor/ppo_kl and actor/ratio_mean as PPO's."""
        cfg = self.config.cispo
        weight = (
            torch.clamp(terms.ratio, min=1.0 - cfg.is_clip_low, max=1.0 + cfg.is_clip_high)
            if self.config.clip
            else terms.ratio
        )
        mask = inputs.mask
        return {
            "cispo/is_clip_frac_high": token_share(terms.clipped_upper, mask, scale),
            "cispo/is_clip_frac_low": token_share(terms.clipped_lower, mask, scale),
            "cispo/is_weight_mean": token_share(weight, mask, scale),
            "actor/ppo_kl": ppo_kl_share(inputs.logp, inputs.old_logp, mask, scale),
            "actor/ratio_mean": token_share(terms.ratio, mask, scale),
        }
