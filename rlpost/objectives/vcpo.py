"""VCPO: Variance-Controlled Policy Optimization for off-policy / asynchronous RL (mit-han-lab/vcpo).

ALGORITHMS.md §6. Two parts:

1. ESS-guided step scaling: `VCPO.lr_scale(step_inputs)` returns this optimizer step's lr
   multiplier sqrt(min(1, rho / base_ess_ratio)) (or linear), with rho = ESS / B of the sequence
   importance weights w_i = exp(Σ_t logp - behaviour_logp) of the whole step. Computed in log
   space, so long stale sequences cannot overflow.
2. OPOB, the off-policy optimal baseline b* = Σ w²‖g‖²R / Σ w²‖g‖² per group: pure functions
   (`opob_baseline`, `opob_coefficients`) and the two-buffer accumulator `OpobGradientBuffers`
   for the per-trajectory path (micro-batch size 1), which the learner takes when `vcpo.opob` is
   on (`rlpost.learner.opob`); with it off VCPO trains with GRPO advantages.

Loss: the §0.1 surrogate (method default: clipping disabled, seq-mean-token-mean) times the
truncated sequence importance weight min(exp(Σ_t old_logp - behaviour_logp), is_threshold),
detached, as verl's decoupled rollout correction does. Reconstructed: §6.3 asks to check
exactly how verl's rollout_corr_helper applies the weight; `vcpo.is_threshold: null` removes it.

How the learner calls `lr_scale`, once per optimizer step before `optimizer.step()`:
    multiplier, metrics = objective.lr_scale({"logp": logp, "behaviour_logp": behaviour_logp, "mask": mask})
    # logp: [N, T] current-policy log-probs (no grad) of every sequence of the step, all ranks
    if multiplier == 0 (`staleness/skip_step` = 1): skip the step entirely: discard the gradients,
    no optimizer.step() (AdamW moments and step count untouched) and no scheduler.step();
    else set lr = scheduler_lr * multiplier for this step only and restore the scheduler's lr.
    (A step at lr 0 is not a skip: AdamW would still move its moments.)
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import LossInputs, Metrics, StepScale
from rlpost.objectives.core import (
    PolicyLossTerms,
    dense_group_ids,
    group_statistics,
    kl_penalty,
    masked_mean,
    masked_sum,
    sequence_share,
    valid_sequences,
)
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import ObjectiveConfig

STD_FLOOR = 1e-8
"""Group reward std below which OPOB does not divide by it (the code's guard)."""


# ---------------------------------------------------------------------------------------------
# effective sample size


def sequence_log_weights(logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """lw_i = Σ_t (logp - behaviour_logp)·M, [N, T] -> [N]: log of the sequence importance weight."""
    return masked_sum(logp.to(torch.float64) - behaviour_logp.to(torch.float64), mask, dim=-1)


def log_effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """log ESS = 2·logsumexp(lw) - logsumexp(2·lw), [B] -> scalar; ESS = (Σw)²/Σw² without overflow.
    -inf for an empty batch (ESS 0)."""
    if log_weights.numel() == 0:
        return torch.tensor(-math.inf, dtype=torch.float64)
    log_weights = log_weights.to(torch.float64)
    return 2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0)


def ess_lr_multiplier(ess_ratio: float, *, base_ess_ratio: float = 1.0, rule: str = "sqrt") -> float:
    """lr multiplier of one step: sqrt or linear of min(1, rho / base_ess_ratio)."""
    scale = min(1.0, ess_ratio / base_ess_ratio)
    return math.sqrt(scale) if rule == "sqrt" else scale


# ---------------------------------------------------------------------------------------------
# OPOB


def opob_baseline(
    rewards: torch.Tensor,
    grad_sq_norms: torch.Tensor,
    group_index: torch.Tensor,
    log_is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Off-policy optimal baseline per group, broadcast to members: [N] -> [N].

    b_g = Σ_i W_i R_i / Σ_i W_i over the group, W_i = ‖g_i‖²·w_i² (w_i = 1 without IS weights),
    computed as a softmax over log W_i = log‖g_i‖² + 2·lw_i so large weights cannot overflow.
    For scope "minibatch" pass one group for everything. A group whose weights are all 0 (zero
    gradients) gets its mean reward; its members contribute no gradient anyway (the code's
    0/(0+1e-8) gives 0 instead).
    """
    rewards = rewards.to(torch.float64)
    log_w = torch.log(grad_sq_norms.to(torch.float64))
    if log_is_weights is not None:
        log_w = log_w + 2 * log_is_weights.to(torch.float64)
    ids, num_groups = dense_group_ids(group_index)
    group_max = torch.full((num_groups,), -math.inf, dtype=torch.float64).scatter_reduce_(0, ids, log_w, "amax")
    degenerate = ~torch.isfinite(group_max)
    shifted = torch.exp(log_w - torch.where(degenerate, 0.0, group_max)[ids])
    shifted = torch.where(degenerate[ids], torch.ones_like(shifted), shifted)  # equal weights -> mean
    numerator = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, ids, shifted * rewards)
    denominator = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, ids, shifted)
    return (numerator / denominator)[ids]


def opob_coefficients(
    rewards: torch.Tensor, baseline: torch.Tensor, group_index: torch.Tensor, *, norm_by_std: bool = True
) -> torch.Tensor:
    """Per-trajectory gradient coefficients (R_i - b_g) / σ_g, [N] -> [N]; σ_g is the group's
    population reward std, replaced by 1 when norm_by_std is off or σ_g <= 1e-8."""
    centred = rewards.to(torch.float64) - baseline.to(torch.float64)
    if not norm_by_std:
        return centred
    stats = group_statistics(rewards, group_index, std_unbiased=False)
    sigma = stats.std[stats.ids]
    return centred / torch.where(sigma > STD_FLOOR, sigma, torch.ones_like(sigma))


class OpobGradientBuffers:
    """The two-buffer trick of the authors' learner (§6.3), one group at a time.

    b_g depends on every gradient norm of the group, so gradients cannot be combined until the
    group is complete. For each trajectory (its loss back-propagated with advantage 1, giving g_i):
    acc += (R_i/σ_g)·g_i and score += g_i/σ_g, recording ‖g_i‖²; at the group's end
    acc -= b_g·score. Net: Σ_i ((R_i - b_g)/σ_g)·g_i, two gradient-sized buffers, no per-trajectory
    storage. Trajectories with non-finite gradients (fp16 found-inf) are skipped and counted.
    """

    def __init__(self, like: list[torch.Tensor], *, norm_by_std: bool = True, use_is_weights: bool = True):
        self.accumulated = [torch.zeros_like(p, dtype=torch.float64) for p in like]
        self._score = [torch.zeros_like(p, dtype=torch.float64) for p in like]
        self.norm_by_std = norm_by_std
        self.use_is_weights = use_is_weights
        self.skipped = 0
        self.baselines: list[float] = []
        self._sigma = 1.0
        self._rewards: list[float] = []
        self._sq_norms: list[float] = []
        self._log_weights: list[float] = []

    def start_group(self, rewards: torch.Tensor) -> None:
        """Begin a group; its rewards (known before any backward) fix σ_g."""
        sigma = float(rewards.to(torch.float64).std(unbiased=False)) if rewards.numel() > 1 else 0.0
        self._sigma = sigma if (self.norm_by_std and sigma > STD_FLOOR) else 1.0
        self._rewards, self._sq_norms, self._log_weights = [], [], []

    def add(self, grads: list[torch.Tensor], reward: float, log_is_weight: float = 0.0, norm_scale: float = 1.0) -> None:
        """Accumulate one trajectory's gradient g_i (of its loss with advantage 1).

        `norm_scale` multiplies ‖g_i‖ in the baseline's weight only, e.g. |o_i| to undo a per-sequence
        1/|o_i| of the loss aggregation, as the authors' code does for seq-mean-token-mean.
        """
        sq_norm = sum(float(g.to(torch.float64).pow(2).sum()) for g in grads) * norm_scale**2
        if not math.isfinite(sq_norm):
            self.skipped += 1
            return
        for acc, score, g in zip(self.accumulated, self._score, grads):
            acc.add_(g.to(torch.float64), alpha=reward / self._sigma)
            score.add_(g.to(torch.float64), alpha=1.0 / self._sigma)
        self._rewards.append(reward)
        self._sq_norms.append(sq_norm)
        self._log_weights.append(log_is_weight if self.use_is_weights else 0.0)

    def finish_group(self) -> float:
        """Subtract b_g·score from the accumulated gradient; returns b_g (log it)."""
        if not self._rewards:
            return 0.0
        n = len(self._rewards)
        b = float(
            opob_baseline(
                torch.tensor(self._rewards, dtype=torch.float64),
                torch.tensor(self._sq_norms, dtype=torch.float64),
                torch.zeros(n, dtype=torch.long),
                torch.tensor(self._log_weights, dtype=torch.float64),
            )[0]
        )
        for acc, score in zip(self.accumulated, self._score):
            acc.add_(score, alpha=-b)
            score.zero_()
        self.baselines.append(b)
        return b


# ---------------------------------------------------------------------------------------------
# objective


def truncated_sequence_is_weights(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(min(exp(Σ_t old_logp - behaviour_logp), threshold) [N], truncated [N] bool) from [N, T]
    inputs; no gradient, no overflow (the clamp happens in log space)."""
    log_w = sequence_log_weights(old_logp.detach(), behaviour_logp, mask)
    log_threshold = math.log(threshold)
    return torch.exp(torch.clamp(log_w, max=log_threshold)), log_w > log_threshold


class VcpoConfig(Section):
    """Importance weights, ESS learning-rate scaling, OPOB."""

    is_threshold: float | None = Field(8.0, gt=0)
    """Truncation of the sequence importance weight exp(sum(old_logp - behaviour_logp)) in the loss; null disables the weight."""
    ess_scaling: bool = True
    """Scale this optimizer step's learning rate by the effective sample size of the step's importance weights."""
    ess_rule: Literal["sqrt", "linear"] = "sqrt"
    """lr multiplier from lr_scale = min(1, rho / base_ess_ratio): its square root (default, AdamW) or itself."""
    base_ess_ratio: float = Field(1.0, gt=0)
    """ESS ratio rho = ESS / B at which the full learning rate is used."""
    ess_use_clipped: bool = False
    """Compute the ESS from the truncated weights instead of the raw ones (both are logged)."""
    opob: bool = False
    """Use the off-policy optimal baseline b* per group instead of GRPO advantages: one backward pass per
    trajectory (advantage 1) and two gradient-sized buffers. Needs objective.kl_coef = 0 and
    entropy_coef = 0, and direct gradient access (learner.backend torch, or deepspeed with zero_stage 0,
    float32 weights, one rank). The recipe enables it (configs/vcpo.yaml); the code's own default is off."""
    opob_norm_by_std: bool = True
    """OPOB: divide (R - b) by the group's population reward std (the recipe); false uses R - b."""
    opob_use_is_weights: bool = True
    """OPOB: weight each trajectory's ||g||^2 by its squared importance weight."""


# §6.4 (vcpo_k=10.sh): clipping disabled, seq-mean-token-mean.
@OBJECTIVES.register(
    "vcpo",
    config=VcpoConfig,
    defaults={"clip": False, "loss_agg": "seq-mean-token-mean"},
    corrects_off_policy=True,  # truncated sequence IS weight + ESS-scaled lr
    own_gradient_path=True,  # OPOB (vcpo.opob), see per_trajectory_baseline
    group_relative=True,
)
class VCPO(GRPO):
    name = "vcpo"

    def __init__(self, config: ObjectiveConfig, max_response_length: int):
        super().__init__(config, max_response_length)
        if config.vcpo.opob and (config.kl_coef != 0 or config.entropy_coef != 0):
            # With advantage 1 in each trajectory's backward, these terms would be scaled by (R - b)/σ.
            raise ValueError(
                "objective.vcpo.opob needs objective.kl_coef = 0 and objective.entropy_coef = 0 "
                f"(got {config.kl_coef} and {config.entropy_coef})"
            )

    @property
    def per_trajectory_baseline(self) -> bool:
        return self.config.vcpo.opob

    def _is_weights(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        threshold = self.config.vcpo.is_threshold
        if threshold is None or inputs.behaviour_logp is None:
            return None
        return truncated_sequence_is_weights(inputs.old_logp, inputs.behaviour_logp, inputs.mask, threshold)

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        terms = super().policy_terms(inputs)
        is_weights = self._is_weights(inputs)
        if is_weights is None:
            return terms
        weights, _ = is_weights
        return replace(terms, loss=terms.loss * weights.to(terms.loss.dtype).unsqueeze(-1))

    def clip_metrics(self, terms: PolicyLossTerms, inputs: LossInputs, scale: StepScale) -> Metrics:
        metrics = super().clip_metrics(terms, inputs, scale)
        is_weights = self._is_weights(inputs)
        if is_weights is not None:
            weights, truncated = is_weights
            metrics["vcpo/is_weight_mean"] = sequence_share(weights, inputs.mask, scale)
            metrics["vcpo/is_truncated_frac"] = sequence_share(truncated.double(), inputs.mask, scale)
        return metrics

    def lr_scale(self, step_inputs: dict[str, torch.Tensor]) -> tuple[float, Metrics]:
        """ESS-scaled lr multiplier of this optimizer step (§6.3); exactly 0.0, with `staleness/skip_step`
        = 1, when the step must be skipped (an empty step): see the module docstring."""
        cfg = self.config.vcpo
        mask = step_inputs["mask"]
        logp, behaviour = step_inputs["logp"].detach(), step_inputs["behaviour_logp"]
        valid = valid_sequences(mask)
        count = int(valid.sum())
        if count == 0:
            return 0.0, {"staleness/empty_step": 1.0, "staleness/ess_lr_scale": 0.0, "staleness/skip_step": 1.0}
        log_w = sequence_log_weights(logp, behaviour, mask)[valid]
        log_w_clipped = log_w.clamp(max=math.log(cfg.is_threshold)) if cfg.is_threshold is not None else log_w
        ess = float(log_effective_sample_size(log_w).exp())
        ess_clipped = float(log_effective_sample_size(log_w_clipped).exp())
        rho = (ess_clipped if cfg.ess_use_clipped else ess) / count
        multiplier = ess_lr_multiplier(rho, base_ess_ratio=cfg.base_ess_ratio, rule=cfg.ess_rule) if cfg.ess_scaling else 1.0
        token_log_ratio = (logp - behaviour).to(torch.float64)
        metrics: Metrics = {
            "staleness/empty_step": 0.0,
            "staleness/minibatch_ess": ess,
            "staleness/minibatch_ess_ratio": ess / count,
            "staleness/minibatch_ess_clipped": ess_clipped,
            "staleness/minibatch_ess_ratio_clipped": ess_clipped / count,
            "staleness/ess_lr_scale": multiplier,
            "staleness/skip_step": float(multiplier == 0.0),
            "staleness/rollout_seq_log_is_mean": float(log_w.mean()),
            "staleness/rollout_is_geom_mean": float(masked_mean(token_log_ratio, mask).exp()),
            "staleness/kl_rollout_old": float(masked_mean(kl_penalty(logp, behaviour, "k3"), mask)),
        }
        return multiplier, metrics
