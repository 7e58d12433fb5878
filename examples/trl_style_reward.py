"""TRL-style reward functions, written as for `trl.GRPOTrainer(reward_funcs=[...])`; rlpost calls them unchanged.

    reward:
      functions:
        - name: examples/trl_style_reward.py:accuracy_reward        # style: auto finds `completions`
        - name: examples/trl_style_reward.py:format_reward
          weight: 0.1
          style: trl                                                # or declare it

rlpost calls such a function once per group of completions of one prompt, every argument by keyword
and a list with one entry per completion: `completions` (the generated texts), `prompts` (the prompt
text, repeated) and every dataset column (`question`, `answer`, `solution`, ...: the row's value,
repeated), plus the entry's `kwargs` as plain values. It returns one score per completion; None means
"does not apply" and scores 0. A call that raises, returns the wrong number of scores, or runs past
`reward.timeout_seconds` x the group size fails each completion of the group (counted in
`reward/failures/*`). No rlpost import is needed: the same file works in TRL.
"""

from __future__ import annotations

import re

from math_verify import parse, verify

_BOXED = re.compile(r"\\boxed\{[^{}]*\S[^{}]*\}")


def accuracy_reward(completions: list[str], answer: list[str], **kwargs) -> list[float | None]:
    """1.0 when math-verify finds the gold `answer` in the completion, 0.0 when not, None when the gold
    answer itself does not parse (TRL's convention for "this reward does not apply")."""
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_parsed = parse(f"\\boxed{{{gold}}}")  # bare gold answers (`7`, `3/4`) read as LaTeX
        rewards.append(float(verify(gold_parsed, parse(completion))) if gold_parsed else None)
    return rewards


def format_reward(completions: list[str], **kwargs) -> list[float]:
    """1.0 when the completion puts a non-empty final answer in `\\boxed{...}`."""
    return [1.0 if _BOXED.search(completion) else 0.0 for completion in completions]
