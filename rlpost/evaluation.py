"""Held-out evaluation: pass@1 / pass@k under math-verify, the boxed-answer rate and the mean length,
overall and per level, operation and template family (for rows that carry those fields, as the
built-in arithmetic task's do); and the comparison of two evaluations with confidence intervals.

`compare_results(a, b)` gives, for each metric, B - A with a 95% interval for the difference of
two binomial proportions by Newcombe's hybrid score method (method 10 of Newcombe 1998): each
proportion gets its Wilson score interval (l, u), and the difference d = p_B - p_A gets
[d - sqrt((p_B - l_B)^2 + (u_A - p_A)^2), d + sqrt((u_B - p_B)^2 + (p_A - l_A)^2)]. Unlike the
normal approximation it stays sensible at 0% and 100% and with few problems. Every completion
counts as one trial (with samples > 1 per problem this ignores that samples of one problem are
correlated, so the interval is then too narrow), and the two runs are treated as independent
(on the same problems the paired difference is less noisy, so the interval is then conservative).
pass@k for k > 1 and the mean length get the difference only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from math import comb, sqrt

from rlpost.config.schema import RewardConfig, RewardFunctionConfig
from rlpost.rewards.manager import RewardManager
from rlpost.rollout.base import RolloutEngine, SamplingSettings
from rlpost.types import Prompt

GROUP_FIELDS = ("level", "operation", "template")
"""Row fields that break the results down, when the rows have them."""
Z_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""

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
    breakdown: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """{field: {value: {"problems", "pass@1", "pass@k", "boxed_rate", "mean_length"}}} for GROUP_FIELDS the rows have."""

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
    problems = [_problem_record(group) for group in groups]
    total = max(len(problems), 1)
    completions = sum(group.size for group in groups) or 1
    return EvalResult(
        pass_at_1=sum(pass_at_k(p["samples"], p["correct"], 1) for p in problems) / total,
        pass_at_k=sum(pass_at_k(p["samples"], p["correct"], samples) for p in problems) / total,
        k=samples,
        boxed_rate=sum(p["boxed"] for p in problems) / completions,
        mean_length=sum(len(c.token_ids) for g in groups for c in g.completions) / completions,
        problems=problems,
        breakdown=breakdown(problems, samples),
    )


def _problem_record(group) -> dict:
    boxed = group.reward_components["boxed_format"]
    row = group.prompt.row
    record = {
        "id": group.prompt.prompt_id,
        "question": row.get("question"),
        "answer": row.get("answer"),
        "correct": sum(group.correct),
        "samples": group.size,
        "boxed": sum(1 for value in boxed if value > 0),
        "length": sum(len(completion.token_ids) for completion in group.completions),
        "completions": [completion.text for completion in group.completions],
    }
    record.update({name: row[name] for name in GROUP_FIELDS if name in row})
    return record


def breakdown(problems: list[dict], k: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per value of each GROUP_FIELDS field the problems have: problems, pass@1, pass@k, boxed rate, mean length."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name in GROUP_FIELDS:
        groups: dict[str, list[dict]] = defaultdict(list)
        for problem in problems:
            if name in problem:
                groups[str(problem[name])].append(problem)
        if groups:
            result[name] = {value: _summary(members, k) for value, members in sorted(groups.items())}
    return result


def _summary(problems: list[dict], k: int) -> dict[str, float]:
    completions = sum(p["samples"] for p in problems) or 1
    values = {"problems": len(problems),
              "pass@1": sum(pass_at_k(p["samples"], p["correct"], 1) for p in problems) / len(problems),
              "boxed_rate": sum(p["boxed"] for p in problems) / completions}
    if k > 1:
        values[f"pass@{k}"] = sum(pass_at_k(p["samples"], p["correct"], k) for p in problems) / len(problems)
    if all("length" in p for p in problems):
        values["mean_length"] = sum(p["length"] for p in problems) / completions
    return values


# ---------------------------------------------------------------- comparing two evaluations


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(a: tuple[int, int], b: tuple[int, int], z: float = Z_95) -> tuple[float, float, float]:
    """(p_B - p_A, low, high): Newcombe's hybrid score interval for the difference of two proportions.

    `a` and `b` are (successes, trials).
    """
    p_a, p_b = a[0] / a[1], b[0] / b[1]
    low_a, high_a = wilson_interval(*a, z=z)
    low_b, high_b = wilson_interval(*b, z=z)
    difference = p_b - p_a
    low = difference - sqrt((p_b - low_b) ** 2 + (high_a - p_a) ** 2)
    high = difference + sqrt((high_b - p_b) ** 2 + (p_a - low_a) ** 2)
    return difference, low, high


def _counts(problems: list[dict]) -> dict[str, tuple[int, int]]:
    """(successes, trials) of the binomial metrics, every completion one trial."""
    trials = sum(p["samples"] for p in problems)
    return {"pass@1": (sum(p["correct"] for p in problems), trials),
            "boxed_rate": (sum(p["boxed"] for p in problems), trials)}


def compare_results(a: dict, b: dict) -> list[dict]:
    """Rows {metric, group, a, b, difference, low, high} of B against A (eval JSON files as `rlpost eval --out` writes).

    pass@1 and the boxed rate (overall and per group) get a 95% interval, the mean length (and
    pass@k, overall) the difference only (low and high None).
    """
    problems_a, problems_b = _problems_of(a), _problems_of(b)
    rows = _binomial_rows("all", problems_a, problems_b)
    plain = [("mean_length", "mean_length")]
    if a.get("k", 1) > 1 and a.get("k") == b.get("k"):
        plain.append((f"pass@{a['k']}", "pass_at_k"))
    for metric, key in plain:
        if key in a and key in b:
            rows.append({"metric": metric, "group": "all", "a": a[key], "b": b[key],
                         "difference": b[key] - a[key], "low": None, "high": None})
    for name in GROUP_FIELDS:
        values_a = {str(p[name]) for p in problems_a if name in p}
        values_b = {str(p[name]) for p in problems_b if name in p}
        for value in sorted(values_a & values_b):
            group = f"{name}={value}"
            rows.extend(_binomial_rows(group, [p for p in problems_a if str(p.get(name)) == value],
                                       [p for p in problems_b if str(p.get(name)) == value], metrics=("pass@1",)))
    return rows


def _problems_of(result: dict) -> list[dict]:
    problems = result.get("problems")
    if not isinstance(problems, list) or not problems:
        raise ValueError("no per-problem results (a JSON file written by `rlpost eval --out` has them under 'result')")
    return problems


def _binomial_rows(group: str, problems_a: list[dict], problems_b: list[dict],
                   metrics: tuple[str, ...] = ("pass@1", "boxed_rate")) -> list[dict]:
    counts_a, counts_b = _counts(problems_a), _counts(problems_b)
    rows = []
    for metric in metrics:
        difference, low, high = difference_interval(counts_a[metric], counts_b[metric])
        rows.append({"metric": metric, "group": group, "a": counts_a[metric][0] / counts_a[metric][1],
                     "b": counts_b[metric][0] / counts_b[metric][1], "difference": difference, "low": low,
                     "high": high, "trials": (counts_a[metric][1], counts_b[metric][1])})
    return rows


def verdict(row: dict) -> str:
    """`gain` / `loss` when the 95% interval excludes 0, `noise` when it does not, `` without an interval."""
    if row["low"] is None:
        return ""
    return "gain" if row["low"] > 0 else "loss" if row["high"] < 0 else "noise"


def format_comparison(rows: list[dict], name_a: str = "A", name_b: str = "B") -> str:
    """A table of the comparison, one metric per line."""
    header = f"{'metric':<12} {'group':<32} {name_a[-10:]:>10} {name_b[-10:]:>10} {'B - A':>9}  95% CI (Newcombe/Wilson)"
    lines = [header]
    for row in rows:
        interval = f"[{row['low']:+.3f}, {row['high']:+.3f}]  {verdict(row)}" if row["low"] is not None else "-"
        trials = f"  (n = {row['trials'][0]} vs {row['trials'][1]})" if "trials" in row else ""
        lines.append(f"{row['metric']:<12} {row['group']:<32} {row['a']:>10.3f} {row['b']:>10.3f} "
                     f"{row['difference']:>+9.3f}  {interval}{trials}")
    return "\n".join(lines)
