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

Rewards written for TRL or verl
-------------------------------

Functions written for other frameworks run unchanged; `reward.functions[].style` says how to call
them (`auto`, the default, detects it: a `solution_str` parameter means verl, `completions` TRL):

- `trl`: `fn(completions, prompts=..., **dataset_columns) -> list[float]`, as for TRL's
  GRPOTrainer, once per group, everything by keyword and as lists with one entry per completion
  (`completions`, `prompts`, and every row field repeated; config `kwargs` stay plain values). None
  in the result means "does not apply" and scores 0. The call may take `reward.timeout_seconds` per
  completion of the group; if it raises, times out, dies or returns the wrong number of scores,
  every completion of the group fails.
- `verl`: `compute_score(data_source, solution_str, ground_truth, extra_info)` by keyword, once per
  completion: `data_source` is the row's field or the entry's `data_source`, `solution_str` the
  completion, `ground_truth` the row's `answer`, `extra_info` the row. It returns a number or a dict
  with the number under `score`.

See `examples/trl_style_reward.py` and `examples/verl_style_reward.py`.

Built-in rewards: `math_verify` (1.0 when math-verify finds the gold `answer` in the completion,
boxed or not) and `boxed_format` (1.0 when the completion has a non-empty `\\boxed{...}`).
More can be registered by name with `@register_reward("name")`; a new built-in is one module of
`rlpost.rewards.builtin`.
"""

from rlpost.rewards.binding import SIGNATURE, STYLES, bind_reward, check_call
from rlpost.rewards.builtin import boxed_format_reward, math_verify_reward
from rlpost.rewards.errors import RewardFunctionError, RewardWorkerError
from rlpost.rewards.registry import REWARDS, get_reward_fn, register_reward, reward_names
from rlpost.rewards.worker import FAILURE_KINDS

__all__ = [
    "FAILURE_KINDS",
    "REWARDS",
    "SIGNATURE",
    "STYLES",
    "RewardFunctionError",
    "RewardManager",
    "RewardWorkerError",
    "bind_reward",
    "boxed_format_reward",
    "check_call",
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
