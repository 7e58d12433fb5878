"""Importance-sampling correction of the gap between the learner's and the behaviour policy.

In async training a completion was sampled by an older policy mu (the engine's weights at
version u) and, even in sync mode, by an engine whose numerics differ from the learner's (bf16
vLLM vs fp32 learner). The objectives' ratio is taken against `old_logp`, the learner's own
log-probs before the update (the proximal policy). The correction uses the ratio r = pi_old / mu
computed from the behaviour log-probs the engine reported, in one of two ways (verl's rollout
correction: `rollout_is` truncates, `rollout_rs` rejects):

Truncated IS, multiplying each token's policy loss by a weight w in [F, C] (F = `floor`, 0 if unset):
- `token`:    w_t = clamp(r_t, F, C)                                 (TIS)
- `sequence`: w_i = clamp(prod_t r_t, F, C) on every token of sequence i
Rejection, removing tokens from the loss *and its normalisers* (band [L, C], L = `floor` or 1/C):
- `mask`:           drop token t if r_t is outside the band
- `mask_sequence`:  drop sequence i if prod_t r_t is outside the band
- `mask_geometric`: drop sequence i if the geometric mean exp(mean_t log r_t) is outside the band
  (length-independent, so its band is narrow: e.g. C = 1.001)

`ISCorrectedObjective` wraps any objective. Every objective's per-token policy loss is positively
homogeneous in the advantage (clipped surrogate, dual clip, GSPO's token form: loss(w*A) = w*loss(A)
for w >= 0), so multiplying the advantages by w multiplies the policy loss by w and leaves KL and
entropy terms alone. Objectives that take per-token weights (GTPO multiplies its shaped advantage by
`token_weights`) get w folded into those weights instead. Rejection zeroes the rejected tokens'
mask, so per-sequence denominators (seq-mean-token-mean) and the KL/entropy terms drop them too;
the step-level normalisers (`StepScale`) drop them when the learner counts them from `loss_mask`.

The weights carry no gradient. Statistics are accumulated per optimizer step (all micro-batches of
this rank) and read with `take_stats`; the learner ranks gather them and `combine_stats` sums them,
so the effective sample size is that of the whole step.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from rlpost.objectives.base import AdvantageInputs, LossInputs, Metrics, Objective, StepScale

LOG_CLAMP = 20.0
TRUNCATION_MODES = ("token", "sequence")
REJECTION_MODES = ("mask", "mask_sequence", "mask_geometric")
MODES = TRUNCATION_MODES + REJECTION_MODES
SEQUENCE_MODES = ("sequence", "mask_sequence", "mask_geometric")
"""Modes with one weight per sequence (statistics count sequences, not tokens)."""


def check_mode(mode: str) -> None:
    """Refuse an unknown correction mode, naming the known ones."""
    if mode not in MODES:
        raise ValueError(f"unknown importance-sampling mode {mode!r}; use one of {', '.join(MODES)}")


def log_bounds(mode: str, cap: float, floor: float | None) -> tuple[float, float]:
    """(log lower, log upper) bound of the ratio: truncation [F or 0, C], rejection [L or 1/C, C]."""
    if floor is not None:
        return math.log(floor), math.log(cap)
    return (-LOG_CLAMP if mode in TRUNCATION_MODES else -math.log(cap)), math.log(cap)


def unit_log_ratios(log_ratio: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """log r per unit: [N, T] per token, Σ_t over the sequence ([N]), or its mean (geometric, [N])."""
    if mode not in SEQUENCE_MODES:
        return log_ratio
    total = log_ratio.sum(dim=-1)
    if mode == "mask_geometric":
        return total / mask.to(total.dtype).sum(dim=-1).clamp(min=1.0)
    return total


def importance_weights(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, mode: str, cap: float, floor: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights [N, T], raw log-ratios per unit, truncated/rejected flags per unit).

    Units are tokens ([N, T]) or sequences ([N], `SEQUENCE_MODES`). Weights are 0 on padding;
    a sequence-level weight repeats over the sequence's tokens. Rejection weights are 0 or 1.
    """
    check_mode(mode)
    valid = mask.bool()
    log_ratio = torch.where(valid, old_logp.detach().double() - behaviour_logp.double(), torch.zeros((), dtype=torch.float64))
    units = unit_log_ratios(log_ratio, mask, mode)
    low, high = log_bounds(mode, cap, floor)
    flagged = (units > high) | (units < low)
    if mode in TRUNCATION_MODES:
        weights = torch.exp(units.clamp(max(low, -LOG_CLAMP), min(high, LOG_CLAMP)))
    else:
        weights = (~flagged).double()
    if mode in SEQUENCE_MODES:
        weights = weights.unsqueeze(-1).expand_as(log_ratio)
    else:
        flagged = flagged & valid
    return torch.where(valid, weights, torch.zeros_like(weights)), units, flagged


