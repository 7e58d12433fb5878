"""VADE: variance-aware prompt selection with per-prompt Beta posteriors (ALGORITHMS.md §10).

Confirmed (§10.1, §10.5): a Beta posterior of each prompt's success rate, Thompson sampling,
the information score I(p) = p (1 - p)^2, and a two-scale prior decay.
Reconstructed (§10.2, knobs in `sampler.vade`): the count update, the decay formulas, the
candidate pool and the selection rule. Concretely, per step:

1. pool: the next ceil(pool_factor * B) prompts of the shuffled epoch order, so every prompt
   keeps coming up for consideration even after its posterior says it is saturated;
2. Thompson draw p_i ~ Beta(a_i, b_i) per pool prompt, score I(p_i);
3. selection: prompts never rolled out first (their posterior is only the prior), then the
   highest scores (`top`) or draws proportional to the score (`proportional`);
4. after scoring, every prompt decays toward the prior with lambda_slow (the slow scale, so
   that long-unvisited prompts regain uncertainty), then each rolled-out prompt decays with
   lambda_fast and adds its counts: a <- a0 + lambda_fast (a - a0) + s, b <- b0 + lambda_fast
   (b - b0) + (n - s). With a0 = b0 = 1 this is §10.5's Beta(alpha + 1, beta + 1) over
   discounted counts, and it is exactly the MoPPS update (§10.5).

Decay is written prior + lambda (x - prior) rather than lambda x + (1 - lambda) prior, so a
posterior that sits at the prior stays there bit for bit (unvisited prompts need no storage).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from rlpost.config.base import Section
from rlpost.samplers.base import PromptSampler, register_sampler
from rlpost.samplers.outcomes import binary_outcomes, information_score
from rlpost.types import Group, Prompt

SelectionMode = Literal["top", "proportional"]

_MIN_WEIGHT = 1e-300
"""Floor of proportional-selection weights: a draw of exactly 0 or 1 scores 0, and numpy's
weighted choice without replacement needs at least k non-zero weights."""



class VadeConfig(Section):
    """VADE (ALGORITHMS.md §10): Beta posterior per prompt, Thompson sampling on p(1-p)^2.

    The count update and the two-scale decay are a documented reconstruction (§10.2/§10.5);
    with both lambdas at 1 the posterior is the plain Beta-Bernoulli one.
    """

    pool_factor: float = Field(4.0, ge=1.0)
    """Candidate pool per step: ceil(pool_factor * prompts_per_step) prompts taken from the shuffled epoch order (capped at the dataset size); the best prompts_per_step of them are rolled out."""
    selection: Literal["top", "proportional"] = "top"
    """`top` keeps the prompts with the highest sampled information score; `proportional` draws them without replacement with probability proportional to it."""
    prior_alpha: float = Field(1.0, gt=0)
    """Prior successes a0 of every prompt's Beta(a, b) posterior (1, 1 is uniform); decays pull back toward it."""
    prior_beta: float = Field(1.0, gt=0)
    """Prior failures b0 of every prompt's Beta(a, b) posterior."""
    lambda_fast: float = Field(0.9, ge=0, le=1)
    """Per-visit decay: before a prompt's new counts are added, (a, b) <- prior + lambda_fast * ((a, b) - prior); 1 keeps all evidence."""
    lambda_slow: float = Field(0.999, ge=0, le=1)
    """Global decay applied to every prompt once per update step: (a, b) <- prior + lambda_slow * ((a, b) - prior); 1 disables it."""
    explore_unseen: bool = True
    """Select prompts never rolled out before any seen prompt in the pool, so every prompt gets a first estimate."""


def decay_toward_prior(x: np.ndarray | float, prior: float, lam: float) -> np.ndarray | float:
    """prior + lam * (x - prior); lam = 1 returns x untouched (no rounding drift)."""
    if lam == 1.0:
        return x
    return prior + lam * (x - prior)


def beta_update(
    a: float, b: float, successes: int, trials: int, *, lam: float, prior_a: float, prior_b: float
) -> tuple[float, float]:
    """One visit: decay the prompt's posterior toward the prior by `lam`, then add the counts."""
    return (
        decay_toward_prior(a, prior_a, lam) + successes,
        decay_toward_prior(b, prior_b, lam) + (trials - successes),
    )


def choose(scores: np.ndarray, k: int, mode: SelectionMode, rng: np.random.Generator) -> np.ndarray:
    """Positions of k entries of `scores`: the k largest (stable on ties), or weighted draws."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if mode == "top":
        return np.argsort(-scores, kind="stable")[:k]
    weights = np.maximum(scores, _MIN_WEIGHT)
    return rng.choice(len(scores), size=k, replace=False, p=weights / weights.sum())


def beta_mean_var(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean a/(a+b) and variance ab/((a+b)^2 (a+b+1)) of Beta(a, b)."""
    total = a + b
    return a / total, a * b / (total**2 * (total + 1.0))


