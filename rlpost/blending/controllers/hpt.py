"""HPT (Hybrid Post-Training, `unify_strategy="switch"`), ALGORITHMS.md §8.

Per question q with rollouts o_1..o_n and c = #successful rollouts:

    c <= gate:  drop q's rollouts; train on q's demonstration with the SFT loss
    otherwise:  keep q's rollouts; train them with the RL objective

and one optimizer step on L = L_RL + sft_coef * L_SFT (§8.3). The RL advantages are computed on the
kept groups only (their own group statistics), so dropped questions leave no rows behind (§8.5).
The authors' RL part is Dr.GRPO-style: A = r - mean_g, no clipping, Σ ℓ·M / T_max
(`objective: {name: dr_grpo, clip: false, loss_agg: seq-mean-token-sum-norm}`, configs/hpt.yaml).

Differences from the authors' code, by design:
- Their L_SFT is a token mean over the demonstration tokens *of each micro-batch* (NaN and skipped
  when a micro-batch has none); here it is the token mean over the step's demonstration tokens
  (`blending.sft.loss_agg`), the same whatever the micro-batching.
- The gate is a count of successes (the code), not the paper's threshold on the success rate P.
  With variable group sizes a count means different rates; size-1 groups are allowed.
- The `switch_gate_off` branch (off-policy RL on demonstrations) and the code's "soft" coefficient
  tables are not implemented (not the paper's main method).

Soft gate (`hpt.mode: soft`, rlpost's continuous version of the paper's alpha = f(P), beta = g(P) =
1 - f(P)): instead of the indicator f(P) = 1[P > gamma], a ramp on the question's success rate P,

    alpha(P) = clamp((P - soft_low) / (soft_high - soft_low), 0, 1),   beta(P) = 1 - alpha(P)

A question with alpha > 0 trains with RL on its rollouts, one with beta > 0 with SFT on its
demonstration (a question between the bounds does both). The learner takes one weight per loss,
so each side's weight is the mean of its questions' coefficients: w_rl = mean alpha over the RL
questions, w_sft = sft_coef * mean beta over the SFT questions (exact when every question of a side
has the same coefficient, as the switch's 1 and sft_coef are).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlpost.blending.base import BlendController, BlendPlan, BlendProbe, Metrics, StepStats, register_controller
from rlpost.config.base import Section
from rlpost.objectives.luffy import OFF_POLICY_COMPONENT
from rlpost.types import Group


class HptConfig(Section):
    """HPT (§8.3, `unify_strategy="switch"`): per question, SFT on its demonstration when at most
    `gate` of its rollouts succeed (its rollouts are dropped), RL on its rollouts otherwise; one
    optimizer step on L = L_RL + sft_coef * L_SFT.

    The RL part uses `objective` on the kept groups only (advantages from their own group
    statistics). The authors' setting is Dr.GRPO advantages (no std), no clipping and Σ/T_max
    aggregation: `objective: {name: dr_grpo, clip: false, loss_agg: seq-mean-token-sum-norm}`
    (configs/hpt.yaml).
    """

    gate: int = Field(0, ge=0)
    """switch_gate: a question goes to SFT when its count of successful rollouts is <= gate (0: only never-solved questions)."""
    success: Literal["correct", "reward"] = "correct"
    """Success test of a rollout: its `correct` flag (the accuracy reward), or its total reward equal to `success_value` (the authors' code)."""
    success_value: float = 1.0
    """Reward that counts as a success when `success: reward` (compared exactly, as in the code)."""
    sft_coef: float = Field(1.0, ge=0)
    """sft_loss_coef: weight of the SFT loss (the script's comment suggests 0.3 for a 1.5B model)."""
    mode: Literal["switch", "soft"] = "switch"
    """`switch`: the paper's hard gate on `gate`; `soft`: a continuous mix, alpha(P) rising linearly from 0 at P = soft_low to 1 at P = soft_high (P the question's success rate), beta = 1 - alpha."""
    soft_low: float = Field(0.0, ge=0, le=1)
    """Soft gate: success rate at or below which a question is pure SFT (alpha = 0)."""
    soft_high: float = Field(0.25, gt=0, le=1)
    """Soft gate: success rate at or above which a question is pure RL (alpha = 1); must exceed soft_low."""

    @model_validator(mode="after")
    def _ordered(self) -> HptConfig:
        if self.soft_low >= self.soft_high:
            raise ValueError(f"soft_low ({self.soft_low}) must be < soft_high ({self.soft_high})")
        return self


def count_successes(group: Group, success: str, success_value: float) -> int:
    """Successful rollouts of `group`: `correct` flags, or rewards exactly equal to `success_value`.

    A demonstration that the `luffy` objective put into the group (reward component
    `luffy/off_policy` = 1) is not a rollout and does not count.
    """
    marker = group.reward_components.get(OFF_POLICY_COMPONENT, [0.0] * group.size)
    if success == "correct":
        return sum(bool(c) for c, m in zip(group.correct, marker) if m < 0.5)
    return sum(float(r) == success_value for r, m in zip(group.rewards, marker) if m < 0.5)


def route(successes: list[int], gate: int) -> tuple[list[int], list[int]]:
    """(rl_groups, sft_groups): SFT for questions with at most `gate` successes, RL for the others."""
    rl = [i for i, c in enumerate(successes) if c > gate]
    sft = [i for i, c in enumerate(successes) if c <= gate]
    return rl, sft


def soft_alpha(rate: float, low: float, high: float) -> float:
    """alpha(P) = clamp((P - low) / (high - low), 0, 1): the RL coefficient of the soft gate."""
    return min(max((rate - low) / (high - low), 0.0), 1.0)


def soft_plan(alphas: list[float], sft_coef: float) -> tuple[list[int], list[int], float, float]:
    """(rl_groups, sft_groups, w_rl, w_sft) of the soft gate: RL where alpha > 0, SFT where
    beta = 1 - alpha > 0, each side weighted by the mean coefficient of its questions."""
    rl = [i for i, a in enumerate(alphas) if a > 0]
    sft = [i for i, a in enumerate(alphas) if a < 1]
    w_rl = sum(alphas[i] for i in rl) / len(rl) if rl else 0.0
    w_sft = sft_coef * sum(1.0 - alphas[i] for i in sft) / len(sft) if sft else 0.0
    return rl, sft, w_rl, w_sft


@register_controller("hpt", config=HptConfig)
class HPT(BlendController):
    def __init__(self, config, seed: int):
        super().__init__(config, seed)
        self.settings = config.hpt
        self.steps_done = 0
        self.sft_questions = 0
        self.rl_questions = 0
        self._counts = (0, 0)
        """(RL questions, SFT questions) of the pending step."""

    def plan(self, stats: StepStats) -> BlendPlan:
        s = self.settings
        successes = [count_successes(group, s.success, s.success_value) for group in stats.groups]
        sizes = stats.group_sizes
        if s.mode == "soft":
            alphas = [soft_alpha(c / max(n, 1), s.soft_low, s.soft_high) for c, n in zip(successes, sizes, strict=True)]
            rl_groups, sft_groups, rl_weight, sft_weight = soft_plan(alphas, s.sft_coef)
        else:
            rl_groups, sft_groups = route(successes, s.gate)
            rl_weight, sft_weight = 1.0, s.sft_coef
        step_type = "mixed" if rl_groups and sft_groups else ("rl" if rl_groups else "sft")
        n = max(len(successes), 1)
        metrics: Metrics = {
            "hpt/sft_questions": float(len(sft_groups)),
            "hpt/rl_questions": float(len(rl_groups)),
            "hpt/rollout_rows": float(sum(sizes[i] for i in rl_groups)),
            "hpt/demo_rows": float(len(sft_groups)),
            "hpt/solve_none": sum(c == 0 for c in successes) / n,
            "hpt/solve_all": sum(c == size for c, size in zip(successes, sizes, strict=True)) / n,
        }
        if s.mode == "soft":
            metrics["hpt/soft_alpha_mean"] = sum(alphas) / n
            metrics["hpt/soft_rl_weight"] = rl_weight
            metrics["hpt/soft_sft_weight"] = sft_weight
        self._counts = (len(rl_groups), len(sft_groups))
        return BlendPlan(step_type, rl_groups, sft_groups, rl_weight=rl_weight, sft_weight=sft_weight, metrics=metrics)

    def observe(self, probe: BlendProbe) -> Metrics:
        rl, sft = self._counts
        self._counts = (0, 0)
        self.steps_done += 1
        self.rl_questions += rl
        self.sft_questions += sft
        total = max(self.rl_questions + self.sft_questions, 1)
        return {"hpt/sft_question_fraction_total": self.sft_questions / total}

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "sft_questions": self.sft_questions, "rl_questions": self.rl_questions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self.sft_questions = int(state["sft_questions"])
        self.rl_questions = int(state["rl_questions"])
