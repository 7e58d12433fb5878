"""GTPO: Group-relative Trajectory-based Policy Optimization (winstonsmith1897/GTPO).

ALGORITHMS.md §5. Not "Group Token PO" (arXiv 2508.04349), a different paper with the same acronym.
The paper's formula was not available: the authors' code is the only source, and it has quirks.

Per group: A_i = r_i - mean_g (no std by default, as the code). Completions with A > 0 are
positive, A < 0 negative, A = 0 inactive. A token is a *conflict* token when the same id sits at
the same position in at least one positive and one negative completion; only the leading run
from the start (forward) and from each sequence's own end (backward) counts. Conflict tokens
get weight W in positive completions and 0 in negative ones (δ), and each completion's loss is
divided by its number of conflict tokens n_conf. Entropy filter and shaping, on the mean token
entropy H_i of the current policy: A'_i = A_i - entropy_scale·H_i if H_i <= threshold, else 0.
loss_i = -(A'_i/|o_i|) Σ_t δ_t·ratio_t / n_conf_i. No KL, no reference model.

Recommended (default) vs `faithful` (reproduces the code, §5.2 quirks):
- δ for a token conflicting both ways: `max` rule W (default) vs the code's product W² (a);
- n_conf: true union of both directions (`conflict_norm=union`) or none, vs the code's count
  of the OR of the forward mask and the *unflipped* backward mask (b);
- aggregation: `objective.loss_agg` (method default seq-mean-token-mean, so the lr does not
  scale with the number of completions) vs the code's sum over completions (e).
Validity comes from the response mask, not a hard-coded pad id (c). Positive/negative flags
use the unshaped A, as the code does (d). Inactive completions (A = 0) get A' = 0 (§5.4), so a
group of equal rewards contributes nothing. The k3 "kl" to the base model that the code logs
is not computed (it needs the base model; logging only).

The trainer must fill `AdvantageInputs.token_ids/mask` (`needs_token_ids`) and pass the rows
of `token_weights(...)` as `LossInputs.token_weights`, and provide entropy (`needs_entropy`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, LossInputs, Metrics, StepScale
from rlpost.objectives.core import (
    PolicyLossTerms,
    aggregate_loss,
    dense_group_ids,
    masked_mean,
    policy_metrics,
    sequence_share,
    sequence_token_means,
    token_share,
)
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import ObjectiveConfig


def end_aligned(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[N, T] right-padded -> [N, T] with row i read backwards from its last valid token:
    out[i, k] = values[i, len_i - 1 - k] for k < len_i (padding beyond is whatever index 0 holds).
    Applying it twice with the same lengths restores the valid part."""
    k = torch.arange(values.shape[-1], device=values.device)
    index = (lengths.unsqueeze(-1) - 1 - k).clamp(min=0)
    return values.gather(-1, index)


def leading_run(raw: torch.Tensor) -> torch.Tensor:
    """[N, T] bool -> bool: True only on the unbroken run of True from position 0."""
    return torch.cumprod(raw.to(torch.long), dim=-1).bool()


