"""BNPO: Beta Normalization Policy Optimization (changyi7231/BNPO).

ALGORITHMS.md §4. Rewards mapped to [0, 1]; p_g = the group's mean score; a Beta(a, b) fitted by
the method of moments to the step's {p_g}; A_i = (score_i - p_g) / BetaPDF(p_g; 1 + a/3, 1 + b/3).
alpha = beta = 1 gives REINFORCE with a group baseline, alpha = beta = 3/2 GRPO up to a constant.
Optional decomposition: one such advantage per reward component, averaged. The loss is GRPO's.

Deviations from the authors' code, each a guard of §4.5:
- p_g in {0, 1} (binary rewards, solved or failed group) gives A = 0 without evaluating the pdf;
- a degenerate fit (fewer than two groups, variance <= 1e-12, non-finite) falls back to
  alpha = beta = 1 and is counted;
- singleton groups get A = 0 and stay out of the fit (the code gives them p := 0 and fits it);
- rewards outside [min_value, max_value] raise a ValueError naming the knob (the code asserts);
- optional `max_adv` clamp (not in the code), its hit rate logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, Metrics
from rlpost.objectives.core import group_statistics
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES

VAR_FLOOR = 1e-12
"""Below this variance of the group means the moment fit is degenerate (v -> 0 divides by zero)."""


@dataclass
class BetaFit:
    alpha: float
    beta: float
    p_mean: float
    """m, mean of the group means."""
    p_var: float
    """v, unbiased variance of the group means."""
    fell_back: bool
    """The fit was degenerate and alpha = beta = 1 was used."""


def fit_beta_moments(p: torch.Tensor) -> BetaFit:
    """Method-of-moments Beta fit of group means p [G] -> (alpha, beta) of the BNPO weight.

    k = m(1-m)/v - 1, a = k·m, b = k·(1-m), alpha = max(1 + a/3, 1), beta = max(1 + b/3, 1),
    with v the unbiased variance (torch's default, as in the code). An overdispersed v > m(1-m)
    gives k < 0 and the clamps give alpha = beta = 1, which is the intended behaviour.
    """
    p = p.to(torch.float64)
    if p.numel() < 2:
        return BetaFit(1.0, 1.0, float(p.mean()) if p.numel() else 0.0, 0.0, True)
    m, v = float(p.mean()), float(p.var(unbiased=True))
    if v <= VAR_FLOOR:
        return BetaFit(1.0, 1.0, m, v, True)
    k = m * (1 - m) / v - 1
    alpha, beta = max(1 + k * m / 3, 1.0), max(1 + k * (1 - m) / 3, 1.0)
    if not (torch.isfinite(torch.tensor([alpha, beta])).all()):
        return BetaFit(1.0, 1.0, m, v, True)
    return BetaFit(alpha, beta, m, v, False)


def beta_log_pdf(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """log BetaPDF(p; alpha, beta) for p strictly inside (0, 1), [G] -> [G]."""
    p = p.to(torch.float64)
    log_norm = torch.lgamma(torch.tensor(alpha + beta, dtype=torch.float64)) - torch.lgamma(
        torch.tensor(alpha, dtype=torch.float64)
    ) - torch.lgamma(torch.tensor(beta, dtype=torch.float64))
    return (alpha - 1) * torch.log(p) + (beta - 1) * torch.log1p(-p) + log_norm


@dataclass
class BnpoResult:
    advantages: torch.Tensor
    """[N] Beta-normalised advantages."""
    fit: BetaFit
    weights: torch.Tensor
    """[G'] weights 1/BetaPDF(p_g) of the groups with 0 < p_g < 1 (the only ones with a non-zero A)."""
    weights_clamped: int
    """How many of those weights hit `weight_max`."""


def bnpo_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    *,
    alpha: float | None = None,
    beta: float | None = None,
    weight_max: float = 1e6,
) -> BnpoResult:
    """BNPO advantages of scores in [0, 1], [N] -> [N] (§4.3), with the guards of §4.5.

    alpha/beta: force the Beta parameters (both given) instead of fitting them to the step.
    """
    scores = scores.to(torch.float64)
    stats = group_statistics(scores, group_index, std_unbiased=False)
    multi = stats.size > 1
    p = stats.mean
    if alpha is not None and beta is not None:
        fit = BetaFit(alpha, beta, float(p[multi].mean()) if multi.any() else 0.0, 0.0, False)
    else:
        fit = fit_beta_moments(p[multi])
    interior = multi & (p > 0) & (p < 1)
    weights = torch.zeros_like(p)
    weights[interior] = torch.exp(-beta_log_pdf(p[interior], fit.alpha, fit.beta)).clamp(0.0, weight_max)
    advantages = weights[stats.ids] * stats.centred(scores)
    return BnpoResult(
        advantages=advantages,
        fit=fit,
        weights=weights[interior],
        weights_clamped=int((weights[interior] >= weight_max).sum()),
    )


class BnpoConfig(Section):
    """Reward range, advantage decomposition, weight guards."""

    min_value: float = 0.0
    """Lowest possible reward; rewards are mapped to [0, 1] by (r - min_value) / (max_value - min_value)."""
    max_value: float = 1.0
    """Highest possible reward (set 2 for accuracy + format summed without decomposition)."""
    decompose: bool = False
    """Advantage decomposition: a Beta-normalised advantage per reward component, averaged."""
    components: list[str] | None = None
    """Reward names decomposed over; null uses every component present. List only enabled rewards."""
    weight_max: float = Field(1e6, gt=0)
    """Upper clamp of the weight 1/BetaPDF(p) (the authors' code uses 1e6)."""
    max_adv: float | None = Field(None, gt=0)
    """Optional clamp of |A| (not in the authors' code); its hit rate is logged. Null disables it."""


# §4.4 (BNPO run.sh).
@OBJECTIVES.register(
    "bnpo", config=BnpoConfig, defaults={"clip_low": 0.2, "clip_high": 0.28, "clip_c": 10.0, "loss_agg": "seq-mean-token-sum"},
    group_relative=True,
)
class BNPO(GRPO):
    name = "bnpo"

    def _scores(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """Affine map of rewards to [0, 1]; values outside the declared range are an error."""
        low, high = self.config.bnpo.min_value, self.config.bnpo.max_value
        if high <= low:
            raise ValueError(f"objective.bnpo.max_value ({high}) must exceed min_value ({low})")
        scores = (values.to(torch.float64) - low) / (high - low)
        # Rewards arrive as float32: 1.0 + 0.2 is 1.2000000477, which must not count as above max_value 1.2.
        tolerance = 4 * torch.finfo(values.dtype).eps if values.is_floating_point() else 0.0
        if scores.numel() and (scores.min() < -tolerance or scores.max() > 1 + tolerance):
            raise ValueError(
                f"BNPO: {what} outside [objective.bnpo.min_value, max_value] = [{low}, {high}] "
                f"(observed {float(values.min())}..{float(values.max())}); widen the range (e.g. max_value=2 "
                "for accuracy + format) or enable objective.bnpo.decompose"
            )
        return scores.clamp(0.0, 1.0)

    def _components(self, inputs: AdvantageInputs) -> dict[str, torch.Tensor]:
        names = self.config.bnpo.components or sorted(inputs.reward_components)
        missing = [n for n in names if n not in inputs.reward_components]
        if missing or not names:
            raise ValueError(
                f"BNPO decomposition needs reward components {missing or 'any'}; got {sorted(inputs.reward_components)}"
            )
        return {name: inputs.reward_components[name] for name in names}

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        cfg = self.config.bnpo
        if cfg.decompose:
            sources = {name: self._scores(v, f"reward component {name!r}") for name, v in self._components(inputs).items()}
        else:
            sources = {"": self._scores(inputs.rewards, "rewards")}
        results = {name: bnpo_advantages(s, inputs.group_index, weight_max=cfg.weight_max) for name, s in sources.items()}
        advantages = torch.stack([r.advantages for r in results.values()]).mean(dim=0)

        metrics: Metrics = {}
        if cfg.max_adv is not None:
            metrics["bnpo/max_adv_clamped_frac"] = float((advantages.abs() > cfg.max_adv).double().mean())
            advantages = advantages.clamp(-cfg.max_adv, cfg.max_adv)
        for name, result in results.items():
            prefix = f"bnpo/{name}/" if name else "bnpo/"
            metrics.update(_fit_metrics(result, prefix))
            if name:
                metrics[f"{prefix}adv_mean_abs"] = float(result.advantages.abs().mean())
        metrics["bnpo/fallback"] = float(sum(r.fit.fell_back for r in results.values()))
        advantages = advantages.to(inputs.rewards.dtype if inputs.rewards.is_floating_point() else torch.float32)
        return advantages, {**self.advantage_metrics(inputs, advantages), **metrics}


def _fit_metrics(result: BnpoResult, prefix: str) -> Metrics:
    w = result.weights
    return {
        f"{prefix}alpha": result.fit.alpha,
        f"{prefix}beta": result.fit.beta,
        f"{prefix}p_mean": result.fit.p_mean,
        f"{prefix}p_var": result.fit.p_var,
        f"{prefix}weight_min": float(w.min()) if w.numel() else 0.0,
        f"{prefix}weight_mean": float(w.mean()) if w.numel() else 0.0,
        f"{prefix}weight_max": float(w.max()) if w.numel() else 0.0,
        f"{prefix}weight_clamped_frac": result.weights_clamped / max(w.numel(), 1),
    }
