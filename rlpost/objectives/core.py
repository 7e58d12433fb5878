"""Shared building blocks of every objective: small pure functions of tensors.

Shapes: N sequences, T padded response length. Per-token tensors are [N, T], right-padded, with a
float `mask` (1 on valid response tokens). Per-sequence tensors are [N]. ALGORITHMS.md §0.

Metric convention: metrics produced inside `compute_loss` are *additive* contributions, normalised
by the whole optimizer step's counts (`StepScale`), so the learner sums them over micro-batches
(and ranks) to get the step value, exactly as it sums the losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rlpost.objectives.base import Metrics, StepScale

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import KLEstimator, LossAggregation

LOG_RATIO_CLAMP = 20.0
"""|log ratio| bound before exp (verl): keeps ratios finite for stale or diverged tokens."""
K3_CLAMP = 10.0
"""|k3| bound of the low-variance KL estimator (verl)."""


# --------------------------------------------------------------------------------------------
# masked reductions


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask over `dim` (all dims if None). Padding never leaks in, even if it holds inf/NaN."""
    masked = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask / Σ mask over `dim`; 0 (not NaN) where the mask is empty."""
    total = masked_sum(values, mask, dim)
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim=dim)
    return total / count.clamp(min=1.0)


def sequence_token_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> [N]: each sequence's mean over its valid tokens (0 for an empty row)."""
    return masked_mean(values, mask, dim=-1)