def raw_conflicts(token_ids: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """One group: [G, T] ids/valid, [G] flags -> [G, T] bool, token i,t of an active completion
    whose id appears at position t in some valid positive AND some valid negative completion."""
    same = (token_ids.unsqueeze(1) == token_ids.unsqueeze(0)) & valid.unsqueeze(0)  # [i, j, t]
    in_positive = (same & positive.view(1, -1, 1)).any(dim=1)
    in_negative = (same & negative.view(1, -1, 1)).any(dim=1)
    active = (positive | negative).unsqueeze(-1)
    return in_positive & in_negative & valid & active


@dataclass
class ConflictMasks:
    forward: torch.Tensor
    """[N, T] bool, conflict run from the start, original coordinates."""
    backward: torch.Tensor
    """[N, T] bool, conflict run from each sequence's end, original coordinates."""
    backward_end_aligned: torch.Tensor
    """[N, T] bool, the same run in end-aligned coordinates (index k = k-th token from the end)."""


def conflict_masks(
    token_ids: torch.Tensor, mask: torch.Tensor, group_index: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> ConflictMasks:
    """Forward/backward conflict masks of every group (§5.2 step 4). All [N, T]; flags [N] bool."""
    valid = mask.bool()
    lengths = valid.sum(dim=-1)
    ids_end = end_aligned(token_ids, lengths)
    k = torch.arange(mask.shape[-1], device=mask.device)
    valid_end = k.unsqueeze(0) < lengths.unsqueeze(-1)
    forward = torch.zeros_like(valid)
    backward_end = torch.zeros_like(valid)
    dense, num_groups = dense_group_ids(group_index)
    for g in range(num_groups):  # pairwise comparison is O(G²·T) per group: never across groups
        rows = (dense == g).nonzero().squeeze(-1)
        pos, neg = positive[rows], negative[rows]
        if not (pos.any() and neg.any()):
            continue
        forward[rows] = leading_run(raw_conflicts(token_ids[rows], valid[rows], pos, neg))
        backward_end[rows] = leading_run(raw_conflicts(ids_end[rows], valid_end[rows], pos, neg))
    backward = end_aligned(backward_end, lengths) & valid
    return ConflictMasks(forward=forward & valid, backward=backward, backward_end_aligned=backward_end & valid_end)


def conflict_deltas(
    masks: ConflictMasks,
    positive: torch.Tensor,
    negative: torch.Tensor,
    mask: torch.Tensor,
    *,
    weight: float = 2.0,
    combine: Literal["max", "product"] = "max",
) -> torch.Tensor:
    """Per-token δ [N, T] (§5.2 step 5): W on conflict tokens of positive completions, 0 on those
    of negative ones, 1 elsewhere, 0 on padding. `product` multiplies the two directions (the
    code: W² when a token conflicts both ways); `max` gives W once."""
    conflict_value = torch.where(positive, weight, torch.where(negative, 0.0, 1.0)).to(mask.dtype).unsqueeze(-1)

    def delta(conflict: torch.Tensor) -> torch.Tensor:
        return torch.where(conflict, conflict_value, torch.ones_like(mask))

    if combine == "product":
        return delta(masks.forward) * delta(masks.backward) * mask
    return delta(masks.forward | masks.backward) * mask


def conflict_counts(masks: ConflictMasks, mode: Literal["union", "code", "none"]) -> torch.Tensor:
    """n_conf [N] >= 1: conflict tokens of each completion (union of both directions), the
    code's count (forward OR the unflipped end-aligned backward mask, quirk b), or 1 (`none`)."""
    if mode == "none":
        return torch.ones(masks.forward.shape[0], dtype=torch.float64)
    backward = masks.backward if mode == "union" else masks.backward_end_aligned
    return (masks.forward | backward).sum(dim=-1).clamp(min=1).to(torch.float64)


def shaped_advantages(advantages: torch.Tensor, entropy: torch.Tensor, *, threshold: float, scale: float) -> torch.Tensor:
    """A' [N] (§5.2 step 6): A - scale·H where H <= threshold, else 0; 0 for inactive (A = 0)."""
    shaped = torch.where(entropy <= threshold, advantages - scale * entropy, torch.zeros_like(advantages))
    return torch.where(advantages != 0, shaped, torch.zeros_like(shaped))


class GtpoConfig(Section):
    """Conflict-token weights and the entropy filter."""

    entropy_threshold: float = Field(0.7, ge=0)
    """Completions with mean token entropy above this get advantage 0 (entropy filter)."""
    entropy_scale: float = Field(0.1, ge=0)
    """Entropy shaping: A' = A - entropy_scale * H for completions kept by the filter."""
    conflict_weight: float = Field(2.0, ge=0)
    """Weight W of conflict tokens in positive completions (negative completions get 0 there)."""
    faithful: bool = False
    """Reproduce the authors' code exactly: W^2 for tokens conflicting both ways, its miscounted n_conf, losses summed over completions."""
    delta_combine: Literal["max", "product"] = "max"
    """How forward and backward conflicts combine (ignored when faithful): `max` gives W once, `product` gives W^2."""
    conflict_norm: Literal["union", "none"] = "union"
    """Divide a completion's loss by its count of conflict tokens (true union of both directions), or not (ignored when faithful)."""


# §5.2: no std, no clipping (single on-policy step); per-completion token mean.
@OBJECTIVES.register(
    "gtpo", config=GtpoConfig, defaults={"normalize_adv_by_std": False, "clip": False, "loss_agg": "seq-mean-token-mean"},
    group_relative=True,
)
class GTPO(GRPO):
    name = "gtpo"
    needs_token_ids = True

    def __init__(self, config: ObjectiveConfig, max_response_length: int):
        super().__init__(config, max_response_length)
        if config.kl_coef > 0:
            raise ValueError("GTPO uses no reference model: set objective.kl_coef to 0")
        self.needs_entropy = True
        self._cached: tuple[AdvantageInputs, torch.Tensor, Metrics] | None = None

    @property
    def needs_reference(self) -> bool:
        return False

    def _flags(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        advantages, _ = super().compute_advantages(inputs)
        return advantages, advantages > 0, advantages < 0

    def _weights(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        """δ / n_conf [N, T] for the whole step, and the conflict metrics (§5.5)."""
        if self._cached is not None and self._cached[0] is inputs:
            return self._cached[1], self._cached[2]
        if inputs.token_ids is None or inputs.mask is None:
            raise ValueError("GTPO needs AdvantageInputs.token_ids and .mask (Objective.needs_token_ids)")
        cfg = self.config.gtpo
        mask = inputs.mask.to(torch.float64)
        _, positive, negative = self._flags(inputs)
        masks = conflict_masks(inputs.token_ids, mask, inputs.group_index, positive, negative)
        combine = "product" if cfg.faithful else cfg.delta_combine
        count_mode = "code" if cfg.faithful else cfg.conflict_norm
        delta = conflict_deltas(masks, positive, negative, mask, weight=cfg.conflict_weight, combine=combine)
        n_conf = conflict_counts(masks, count_mode)
        weights = delta / n_conf.unsqueeze(-1)
        conflict = (masks.forward | masks.backward).to(torch.float64)
        metrics: Metrics = {
            "gtpo/conflict_frac_pos": float(masked_mean(conflict, mask * positive.unsqueeze(-1))),
            "gtpo/conflict_frac_neg": float(masked_mean(conflict, mask * negative.unsqueeze(-1))),
            "gtpo/delta_mean_pos": float(masked_mean(delta, mask * positive.unsqueeze(-1))),
            "gtpo/n_conf_mean": float(n_conf.mean()) if n_conf.numel() else 0.0,
            "gtpo/n_conf_max": float(n_conf.max()) if n_conf.numel() else 0.0,
        }
        self._cached = (inputs, weights, metrics)
        return weights, metrics

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        advantages, metrics = super().compute_advantages(inputs)
        _, conflict_metrics = self._weights(inputs)
        return advantages, {**metrics, **conflict_metrics}

    def token_weights(self, inputs: AdvantageInputs) -> torch.Tensor:
        return self._weights(inputs)[0]

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        """Surrogate of the per-token advantage A'_i·δ_t/n_conf_i (loss -A'·δ/n_conf·ratio unclipped)."""
        if inputs.entropy is None or inputs.token_weights is None:
            raise ValueError("GTPO needs LossInputs.entropy and LossInputs.token_weights")
        gtpo = self.config.gtpo
        shaped = shaped_advantages(
            inputs.advantages, self.mean_entropy(inputs), threshold=gtpo.entropy_threshold, scale=gtpo.entropy_scale
        )
        return super().policy_terms(replace(inputs, advantages=shaped.unsqueeze(-1) * inputs.token_weights))

    @staticmethod
    def mean_entropy(inputs: LossInputs) -> torch.Tensor:
        """H_i [N]: mean token entropy of each completion under the current policy (no gradient)."""
        return sequence_token_means(inputs.entropy.detach(), inputs.mask)

    def compute_loss(self, inputs: LossInputs, scale: StepScale) -> tuple[torch.Tensor, Metrics]:
        terms = self.policy_terms(inputs)
        entropy = self.mean_entropy(inputs)
        if self.config.gtpo.faithful:
            loss = sequence_token_means(terms.loss, inputs.mask).sum()  # the code sums over completions
        else:
            loss = aggregate_loss(terms.loss, inputs.mask, self.loss_agg, scale)
        metrics = policy_metrics(terms, inputs.logp, inputs.old_logp, inputs.mask, scale)
        metrics["actor/pg_loss"] = float(loss.detach())
        metrics["actor/entropy"] = token_share(inputs.entropy, inputs.mask, scale)
        metrics["gtpo/completion_entropy_mean"] = sequence_share(entropy, inputs.mask, scale)
        metrics["gtpo/entropy_filtered_frac"] = sequence_share(
            (entropy > self.config.gtpo.entropy_threshold).double(), inputs.mask, scale
        )
        if self.config.entropy_coef > 0:
            bonus = aggregate_loss(inputs.entropy, inputs.mask, self.loss_agg, scale)
            loss = loss - self.config.entropy_coef * bonus
        return loss, metrics