class ISStats:
    """Additive accumulators of one optimizer step's importance weights (this rank)."""

    KEYS = ("count", "sum", "sum_sq", "flagged", "raw_sum", "raw_sum_sq", "log_ratio_sum", "log_ratio_abs_sum")

    def __init__(self) -> None:
        self.values = dict.fromkeys(self.KEYS, 0.0)
        self.min = math.inf
        self.max = -math.inf

    def add(self, weights: torch.Tensor, raw_log: torch.Tensor, flagged: torch.Tensor, units: torch.Tensor) -> None:
        """`weights`, `raw_log`, `flagged` per unit (token or sequence) where `units` is True."""
        w = weights[units].double()
        if w.numel() == 0:
            return
        raw = torch.exp(raw_log[units].double().clamp(-LOG_CLAMP, LOG_CLAMP))
        v = self.values
        v["count"] += w.numel()
        v["sum"] += float(w.sum())
        v["sum_sq"] += float((w * w).sum())
        v["flagged"] += float(flagged[units].double().sum())
        v["raw_sum"] += float(raw.sum())
        v["raw_sum_sq"] += float((raw * raw).sum())
        v["log_ratio_sum"] += float(raw_log[units].double().sum())
        v["log_ratio_abs_sum"] += float(raw_log[units].double().abs().sum())
        self.min = min(self.min, float(w.min()))
        self.max = max(self.max, float(w.max()))

    def as_dict(self) -> dict[str, float]:
        return {**self.values, "min": self.min, "max": self.max}


def combine_stats(per_rank: list[dict[str, float]], mode: str) -> Metrics:
    """Metrics of one step from the accumulators of every rank.

    is/weight_mean|min|max, is/truncated_frac (mask mode: is/masked_frac), is/ess_ratio and
    is/raw_ess_ratio (Kish's (sum w)^2 / (n sum w^2) of the applied and of the untruncated weights,
    1 = on-policy), is/log_ratio_mean and is/log_ratio_abs_mean (per unit: token or sequence).
    """
    total = {key: sum(stats[key] for stats in per_rank) for key in ISStats.KEYS}
    count = total["count"]
    if count == 0:
        return {}
    flagged_key = "is/masked_frac" if mode in REJECTION_MODES else "is/truncated_frac"
    return {
        "is/weight_mean": total["sum"] / count,
        "is/weight_min": min(stats["min"] for stats in per_rank),
        "is/weight_max": max(stats["max"] for stats in per_rank),
        flagged_key: total["flagged"] / count,
        "is/ess_ratio": total["sum"] ** 2 / (count * total["sum_sq"]) if total["sum_sq"] > 0 else 0.0,
        "is/raw_ess_ratio": total["raw_sum"] ** 2 / (count * total["raw_sum_sq"]) if total["raw_sum_sq"] > 0 else 0.0,
        "is/log_ratio_mean": total["log_ratio_sum"] / count,
        "is/log_ratio_abs_mean": total["log_ratio_abs_sum"] / count,
    }


