"""Reward functions for rlpost, and the manager that runs them.

Writing a reward function
-------------------------

A reward function is a plain Python function:

    def my_reward(prompt: str, completion: str, **row_fields) -> float

- `prompt`: the exact text given to the model (after `data.prompt_template`, the system prompt
  and the chat template).
- `completion`: the text the model generated for it (special tokens removed).
- `row_fields`: every field of the dataset row, by keyword: always `question` (the raw question)
  and `answer` (the gold answer, as text), `solution` when the data has worked solutions, and any
  other column of the dataset (`id`, `level`, ...). The function's `kwargs` from the config are
  passed the same way and win over a row field of the same name.
- Return a float (an int or a bool counts as one: True is 1.0). An exception, a non-number (a
  string, None, ...), NaN or ±inf, a call longer than `reward.timeout_seconds`, or a call that
  kills its process scores `reward.failure_score` and is counted in the `reward/failures/*`
  metrics; the first `reward.log_failures` failures are logged with the row.

The first two parameters receive the prompt and the completion positionally, whatever they are
called. Instead of `**row_fields` a function may name just the fields it uses, as keyword
parameters: `def f(prompt, completion, answer, max_chars=400)`; then only those fields are
passed. Optionally, give the function a `warmup` attribute, a callable with no arguments: each
worker process calls it once at start-up, outside the per-call timeout (imports, loading a model).

Configure it as `reward.functions: [{name: path/to/file.py:my_reward, weight: 1.0, kwargs: {...}}]`
(a path relative to the working directory) or `{name: package.module:my_reward}`. Functions run
in separate worker processes (spawned, not forked): each process imports the file itself, so
module-level state is per process, and the function must not rely on the trainer's globals.
See `examples/custom_reward.py`.

Built-in rewards: `math_verify` (1.0 when math-verify finds the gold `answer` in the completion,
boxed or not) and `boxed_format` (1.0 when the completion has a non-empty `\\boxed{...}`).
More can be registered by name with `@register_reward("name")`; a new built-in is one module of
`rlpost.rewards.builtin`.
"""

from rlpost.rewards.binding import SIGNATURE, bind_reward
from rlpost.rewards.builtin import boxed_format_reward, math_verify_reward
from rlpost.rewards.errors import RewardFunctionError, RewardWorkerError
from rlpost.rewards.registry import REWARDS, get_reward_fn, register_reward, reward_names
from rlpost.rewards.worker import FAILURE_KINDS

__all__ = [
    "FAILURE_KINDS",
    "REWARDS",
    "SIGNATURE",
    "RewardFunctionError",
    "RewardManager",
    "RewardWorkerError",
    "bind_reward",
    "boxed_format_reward",
    "get_reward_fn",
    "math_verify_reward",
    "register_reward",
    "reward_names",
]


def __getattr__(name: str):
    # The manager needs the whole config schema (and what it imports); reward worker processes import
    # this package to reach `rlpost.rewards.worker` and should start without it.
    if name == "RewardManager":
        from rlpost.rewards.manager import RewardManager

        return RewardManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
