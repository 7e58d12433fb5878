"""A verl-style `compute_score`, written as for verl's `custom_reward_function`; rlpost calls it unchanged.

    reward:
      functions:
        - name: examples/verl_style_reward.py:compute_score   # style: auto finds `solution_str`
          data_source: openai/gsm8k                           # for rows without a data_source column

rlpost calls it once per completion, by keyword: `data_source` (the row's `data_source` field, else
the entry's `data_source`), `solution_str` (the completion), `ground_truth` (the row's `answer`) and
`extra_info` (the whole row, as a dict), plus the entry's `kwargs`. It returns a number, or a dict
whose `score` is the number (other keys, such as verl's `acc` and `pred`, are ignored). Failures and
timeouts are scored and counted as for any reward. No rlpost import is needed: the same file works in verl.
"""

from __future__ import annotations

import re

from math_verify import parse, verify

_GSM8K_ANSWER = re.compile(r"#### (-?[0-9.,]+)")


def compute_score(data_source: str | None, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  format_score: float = 0.0) -> dict:
    """GSM8K rows: the number after `####` must equal the ground truth (`format_score` when there is a
    number that is wrong). Any other source: math-verify compares the completion's answer with it."""
    if data_source == "openai/gsm8k":
        match = _GSM8K_ANSWER.search(solution_str)
        pred = match.group(1).replace(",", "") if match else None
        score = 1.0 if pred == str(ground_truth) else (format_score if pred is not None else 0.0)
        return {"score": score, "acc": score == 1.0, "pred": pred}
    correct = verify(parse(f"\\boxed{{{ground_truth}}}"), parse(solution_str))
    return {"score": float(correct), "acc": bool(correct), "pred": solution_str[-50:]}
