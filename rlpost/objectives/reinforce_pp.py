"""REINFORCE++ (Hu et al. 2025, arXiv 2501.03262; OpenRLHF `reinforce` / `reinforce_baseline`, verl
`reinforce_plus_plus` / `reinforce_plus_plus_baseline`): global-batch advantage normalisation.

No per-prompt std: each sequence's score is whitened over the whole optimizer step,

    A_i = (s_i - mean) / sqrt(var + eps),  mean and (unbiased) var over the step's tokens,

so a sequence counts once per valid token, as verl's `masked_whiten` over the response mask
(`reinforce_pp.whiten_by: sequences` counts each sequence once). The score is the reward itself
(`baseline: none`, REINFORCE++) or the reward minus its group's mean (`baseline: group_mean`,
REINFORCE++-baseline, no std division before the global whitening). The loss is GRPO's clipped
token-level surrogate (the paper's PPO-clip). With an outcome reward, no discount and no KL in the
reward, every token's return is the sequence's reward, so the advantages stay per sequence.

Reconstructed where the sources leave it open: verl gives a completion alone in its group its raw
reward as score (group mean 0); here, under `group_mean`, it gets advantage 0 and leaves the whitening
statistics (no baseline exists, as GRPO's singletons, §0.4). A step whose scores are all equal gets 0
(verl would divide rounding noise by sqrt(1e-8)).
"""

from __future__ import annotations

from typing import Literal

import torch

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, Metrics
from rlpost.objectives.core import group_statistics
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES


class ReinforcePPConfig(Section):
    """Baseline and global whitening of REINFORCE++."""

    baseline: Literal["none", "group_mean"] = "none"
    """Score whitened over the step: none (the reward: REINFORCE++) or group_mean (the reward minus its
    group's mean reward: REINFORCE++-baseline, verl `reinforce_plus_plus_baseline`)."""
    whiten_by: Literal["tokens", "sequences"] = "tokens"
    """Weight of each sequence in the step's mean and variance: tokens (its valid token count, as verl's
    and OpenRLHF's token-level whitening) or sequences (1 each)."""
    eps: float = 1e-8
    """Added to the variance under the square root (verl `masked_whiten`)."""


def whiten(scores: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, float, float]:
    """(A [N], mean, std): A_i = (s_i - mean) / sqrt(var + eps), with the weighted mean and the unbiased
    weighted variance Σ w (s - mean)² / (Σ w - 1) of `scores` [N] under `weights` [N] (token counts or 1s).

    Entries of weight 0 take no part in the statistics and get advantage 0; so does every entry when all
    weighted scores are equal (no variance to normalise by).
    """
    scores64, w = scores.to(torch.float64), weights.to(torch.float64)
    active = w > 0
    total = w.sum()
    if not bool(active.any()) or scores64[active].max() == scores64[active].min():
        return torch.zeros_like(scores64), float(scores64[active].mean()) if bool(active.any()) else 0.0, 0.0
    mean = (w * scores64).sum() / total
    var = (w * (scores64 - mean) ** 2).sum() / (total - 1.0).clamp(min=1.0)
    advantages = torch.where(active, (scores64 - mean) / torch.sqrt(var + eps), torch.zeros_like(scores64))
    return advantages, float(mean), float(var.sqrt())


def reinforce_pp_scores(
    rewards: torch.Tensor, group_index: torch.Tensor, baseline: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [N] float64, has_baseline [N] bool): the reward (`none`), or the reward minus its group's
    mean (`group_mean`; exactly 0 in all-equal groups; singletons have no baseline and are marked False)."""
    if baseline == "none":
        return rewards.to(torch.float64), torch.ones_like(rewards, dtype=torch.bool)
    stats = group_statistics(rewards, group_index)
    return stats.centred(rewards), stats.size[stats.ids] > 1


@OBJECTIVES.register(
    "reinforce_pp", config=ReinforcePPConfig, defaults={"clip_low": 0.2, "clip_high": 0.2, "loss_agg": "token-mean"}
)
class ReinforcePP(GRPO):
    """A = whiten_step(r) or whiten_step(r - mean_g); loss = GRPO's clipped surrogate (+ optional KL/entropy)."""

    name = "reinforce_pp"

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        cfg = self.config.reinforce_pp
        scores, has_baseline = reinforce_pp_scores(inputs.rewards, inputs.group_index, cfg.baseline)
        lengths = inputs.response_lengths.to(torch.float64)
        weights = lengths if cfg.whiten_by == "tokens" else (lengths > 0).to(torch.float64)
        weights = torch.where(has_baseline, weights, torch.zeros_like(weights))
        advantages, mean, std = whiten(scores, weights, cfg.eps)
        advantages = advantages.to(inputs.rewards.dtype if inputs.rewards.is_floating_point() else torch.float32)
        metrics = self.advantage_metrics(inputs, advantages)
        metrics["reinforce_pp/score_mean"] = mean
        metrics["reinforce_pp/score_std"] = std
        metrics["reinforce_pp/no_baseline_frac"] = (
            float((~has_baseline).double().mean()) if has_baseline.numel() else 0.0
        )
        return advantages, metrics
