"""Held-out evaluation: pass@1 / pass@k under math-verify, and the boxed-answer rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import comb

from rlpost.config.schema import RewardConfig, RewardFunctionConfig
from rlpost.rewards.manager import RewardManager
from rlpost.rollout.base import RolloutEngine, SamplingSettings
from rlpost.types import Prompt

EVAL_REWARDS = RewardConfig(
    functions=[RewardFunctionConfig(name="math_verify"), RewardFunctionConfig(name="boxed_format", weight=0.0)],
    correct_reward="math_verify",
)


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Unbiased pass@k estimate from `samples` draws with `correct` successes (Chen et al. 2021)."""
    if samples - correct < k:
        return 1.0
    return 1.0 - comb(samples - correct, k) / comb(samples, k)


@dataclass
class EvalResult:
    pass_at_1: float
    pass_at_k: float
    k: int
    boxed_rate: float
    mean_length: float
    problems: list[dict] = field(default_factory=list)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        values = {f"{prefix}/accuracy": self.pass_at_1, f"{prefix}/boxed_rate": self.boxed_rate,
                  f"{prefix}/response_length": self.mean_length}
        if self.k > 1:
            values[f"{prefix}/pass@{self.k}"] = self.pass_at_k
        return values

    def to_json(self) -> dict:
        return asdict(self)


def evaluate(
    engine: RolloutEngine,
    prompts: list[Prompt],
    rewards: RewardManager,
    *,
    samples: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
) -> EvalResult:
    """Greedy when `samples == 1`, else `samples` draws at `temperature` per problem."""
    if samples < 1:
        raise ValueError(f"evaluate: samples = {samples}; at least 1 sample per problem is needed")
    sampling = SamplingSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, greedy=samples == 1
    )
    groups = engine.generate(prompts, [samples] * len(prompts), sampling)
    rewards.score(groups)
    problems = []
    for group in groups:
        boxed = group.reward_components["boxed_format"]
        problems.append(
            {
                "id": group.prompt.prompt_id,
                "question": group.prompt.row.get("question"),
                "answer": group.prompt.row.get("answer"),
                "correct": sum(group.correct),
                "samples": group.size,
                "boxed": sum(1 for value in boxed if value > 0),
                "completions": [completion.text for completion in group.completions],
            }
        )
    total = max(len(problems), 1)
    completions = sum(group.size for group in groups) or 1
    return EvalResult(
        pass_at_1=sum(pass_at_k(p["samples"], p["correct"], 1) for p in problems) / total,
        pass_at_k=sum(pass_at_k(p["samples"], p["correct"], samples) for p in problems) / total,
        k=samples,
        boxed_rate=sum(p["boxed"] for p in problems) / completions,
        mean_length=sum(len(c.token_ids) for g in groups for c in g.completions) / completions,
        problems=problems,
    )