def valid_sequences(mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> [N] bool: sequences holding at least one valid token."""
    return mask.sum(dim=-1) > 0


def broadcast_to_tokens(per_sequence_or_token: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] or [N, T] -> [N, T] shaped like `like` (per-sequence values repeat over tokens)."""
    if per_sequence_or_token.dim() == 1:
        return per_sequence_or_token.unsqueeze(-1).expand_as(like)
    return per_sequence_or_token


# --------------------------------------------------------------------------------------------
# group statistics (§0.4)


def dense_group_ids(group_index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Arbitrary group labels -> (ids in 0..G-1, G); labels need not be contiguous."""
    unique, inverse = torch.unique(group_index, return_inverse=True)
    return inverse, unique.numel()


@dataclass
class GroupStatistics:
    """Per-group reward statistics of unequal-size groups."""

    ids: torch.Tensor
    """[N] long, dense group id of each sequence in 0..G-1."""
    size: torch.Tensor
    """[G] float64, members per group."""
    mean: torch.Tensor
    """[G] float64, group mean."""
    std: torch.Tensor
    """[G] float64, group std (unbiased or population); exactly 0 for constant groups and singletons."""
    constant: torch.Tensor
    """[G] bool, every member has the same value (a singleton is constant)."""

    def centred(self, values: torch.Tensor) -> torch.Tensor:
        """[N] values minus their group mean, exactly 0 in constant groups (where the rounded mean
        of many equal floats may differ from them by an ulp, which (std + eps) would blow up)."""
        centred = values.to(torch.float64) - self.mean[self.ids]
        return torch.where(self.constant[self.ids], torch.zeros_like(centred), centred)


def group_statistics(values: torch.Tensor, group_index: torch.Tensor, *, std_unbiased: bool = True) -> GroupStatistics:
    """Per-group mean/std of `values` [N] (float64), groups given by `group_index` [N] of any labels.

    Constant groups are detected exactly (max == min) so they get std 0 and centred values 0.
    """
    ids, num_groups = dense_group_ids(group_index)
    values = values.to(torch.float64)  # group sums of many rewards: keep them exact
    size = torch.zeros(num_groups, dtype=torch.float64, device=values.device).index_add_(0, ids, torch.ones_like(values))
    mean = torch.zeros_like(size).index_add_(0, ids, values) / size.clamp(min=1.0)
    high = torch.full_like(size, -math.inf).scatter_reduce_(0, ids, values, "amax")
    low = torch.full_like(size, math.inf).scatter_reduce_(0, ids, values, "amin")
    constant = high == low
    sq_dev = torch.zeros_like(size).index_add_(0, ids, (values - mean[ids]) ** 2)
    denom = (size - 1.0) if std_unbiased else size
    var = torch.where((denom > 0) & ~constant, sq_dev / denom.clamp(min=1.0), torch.zeros_like(sq_dev))
    return GroupStatistics(ids=ids, size=size, mean=mean, std=var.sqrt(), constant=constant)


def group_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    normalize_by_std: bool = True,
    std_unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO outcome advantages, [N] -> [N] (ALGORITHMS §1.2, §0.4).

    A_i = (r_i - mean_g) / (std_g + eps) with per-group statistics (groups may differ in size),
    or A_i = r_i - mean_g without std normalisation (Dr.GRPO). All-equal groups give exactly 0.
    Singleton groups give 0: verl's A = r (raw reward) would inject an unbaselined gradient.
    """
    stats = group_statistics(rewards, group_index, std_unbiased=std_unbiased)
    centred = stats.centred(rewards)
    advantages = centred / (stats.std[stats.ids] + eps) if normalize_by_std else centred
    advantages = torch.where(stats.size[stats.ids] > 1, advantages, torch.zeros_like(advantages))
    return advantages.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def group_metrics(rewards: torch.Tensor, group_index: torch.Tensor, correct: torch.Tensor | None = None) -> Metrics:
    """Step-level group metrics: how many groups carry no learning signal, and why.

    `groups/zero_std_frac`: groups whose rewards are all equal (zero advantage under GRPO);
    `groups/solve_all` / `groups/solve_none`: every / no completion correct (needs `correct`);
    `groups/singletons`: groups of one completion (their advantage is 0 by convention, §0.4).
    """
    if rewards.numel() == 0:
        return {"groups/count": 0.0}
    stats = group_statistics(rewards, group_index, std_unbiased=False)
    group_size, ids = stats.size, stats.ids
    metrics: Metrics = {
        "groups/count": float(group_size.numel()),
        "groups/singletons": float((group_size == 1).sum()),
        "groups/zero_std_frac": float(stats.constant.double().mean()),
        "groups/mean_size": float(group_size.mean()),
    }
    if correct is not None:
        n_correct = torch.zeros_like(group_size).index_add_(0, ids, correct.to(torch.float64))
        metrics["groups/solve_all"] = float((n_correct == group_size).double().mean())
        metrics["groups/solve_none"] = float((n_correct == 0).double().mean())
    return metrics


# --------------------------------------------------------------------------------------------
# clipped surrogate (§0.1)


@dataclass
class PolicyLossTerms:
    """Per-token pieces of the clipped surrogate, all [N, T]."""

    loss: torch.Tensor
    """Per-token loss to minimise (not masked, not aggregated)."""
    ratio: torch.Tensor
    """exp(clamp(logp - old_logp, ±20))."""
    clipped_upper: torch.Tensor
    """bool: the clipped term is active because ratio > 1 + clip_high (A > 0): zero gradient."""
    clipped_lower: torch.Tensor
    """bool: the clipped term is active because ratio < 1 - clip_low (A < 0): zero gradient."""
    dual_clipped: torch.Tensor
    """bool: A < 0 and the loss was bounded at -A·c by the dual clip: zero gradient."""

    @property
    def clipped(self) -> torch.Tensor:
        """bool: verl's pg_clipfrac event (L2 > L1), at either bound."""
        return self.clipped_upper | self.clipped_lower


def policy_loss_per_token(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_c: float | None = None,
    clip_enabled: bool = True,
) -> PolicyLossTerms:
    """PPO/GRPO clipped surrogate per token (ALGORITHMS §0.1, verl compute_policy_loss_vanilla).

    logp, old_logp [N, T]; advantages [N] (broadcast) or [N, T].
    loss = max(-A·ρ, -A·clip(ρ, 1-clip_low, 1+clip_high)), then for A < 0 bounded by -A·c (dual clip).
    `clip_enabled=False` gives the plain importance-weighted loss -A·ρ with no clip of any kind
    (recipes that disable clipping, e.g. VCPO, HPT), rather than emulating it with huge epsilons.
    The CPU path of the fused kernel calls exactly this function: keep the signature.
    """
    adv = broadcast_to_tokens(advantages, logp).to(logp.dtype)
    log_ratio = torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    no_event = torch.zeros_like(ratio, dtype=torch.bool)
    if not clip_enabled:
        return PolicyLossTerms(unclipped, ratio, no_event, no_event, no_event)
    clipped_term = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clip_active = clipped_term > unclipped
    loss = torch.maximum(unclipped, clipped_term)
    dual_clipped = no_event
    if clip_c is not None:
        bound = -adv * clip_c
        dual_clipped = (adv < 0) & (loss > bound)
        loss = torch.where(dual_clipped, bound, loss)
    return PolicyLossTerms(
        loss=loss,
        ratio=ratio,
        clipped_upper=clip_active & (ratio > 1.0),
        clipped_lower=clip_active & (ratio < 1.0),
        dual_clipped=dual_clipped,
    )


# --------------------------------------------------------------------------------------------
# KL to the reference policy (§0.2)


KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}
"""verl's names of the estimators (`kl_loss_type`), accepted as synonyms."""


def kl_estimator_base(estimator: str) -> tuple[str, bool]:
    """(canonical estimator k1|k2|k3|abs, straight-through?) of a name such as `low_var_kl+`."""
    straight_through = estimator.endswith("+")
    base = estimator[:-1] if straight_through else estimator
    return KL_ALIASES.get(base, base), straight_through


def kl_forward(logp: torch.Tensor, ref_logp: torch.Tensor, base: str) -> torch.Tensor:
    """Value (and own gradient) of one canonical estimator, [N, T]; see `kl_penalty`."""
    if base == "k1":
        return logp - ref_logp
    if base == "abs":
        return (logp - ref_logp).abs()
    if base == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if base == "k3":
        d = torch.clamp(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(d) - d - 1.0, -K3_CLAMP, K3_CLAMP)
    raise ValueError(f"unknown KL estimator {base!r}")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token KL(π_θ || π_ref) estimate, [N, T] (ALGORITHMS §0.2, verl kl_penalty).

    k1 (kl) = logp - ref_logp; abs = |k1|; k2 (mse) = ½(logp - ref_logp)²; k3 (low_var_kl) =
    e^d - d - 1 with d = ref_logp - logp, d clamped to ±20 and k3 to ±10. A trailing `+` (k1+,
    abs+, k3+, ...) keeps the named estimator's value with k2's gradient (straight-through),
    because k2's expected gradient is the true KL gradient while k1's and k3's are not.
    """
    base, straight_through = kl_estimator_base(estimator)
    forward = kl_forward(logp, ref_logp, base)
    if not straight_through or base == "k2":
        return forward
    k2 = 0.5 * (logp - ref_logp) ** 2
    return k2 - k2.detach() + forward.detach()


# --------------------------------------------------------------------------------------------
# aggregation (§0.3, §1.3)


def aggregate_loss(loss_tok: torch.Tensor, mask: torch.Tensor, mode: LossAggregation, scale: StepScale) -> torch.Tensor:
    """One micro-batch's share of the step loss; summing the shares of all micro-batches gives
    the full-batch loss (and gradients), whatever the split. loss_tok, mask [N, T] -> scalar.

    token-mean:              Σ ℓ·M / tokens_step                             (DAPO; verl default)
    token-sum:               Σ ℓ·M, no normaliser (verl token-sum)
    seq-mean-token-mean:     Σ_i (Σ_t ℓ·M / |o_i|) / sequences_step           (original GRPO)
    seq-mean-token-sum:      Σ ℓ·M / sequences_step                           (BNPO script)
    seq-mean-token-sum-norm: Σ ℓ·M / L_max, no division by the sequence count (verl < 0.9.1)
    dr-grpo:                 Σ ℓ·M / (sequences_step · L_max)  (Dr.GRPO reference/oat, TRL, and
                             verl 0.9.1's seq-mean-token-sum-norm)
    Empty rows contribute 0; an empty step gives 0, not NaN (normalisers are clamped to >= 1).
    """
    tokens = max(scale.tokens, 1)
    sequences = max(scale.sequences, 1)
    max_len = max(scale.max_response_length, 1)
    if mode == "token-mean":
        return masked_sum(loss_tok, mask) / tokens
    if mode == "token-sum":
        return masked_sum(loss_tok, mask)
    if mode == "seq-mean-token-mean":
        return sequence_token_means(loss_tok, mask).sum() / sequences
    if mode == "seq-mean-token-sum":
        return masked_sum(loss_tok, mask) / sequences
    if mode == "seq-mean-token-sum-norm":
        return masked_sum(loss_tok, mask) / max_len
    if mode == "dr-grpo":
        return masked_sum(loss_tok, mask) / (sequences * max_len)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def step_scale_of(mask: torch.Tensor, max_response_length: int) -> StepScale:
    """The `StepScale` of a whole step given all its masks (tests and single-micro-batch callers)."""
    return StepScale(
        tokens=int(mask.sum().item()),
        sequences=int(valid_sequences(mask).sum().item()),
        max_response_length=max_response_length,
    )


# --------------------------------------------------------------------------------------------
# metric helpers


def token_share(values: torch.Tensor, mask: torch.Tensor, scale: StepScale) -> float:
    """This micro-batch's additive share of a step-level token mean of `values` (bool or float)."""
    return float(masked_sum(values.detach().to(torch.float64), mask) / max(scale.tokens, 1))


def sequence_share(per_sequence: torch.Tensor, mask: torch.Tensor, scale: StepScale) -> float:
    """Additive share of a step-level mean over valid sequences of a per-sequence value [N]."""
    valid = valid_sequences(mask)
    return float(per_sequence.detach().to(torch.float64)[valid].sum() / max(scale.sequences, 1))


def ppo_kl_share(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, scale: StepScale) -> float:
    """Additive share of actor/ppo_kl = mean(-clamp(logp - old_logp, ±20)) (verl's clamp of the loss)."""
    log_ratio = torch.clamp(logp.detach() - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return token_share(-log_ratio, mask, scale)


def policy_metrics(terms: PolicyLossTerms, logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, scale: StepScale) -> Metrics:
    """Clip fractions and ppo_kl (§0.1), as additive token-mean shares of the step.

    actor/pg_clipfrac: clipped term active (verl); actor/pg_clipfrac_lower: dual-clip bound active
    (verl's name, §0.1); actor/pg_clipfrac_high / _low: split of pg_clipfrac by which ratio bound
    (useful to watch clip-higher); actor/ppo_kl: mean(old_logp - logp), the log-ratio clamped
    to ±20 as in the loss (verl), so one diverged token cannot dominate it.
    """
    return {
        "actor/pg_clipfrac": token_share(terms.clipped, mask, scale),
        "actor/pg_clipfrac_high": token_share(terms.clipped_upper, mask, scale),
        "actor/pg_clipfrac_low": token_share(terms.clipped_lower, mask, scale),
        "actor/pg_clipfrac_lower": token_share(terms.dual_clipped, mask, scale),
        "actor/ppo_kl": ppo_kl_share(logp, old_logp, mask, scale),
        "actor/ratio_mean": token_share(terms.ratio, mask, scale),
    }


def tensor_stats(values: torch.Tensor, prefix: str) -> Metrics:
    """{prefix}/mean|std|min|max of a 1-D tensor (population std); zeros for an empty tensor."""
    values = values.detach().to(torch.float64).flatten()
    if values.numel() == 0:
        return {f"{prefix}/{k}": 0.0 for k in ("mean", "std", "min", "max")}
    return {
        f"{prefix}/mean": float(values.mean()),
        f"{prefix}/std": float(values.std(unbiased=False)),
        f"{prefix}/min": float(values.min()),
        f"{prefix}/max": float(values.max()),
    }


def batch_metrics(rewards: torch.Tensor, response_lengths: torch.Tensor, truncated: torch.Tensor) -> Metrics:
    """Reward and response-length metrics of a step (§1.6, §13.4)."""
    metrics = {k: v for k, v in tensor_stats(rewards, "reward").items() if k.endswith(("mean", "std"))}
    lengths = response_lengths.to(torch.float64)
    metrics["response_length/mean"] = float(lengths.mean()) if lengths.numel() else 0.0
    metrics["response_length/max"] = float(lengths.max()) if lengths.numel() else 0.0
    metrics["response_length/clip_ratio"] = float(truncated.to(torch.float64).mean()) if truncated.numel() else 0.0
    return metrics


# --------------------------------------------------------------------------------------------
# reward and advantage conditioning shared by every objective (`ObjectiveKnobs.reward_normalization`,
# `reward_clip`, `advantage_clip`); `rlpost.learner.batch.prepare_update` applies them, once per step


def condition_rewards(
    rewards: torch.Tensor, normalization: str = "none", clip: float | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Rewards [N] after the step-level normalisation and clip every objective shares, and their metrics.

    batch: (r - mean) / std; batch_std: r / std (mean and population std over the step's sequences).
    A constant batch (std 0) gives 0 under batch and leaves r unchanged under batch_std. Then, if
    `clip` is set, r is clipped to [-clip, clip]. With both off, `rewards` is returned as is, no metrics.
    Metrics: reward/mean|std of the rewards before conditioning (so the logged reward stays the task's),
    reward_norm/mean|std (the statistics used), reward_clip/frac (fraction of sequences clipped).
    """
    if normalization == "none" and clip is None:
        return rewards, {}
    values = rewards.to(torch.float64)
    metrics = {k: v for k, v in tensor_stats(values, "reward").items() if k.endswith(("mean", "std"))}
    if normalization != "none":
        mean = values.mean() if values.numel() else values.new_zeros(())
        std = values.std(unbiased=False) if values.numel() else values.new_zeros(())
        constant = bool(values.numel() == 0 or values.max() == values.min())
        if normalization == "batch":
            values = torch.zeros_like(values) if constant else (values - mean) / std
        elif normalization == "batch_std":
            values = values if constant else values / std
        else:
            raise ValueError(f"unknown reward normalization {normalization!r}")
        metrics["reward_norm/mean"], metrics["reward_norm/std"] = float(mean), float(std)
    if clip is not None:
        clipped = values.abs() > clip
        metrics["reward_clip/frac"] = float(clipped.double().mean()) if values.numel() else 0.0
        values = values.clamp(-clip, clip)
    return values.to(rewards.dtype if rewards.is_floating_point() else torch.float32), metrics


def clip_advantages(
    advantages: torch.Tensor, clip: float | None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Advantages [N] or [N, T] clipped to [-clip, clip] (None: unchanged, no metrics).

    adv_clip/frac: the fraction of sequences ([N]) or of valid tokens ([N, T], under `mask`) clipped.
    """
    if clip is None:
        return advantages, {}
    clipped = advantages.abs() > clip
    if advantages.dim() == 2 and mask is not None:
        frac = float(masked_mean(clipped.to(torch.float64), mask))
    else:
        frac = float(clipped.double().mean()) if clipped.numel() else 0.0
    return advantages.clamp(-clip, clip), {"adv_clip/frac": frac}
