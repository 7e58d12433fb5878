"""Evaluation: per-level/operation/template breakdowns, and `eval --compare` with hand-computed intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlpost.cli import main
from rlpost.evaluation import (
    compare_results,
    difference_interval,
    evaluate,
    format_comparison,
    verdict,
    wilson_interval,
)
from rlpost.rollout.base import RolloutEngine
from rlpost.types import Completion, Group, Prompt

# ---------------------------------------------------------------- intervals, computed by hand
#
# Wilson score interval, z = 1.96, z^2 = 3.8416, n = 50:
#   denominator = 1 + z^2/n = 1.076832
#   half width  = z * sqrt(p(1-p)/n + z^2/(4 n^2)) / denominator
#               = 1.96 * sqrt(0.24/50 + 3.8416/10000) / 1.076832 = 1.96 * 0.0720011 / 1.076832 = 0.131053
#     (the same for p = 0.6 and p = 0.4, since p(1-p) = 0.24 for both)
#   p = 30/50 = 0.6: centre = (0.6 + z^2/(2n)) / denominator = 0.638416 / 1.076832 = 0.592865 -> [0.461812, 0.723918]
#   p = 20/50 = 0.4: centre = 0.438416 / 1.076832 = 0.407135                              -> [0.276082, 0.538188]
# Newcombe's difference B - A, A = 20/50, B = 30/50: d = 0.2
#   low  = d - sqrt((p_B - l_B)^2 + (u_A - p_A)^2) = 0.2 - sqrt(0.138188^2 + 0.138188^2) = 0.2 - 0.195428 = 0.004572
#   high = d + sqrt((u_B - p_B)^2 + (p_A - l_A)^2) = 0.2 + sqrt(0.123918^2 + 0.123918^2) = 0.2 + 0.175247 = 0.375247
# so 30/50 against 20/50 is (just) a gain at 95%. The normal approximation would give
#   0.2 +- 1.96 * sqrt(0.24/50 + 0.24/50) = 0.2 +- 0.192039 = [0.007961, 0.392039], about the same here.
# (The code uses z = 1.959964, which moves the results by less than 1e-4.)


def test_wilson_interval_by_hand():
    assert wilson_interval(30, 50) == pytest.approx((0.461812, 0.723918), abs=1e-4)
    assert wilson_interval(20, 50) == pytest.approx((0.276082, 0.538188), abs=1e-4)
    # At 0%, where the normal approximation collapses to [0, 0], Wilson still has width: z^2/(n + z^2) = 0.071318.
    assert wilson_interval(0, 50) == pytest.approx((0.0, 3.8416 / 53.8416), abs=1e-4)


def test_difference_interval_by_hand():
    difference, low, high = difference_interval((20, 50), (30, 50))
    assert difference == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.004572, 0.375247), abs=1e-4)
    # The same gain on 10 problems each (6/10 vs 4/10) is noise: the interval straddles 0.
    _, low, high = difference_interval((4, 10), (6, 10))
    assert low < 0 < high


# ---------------------------------------------------------------- per-group results and the comparison


def problems(correct_by_level: dict[int, tuple[int, int]], boxed: int = 0) -> list[dict]:
    """Greedy per-problem records: for level L, `correct` of `total` problems solved."""
    records = []
    for level, (correct, total) in correct_by_level.items():
        for index in range(total):
            records.append({"id": f"{level}-{index}", "correct": int(index < correct), "samples": 1,
                            "boxed": int(len(records) < boxed), "level": level, "operation": "add",
                            "template": f"t{index % 2}", "length": 10})
    return records


def result(records: list[dict], mean_length: float) -> dict:
    return {"pass_at_1": sum(p["correct"] for p in records) / len(records), "pass_at_k": 0.0, "k": 1,
            "boxed_rate": sum(p["boxed"] for p in records) / len(records), "mean_length": mean_length,
            "problems": records}


def test_compare_rows_by_hand():
    a = result(problems({1: (15, 25), 2: (5, 25)}, boxed=10), mean_length=40.0)  # 20/50 correct, 10/50 boxed
    b = result(problems({1: (20, 25), 2: (10, 25)}, boxed=50), mean_length=31.5)  # 30/50 correct, 50/50 boxed
    rows = {(row["metric"], row["group"]): row for row in compare_results(a, b)}
    overall = rows[("pass@1", "all")]
    assert (overall["a"], overall["b"], overall["difference"]) == pytest.approx((0.4, 0.6, 0.2))
    assert (overall["low"], overall["high"]) == pytest.approx((0.004572, 0.375247), abs=1e-4)
    assert verdict(overall) == "gain"
    assert rows[("boxed_rate", "all")]["difference"] == pytest.approx(0.8)
    assert rows[("mean_length", "all")]["difference"] == pytest.approx(-8.5) and rows[("mean_length", "all")]["low"] is None
    # Level 1: 15/25 -> 20/25, +0.2 on half the problems: not distinguishable from noise.
    level_1 = rows[("pass@1", "level=1")]
    assert level_1["difference"] == pytest.approx(0.2) and verdict(level_1) == "noise"
    assert {group for _, group in rows} >= {"operation=add", "template=t0", "template=t1", "level=2"}
    table = format_comparison(compare_results(a, b))
    assert "pass@1       all" in table and "+0.200  [+0.005, +0.375]  gain  (n = 50 vs 50)" in table


def test_compare_refuses_results_without_problems():
    with pytest.raises(ValueError, match="no per-problem results"):
        compare_results({"pass_at_1": 0.5}, result(problems({1: (1, 2)}), 1.0))


class ScriptedEngine(RolloutEngine):
    """Answers every question with its row's `reply`, `samples` times."""

    def generate(self, prompts, n_per_prompt, sampling):
        return [Group(prompt, [Completion([1] * len(prompt.row["reply"].split()), prompt.row["reply"], [], "stop")
                               for _ in range(n)]) for prompt, n in zip(prompts, n_per_prompt, strict=True)]

    def update_weights(self, named_tensors, version):
        raise NotImplementedError


