"""GSPO: Group Sequence Policy Optimization, in its GSPO-token form.

ALGORITHMS.md §3 (paper via secondary sources; verl compute_policy_loss_gspo). The ratio is the
length-normalised sequence ratio s_i = exp(mean_t(logp - old_logp)), clipped per sequence, so a
clipped sequence contributes no gradient at all. The GSPO-token form
s_{i,t} = sg(s_i)·π_θ(o_t)/sg(π_θ(o_t)) has GSPO's value and gradient for a per-sequence
advantage and also admits per-token advantages.

As in verl: the token log-ratio log s_{i,t} is clamped above at `gspo.log_ratio_max`, gradient
included (a sequence beyond it contributes no gradient), there is no dual clip, and the
method defaults are clip 3e-4/4e-4 with seq-mean-token-mean (tiny ranges because s_i is a
geometric mean). Unlike verl, the aggregation follows `objective.loss_agg` if it is set explicitly.
"""

from __future__ import annotations

import torch

from rlpost.config.base import Section
from rlpost.objectives.base import LossInputs, Metrics, StepScale
from rlpost.objectives.core import (
    PolicyLossTerms,
    ppo_kl_share,
    sequence_share,
    sequence_token_means,
    token_share,
)
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES
from rlpost.ops.policy_loss import policy_loss_terms


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, log_ratio_max: float = 10.0) -> torch.Tensor:
    """log s_i = (1/|o_i|) Σ_t (logp - old_logp)·M, clamped above at log_ratio_max. [N, T] -> [N]."""
    return torch.clamp(sequence_token_means(logp - old_logp, mask), max=log_ratio_max)


def gspo_token_policy_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_enabled: bool = True,
    log_ratio_max: float = 10.0,
    fused: bool = False,
) -> PolicyLossTerms:
    """GSPO-token surrogate per token, [N, T]: the §0.1 surrogate applied to s_{i,t}.

    The token ratio log s_{i,t} = sg(log s_i) + logp - sg(logp) is obtained by handing the core
    surrogate the reference point old' = sg(logp) - sg(log s_i), so the clamp, clip and metrics
    stay those of `policy_loss_per_token`. As verl clamps the whole log s_{i,t} (gradient path
    included) at log_ratio_max, a sequence whose log s_i exceeds it gets zero gradient: its logp
    enters detached. (Below -20 the core clamp also zeroes it; verl keeps a gradient of e^-20.)
    `fused`: the surrogate through the fused op (`rlpost.ops.policy_loss_terms`, `learner.fused_ops`).
    """
    log_s = sequence_token_means(logp.detach() - old_logp, mask)
    over = (log_s > log_ratio_max).unsqueeze(-1)
    reference = logp.detach() - torch.clamp(log_s, max=log_ratio_max).unsqueeze(-1)
    logp = torch.where(over, logp.detach(), logp)
    return policy_loss_terms(
        logp, reference, advantages, clip_low=clip_low, clip_high=clip_high, clip_c=None, clip_enabled=clip_enabled,
        fused=fused,
    )


class GspoConfig(Section):
    """Guard of the sequence log-ratio."""

    log_ratio_max: float = 10.0
    """Upper clamp of the sequence log-ratio log s_i before exp (verl's guard)."""


# §3: tiny ranges because the sequence ratio is a geometric mean; verl forces seq-mean-token-mean.
@OBJECTIVES.register(
    "gspo", config=GspoConfig, defaults={"clip_low": 3e-4, "clip_high": 4e-4, "clip_c": None, "loss_agg": "seq-mean-token-mean"},
    group_relative=True,
)
class GSPO(GRPO):
    name = "gspo"

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        cfg = self.config
        return gspo_token_policy_terms(
            inputs.logp,
            inputs.old_logp,
            inputs.advantages,
            inputs.mask,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            clip_enabled=cfg.clip,
            log_ratio_max=cfg.gspo.log_ratio_max,
            fused=inputs.fused_ops,
        )

    def clip_metrics(self, terms: PolicyLossTerms, inputs: LossInputs, scale: StepScale) -> Metrics:
        """Sequence-level clip fraction (each sequence's clipped-token fraction, averaged over sequences),
        verl's token-level one (`actor/pg_clipfrac_token`, clipped tokens / tokens), and the |log s_i|
        moments (additive shares over valid sequences).
        The std of |log s| is sqrt(abs_log_ratio_sq_mean - abs_log_ratio_mean²) of the summed shares."""
        mask = inputs.mask
        abs_log_s = sequence_log_ratio(inputs.logp.detach(), inputs.old_logp, mask, self.config.gspo.log_ratio_max).abs()
        return {
            "actor/pg_clipfrac": sequence_share(sequence_token_means(terms.clipped.double(), mask), mask, scale),
            "actor/pg_clipfrac_high": sequence_share(sequence_token_means(terms.clipped_upper.double(), mask), mask, scale),
            "actor/pg_clipfrac_low": sequence_share(sequence_token_means(terms.clipped_lower.double(), mask), mask, scale),
            "actor/pg_clipfrac_token": token_share(terms.clipped, mask, scale),
            "actor/ppo_kl": ppo_kl_share(inputs.logp, inputs.old_logp, mask, scale),
            "gspo/abs_log_ratio_mean": sequence_share(abs_log_s, mask, scale),
            "gspo/abs_log_ratio_sq_mean": sequence_share(abs_log_s**2, mask, scale),
        }