@register_sampler("vade", config=VadeConfig)
class VadeSampler(PromptSampler):
    """Thompson sampling of high-information prompts from a pool drawn in epoch order."""

    def __init__(
        self,
        prompts: list[Prompt],
        *,
        prompts_per_step: int,
        default_n: int,
        seed: int,
        config: VadeConfig | None = None,
    ) -> None:
        super().__init__(prompts, prompts_per_step=prompts_per_step, default_n=default_n, seed=seed)
        self.config = config or VadeConfig()
        self.pool_size = min(len(prompts), max(prompts_per_step, math.ceil(self.config.pool_factor * prompts_per_step)))
        self._reset_posteriors()

    def _reset_posteriors(self) -> None:
        size = len(self.prompts)
        self.alpha = np.full(size, self.config.prior_alpha)
        self.beta = np.full(size, self.config.prior_beta)
        self.visits = np.zeros(size, dtype=np.int64)

    def next_batch(self, step: int) -> list[tuple[Prompt, int]]:
        rng = self._next_selection_rng()
        pool = self.order.take(self.pool_size)
        draws = rng.beta(self.alpha[pool], self.beta[pool])
        scores = information_score(draws)
        unseen = (self.visits[pool] == 0) if self.config.explore_unseen else np.zeros(len(pool), dtype=bool)
        chosen = self._select(scores, unseen, rng)
        chosen.sort()  # keep epoch order within the batch: selection decides membership only
        self.pending_metrics = self._selection_metrics(pool, scores, chosen, unseen)
        return [(self.prompts[i], self.default_n) for i in pool[chosen]]

    def _select(self, scores: np.ndarray, unseen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Pool positions of the B selected prompts: unseen ones first, then by score."""
        first = np.flatnonzero(unseen)
        rest = np.flatnonzero(~unseen)
        mode = self.config.selection
        picked_first = first[choose(scores[first], min(self.prompts_per_step, len(first)), mode, rng)]
        picked_rest = rest[choose(scores[rest], self.prompts_per_step - len(picked_first), mode, rng)]
        return np.concatenate([picked_first, picked_rest])

    def _selection_metrics(
        self, pool: np.ndarray, scores: np.ndarray, chosen: np.ndarray, unseen: np.ndarray
    ) -> dict[str, float]:
        selected = pool[chosen]
        mean, var = beta_mean_var(self.alpha[selected], self.beta[selected])
        weights = scores / scores.sum() if scores.sum() > 0 else np.full(len(scores), 1.0 / len(scores))
        entropy = -float(np.sum(weights * np.log(np.maximum(weights, _MIN_WEIGHT))))
        return {
            "sampler/vade/pool_size": float(len(pool)),
            "sampler/vade/unseen_selected": float(unseen[chosen].sum()),
            "sampler/vade/selected_posterior_mean": float(mean.mean()),
            "sampler/vade/selected_posterior_var": float(var.mean()),
            "sampler/vade/selected_score_mean": float(scores[chosen].mean()),
            "sampler/vade/pool_score_mean": float(scores.mean()),
            # 1 = the pool's scores are flat (selection close to uniform), lower = concentrated.
            "sampler/vade/selection_entropy": entropy / math.log(len(pool)) if len(pool) > 1 else 0.0,
        }

    def _learn(self, groups: list[Group]) -> dict[str, float]:
        cfg = self.config
        self.alpha = decay_toward_prior(self.alpha, cfg.prior_alpha, cfg.lambda_slow)
        self.beta = decay_toward_prior(self.beta, cfg.prior_beta, cfg.lambda_slow)
        for index, group in zip(self._indices_of(groups), groups, strict=True):
            outcomes = binary_outcomes(group)
            if not outcomes:
                continue
            self.alpha[index], self.beta[index] = beta_update(
                float(self.alpha[index]),
                float(self.beta[index]),
                sum(outcomes),
                len(outcomes),
                lam=cfg.lambda_fast,
                prior_a=cfg.prior_alpha,
                prior_b=cfg.prior_beta,
            )
            self.visits[index] += 1
        return self._posterior_metrics()

    def _posterior_metrics(self) -> dict[str, float]:
        """Summary of the updated posteriors of every prompt visited so far (unvisited ones sit at the prior)."""
        visited = self.visits > 0
        mean, var = beta_mean_var(self.alpha[visited], self.beta[visited])
        return {
            "sampler/vade/never_visited_frac": float(np.mean(~visited)),
            "sampler/vade/visited_posterior_mean": float(mean.mean()) if visited.any() else 0.0,
            "sampler/vade/visited_posterior_var": float(var.mean()) if visited.any() else 0.0,
        }

    def posterior(self, prompt_id: str) -> tuple[float, float]:
        """Current Beta(a, b) of a prompt."""
        index = self.index_of[prompt_id]
        return float(self.alpha[index]), float(self.beta[index])

    def _extra_state(self) -> dict[str, Any]:
        visited = np.flatnonzero(self.visits > 0)
        return {
            "posteriors": {
                self.prompts[i].prompt_id: [float(self.alpha[i]), float(self.beta[i]), int(self.visits[i])]
                for i in visited
            }
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._reset_posteriors()
        for prompt_id, (a, b, visits) in state["posteriors"].items():
            index = self.index_of[prompt_id]
            self.alpha[index], self.beta[index], self.visits[index] = float(a), float(b), int(visits)