class ExactRewards:
    """Correct when the reply is the answer; boxed when it contains `\\boxed`."""

    def score(self, groups):
        for group in groups:
            group.correct = [c.text.strip("\\boxed{}") == group.prompt.row["answer"] for c in group.completions]
            group.reward_components = {"boxed_format": [float("\\boxed" in c.text) for c in group.completions]}


def test_evaluate_breaks_results_down_by_level_operation_and_template():
    rows = [
        {"answer": "3", "reply": "\\boxed{3}", "level": 1, "operation": "add", "template": "add.buys"},
        {"answer": "4", "reply": "five words of wrong text", "level": 1, "operation": "subtract", "template": "sub.x"},
        {"answer": "6", "reply": "\\boxed{6}", "level": 2, "operation": "multi-step", "template": "multi.then"},
        {"answer": "7", "reply": "7", "level": 2, "operation": "multi-step", "template": "multi.then"},
    ]
    prompts = [Prompt(f"p{i}", "text", [1], row) for i, row in enumerate(rows)]
    outcome = evaluate(ScriptedEngine(), prompts, ExactRewards(), samples=2)
    assert outcome.pass_at_1 == pytest.approx(0.75) and outcome.boxed_rate == pytest.approx(0.5)
    assert outcome.mean_length == pytest.approx((1 + 5 + 1 + 1) / 4)
    assert outcome.breakdown["level"] == {
        "1": {"problems": 2, "pass@1": 0.5, "pass@2": 0.5, "boxed_rate": 0.5, "mean_length": 3.0},
        "2": {"problems": 2, "pass@1": 1.0, "pass@2": 1.0, "boxed_rate": 0.5, "mean_length": 1.0},
    }
    assert set(outcome.breakdown["operation"]) == {"add", "subtract", "multi-step"}
    assert outcome.breakdown["template"]["multi.then"]["problems"] == 2
    assert outcome.problems[0]["template"] == "add.buys" and outcome.problems[1]["length"] == 10


def test_no_breakdown_for_rows_without_the_fields():
    prompts = [Prompt("p", "text", [1], {"answer": "1", "reply": "1"})]
    assert evaluate(ScriptedEngine(), prompts, ExactRewards()).breakdown == {}


def test_cli_compare(tmp_path: Path, capsys):
    a = tmp_path / "before.json"
    b = tmp_path / "after.json"
    a.write_text(json.dumps({"pass@1": 0.4, "result": result(problems({1: (20, 50)}), 40.0)}))
    b.write_text(json.dumps({"pass@1": 0.6, "result": result(problems({1: (30, 50)}), 31.0)}))
    assert main(["eval", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "+0.200  [+0.005, +0.375]  gain" in out and "level=1" in out
    assert main(["eval", "--compare", str(a), str(tmp_path / "x.json")]) == 2
    assert "error: eval --compare: cannot read" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "error: eval needs --model and --data (or --compare A.json B.json)" in capsys.readouterr().err
