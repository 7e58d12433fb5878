"""An example user reward for rlpost: correctness, minus a penalty for rambling.

Use it from a config (the path is relative to the directory you run `rlpost` from):

    reward:
      functions:
        - name: examples/custom_reward.py:length_penalised_correctness
          weight: 1.0
          kwargs: {target_chars: 400, penalty: 0.5}

A reward function is called once per completion, in a worker process, as

    fn(prompt: str, completion: str, **row_fields) -> float

`prompt` is the exact text the model saw (chat template included), `completion` the generated
text, and `row_fields` the dataset row by keyword (`question`, `answer`, `solution` when present,
and every other column) plus the `kwargs` from the config. Naming only the fields you need, as
below, is enough: rlpost passes a function just the keywords it declares unless it takes
**row_fields. Raising, returning something that is not a number, NaN, or taking longer than
`reward.timeout_seconds` scores `reward.failure_score` and is counted in `reward/failures/*`.
"""

from __future__ import annotations

from rlpost.rewards import math_verify_reward


def length_penalised_correctness(
    prompt: str,
    completion: str,
    *,
    answer: str,
    target_chars: int = 400,
    penalty: float = 0.5,
) -> float:
    """1.0 for a correct final answer (math-verify against the row's `answer`), 0.0 otherwise, minus
    `penalty` times how far the completion runs past `target_chars` (as a fraction of it, capped at 1).

    A correct answer of twice the target length scores 1 - penalty; an incorrect one scores at most 0,
    so the policy is never paid for length.
    """
    correct = math_verify_reward(prompt, completion, answer=answer)
    overflow = max(0, len(completion) - target_chars) / target_chars
    return correct - penalty * min(1.0, overflow)


# Each worker process calls `warmup()` once at start-up, outside the per-call timeout: here it
# imports math-verify (and sympy, a second or two) so that the first real call is not slowed down.
length_penalised_correctness.warmup = math_verify_reward.warmup  # type: ignore[attr-defined]