class ISCorrectedObjective(Objective):
    """`inner` with its per-token policy loss multiplied by truncated importance weights, or with
    the tokens the rejection modes reject removed from its mask."""

    def __init__(self, inner: Objective, mode: str, cap: float, floor: float | None = None):
        check_mode(mode)
        # No super().__init__: every attribute not defined here is the inner objective's.
        self.inner = inner
        self.mode = mode
        self.cap = cap
        self.floor = floor
        self._stats = ISStats()

    # ---- delegation ---------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def config(self):  # type: ignore[override]
        return self.inner.config

    @property
    def max_response_length(self) -> int:  # type: ignore[override]
        return self.inner.max_response_length

    @property
    def needs_entropy(self) -> bool:  # type: ignore[override]
        return self.inner.needs_entropy

    @property
    def needs_token_ids(self) -> bool:  # type: ignore[override]
        return self.inner.needs_token_ids

    @property
    def needs_reference(self) -> bool:
        return self.inner.needs_reference

    @property
    def rejects_tokens(self) -> bool:  # type: ignore[override]
        return self.mode in REJECTION_MODES

    @property
    def per_trajectory_baseline(self) -> bool:  # type: ignore[override]
        return self.inner.per_trajectory_baseline

    def shape_rewards(self, inputs: AdvantageInputs):
        return self.inner.shape_rewards(inputs)

    def compute_advantages(self, inputs: AdvantageInputs):
        return self.inner.compute_advantages(inputs)

    def token_weights(self, inputs: AdvantageInputs):
        return self.inner.token_weights(inputs)

    def sequences_in_loss(self, inputs: AdvantageInputs):
        return self.inner.sequences_in_loss(inputs)

    def group_filter(self, prompts_per_step: int):
        return self.inner.group_filter(prompts_per_step)

    def lr_scale(self, step_inputs: dict[str, torch.Tensor]):
        return self.inner.lr_scale(step_inputs)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    # ---- the correction -------------------------------------------------------------------
    def correction_weights(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`importance_weights` of this correction for `inputs`."""
        if inputs.behaviour_logp is None:
            raise ValueError("importance-sampling correction needs LossInputs.behaviour_logp (the engine's log-probs)")
        return importance_weights(inputs.old_logp, inputs.behaviour_logp, inputs.mask, self.mode, self.cap, self.floor)

    def loss_mask(self, old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`mask` [N, T] without the tokens a rejection mode rejects (unchanged for truncation): the
        mask the learner must count `StepScale` from, so rejected tokens leave the step's normalisers."""
        if self.mode not in REJECTION_MODES:
            return mask
        weights, _, _ = importance_weights(old_logp, behaviour_logp, mask, self.mode, self.cap, self.floor)
        return mask * weights.to(mask.dtype)

    def compute_loss(self, inputs: LossInputs, scale: StepScale) -> tuple[torch.Tensor, Metrics]:
        weights, raw_log, flagged = self.correction_weights(inputs)
        if self.mode in SEQUENCE_MODES:
            units = inputs.mask.sum(dim=-1) > 0
            self._stats.add(weights[:, 0] if weights.shape[1] else weights.sum(-1), raw_log, flagged, units)
        else:
            self._stats.add(weights, raw_log, flagged, inputs.mask.bool())
        if self.mode in REJECTION_MODES:
            return self.inner.compute_loss(replace(inputs, mask=inputs.mask * weights.to(inputs.mask.dtype)), scale)
        return self.inner.compute_loss(self.reweighted(inputs, weights), scale)

    @staticmethod
    def reweighted(inputs: LossInputs, weights: torch.Tensor) -> LossInputs:
        """`inputs` whose policy loss comes out multiplied by `weights` [N, T] (see the module docstring)."""
        if inputs.token_weights is not None:
            return replace(inputs, token_weights=inputs.token_weights * weights.to(inputs.token_weights.dtype))
        advantages = inputs.advantages
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(-1).expand_as(inputs.mask)
        return replace(inputs, advantages=advantages * weights.to(advantages.dtype))

    def take_stats(self) -> dict[str, float]:
        """This rank's accumulators since the last call (one optimizer step), then reset."""
        stats, self._stats = self._stats.as_dict(), ISStats()
        return stats


def wrap_objective(objective: Objective, mode: str, cap: float, floor: float | None = None) -> Objective:
    """`objective` with the correction `mode` (`none` returns it unchanged); `floor`: `cluster.is_floor`."""
    return objective if mode == "none" else ISCorrectedObjective(objective, mode, cap, floor)
