"""GRPO (DeepSeekMath): group-normalised outcome advantages and a token-level clipped surrogate.

ALGORITHMS.md §1. The token-level ratio form that every implementation uses (§1.8), with an
optional KL-to-reference loss term aggregated like the policy loss (verl `use_kl_loss`) and an
optional entropy bonus. Other methods subclass this and override the small hooks below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlpost.objectives.base import AdvantageInputs, LossInputs, Metrics, Objective, StepScale
from rlpost.objectives.core import (
    PolicyLossTerms,
    aggregate_loss,
    batch_metrics,
    group_advantages,
    group_metrics,
    kl_penalty,
    policy_metrics,
    tensor_stats,
    token_share,
)
from rlpost.objectives.registry import OBJECTIVES
from rlpost.ops.policy_loss import policy_loss_terms

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import LossAggregation, ObjectiveConfig


@OBJECTIVES.register("grpo", group_relative=True)
class GRPO(Objective):
    """A_i = (r_i - mean_g)/(std_g + eps); loss = clipped surrogate + kl_coef·KL - entropy_coef·H."""

    name = "grpo"

    def __init__(self, config: ObjectiveConfig, max_response_length: int):
        super().__init__(config, max_response_length)
        self.needs_entropy = config.entropy_coef > 0

    # ---- hooks subclasses override -------------------------------------------------------

    @property
    def normalize_by_std(self) -> bool:
        return self.config.normalize_adv_by_std

    @property
    def loss_agg(self) -> LossAggregation:
        return self.config.loss_agg

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        """Per-token surrogate of this method (GSPO swaps in its sequence ratio); through the fused op
        when the learner asks for it (`LossInputs.fused_ops`)."""
        cfg = self.config
        return policy_loss_terms(
            inputs.logp,
            inputs.old_logp,
            inputs.advantages,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            clip_c=cfg.clip_c,
            clip_enabled=cfg.clip,
            fused=inputs.fused_ops,
        )

    def clip_metrics(self, terms: PolicyLossTerms, inputs: LossInputs, scale: StepScale) -> Metrics:
        return policy_metrics(terms, inputs.logp, inputs.old_logp, inputs.mask, scale)

    # ---- Objective interface --------------------------------------------------------------

    def group_relative_advantages(self, inputs: AdvantageInputs) -> torch.Tensor:
        """[N] (r - mean_g), divided by (std_g + eps) when the method normalises by the std."""
        return group_advantages(
            inputs.rewards,
            inputs.group_index,
            normalize_by_std=self.normalize_by_std,
            std_unbiased=self.config.std_unbiased,
            eps=self.config.adv_eps,
        )

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        advantages = self.group_relative_advantages(inputs)
        return advantages, self.advantage_metrics(inputs, advantages)

    def advantage_metrics(self, inputs: AdvantageInputs, advantages: torch.Tensor) -> Metrics:
        """Step-level reward, group, length and advantage metrics (§1.6)."""
        return {
            **batch_metrics(inputs.rewards, inputs.response_lengths, inputs.truncated),
            **group_metrics(inputs.rewards, inputs.group_index, inputs.correct),
            **tensor_stats(advantages, "adv"),
        }

    def compute_loss(self, inputs: LossInputs, scale: StepScale) -> tuple[torch.Tensor, Metrics]:
        terms = self.policy_terms(inputs)
        pg_loss = aggregate_loss(terms.loss, inputs.mask, self.loss_agg, scale)
        loss, metrics = self.add_regularisers(pg_loss, inputs, scale)
        metrics["actor/pg_loss"] = float(pg_loss.detach())
        metrics.update(self.clip_metrics(terms, inputs, scale))
        return loss, metrics

    def add_regularisers(self, pg_loss: torch.Tensor, inputs: LossInputs, scale: StepScale) -> tuple[torch.Tensor, Metrics]:
        """pg_loss + kl_coef·KL - entropy_coef·H, each aggregated with the method's mode (verl)."""
        cfg = self.config
        loss, metrics = pg_loss, {}
        if cfg.kl_coef > 0:
            if inputs.ref_logp is None:
                raise ValueError(f"{self.name}: kl_coef > 0 needs LossInputs.ref_logp")
            kl = aggregate_loss(kl_penalty(inputs.logp, inputs.ref_logp, cfg.kl_estimator), inputs.mask, self.loss_agg, scale)
            loss = loss + cfg.kl_coef * kl
            metrics["actor/kl_loss"] = float(kl.detach())
        if inputs.entropy is not None:
            metrics["actor/entropy"] = token_share(inputs.entropy, inputs.mask, scale)
            if cfg.entropy_coef > 0:
                loss = loss - cfg.entropy_coef * aggregate_loss(inputs.entropy, inputs.mask, self.loss_agg, scale)
        elif cfg.entropy_coef > 0:
            raise ValueError(f"{self.name}: entropy_coef > 0 needs LossInputs.entropy")
        return loss, metrics
