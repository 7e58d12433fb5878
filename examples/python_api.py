"""rlpost from Python: train a few steps with a reward defined right here, then evaluate the result.

    python examples/python_api.py

The same calls work in a notebook cell. `rlpost.train(config, **overrides)` takes a config object,
a dict, a YAML path or None (the quickstart); overrides are dotted keys (`**{"rollout.n": 4}`) or
section dicts (`train={"steps": 3}`, merged into the section). Reward functions are callables
(shipped to the reward worker processes by value), registered names, or `file.py:function` specs,
each optionally as a `(function, weight)` pair. Errors in the config, the data, the model folder or
a reward are raised before any model loads, naming the key, row or function at fault.
"""

from __future__ import annotations

import re

import rlpost


def terse(prompt: str, completion: str, *, answer: str, **row_fields) -> float:
    """1.0 for a correct answer in at most 200 characters (the gold `answer` comes from the data row)."""
    numbers = re.findall(r"-?\d+", completion)
    return float(len(completion) <= 200 and bool(numbers) and numbers[-1] == answer.strip())


if __name__ == "__main__":
    summary = rlpost.train(
        "configs/grpo.yaml",  # GRPO on SmolLM2-135M-Instruct, built-in arithmetic (None: the quickstart)
        reward_functions=[("math_verify", 1.0), (terse, 0.2)],
        train={"steps": 3, "prompts_per_step": 2, "output_dir": "runs/python-api"},
        **{"rollout.n": 4, "rollout.max_new_tokens": 32, "rollout.engine": "hf", "learner.backend": "torch",
           "eval.at_start": False, "eval.num_problems": 8},
    )
    print({key: round(value, 3) for key, value in summary.items() if key.startswith(("reward/", "run/"))})

    result = rlpost.evaluate("runs/python-api/final", "arithmetic", limit=8, max_new_tokens=64)
    print(f"pass@1 {result['pass@1']:.2f} on {result['problems']} problems, boxed {result['boxed_rate']:.0%}")
