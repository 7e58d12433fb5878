"""The reward worker process: loads the reward functions, then answers batches of calls one call at a time.

Started by `rlpost.rewards.pool` as a fresh interpreter (`python -c ... <fd>`), talking over a
socket wrapped in a `multiprocessing.connection.Connection`. Protocol:

1. parent → worker: `list[WorkerReward]`;
2. worker → parent: `("ready", "")`, or `("init_error", traceback)` and exit;
3. parent → worker: `list[Task]` (a chunk); worker → parent: per task, in order, a list with one
   `Outcome` per completion of the task;
4. parent → worker: `None` (or end of file): exit.
"""

from __future__ import annotations

import math
import numbers
import os
import reprlib
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

FAILURE_KINDS = ("exception", "timeout", "non_number", "nan", "crash")
"""Ways a call can fail: it raised, ran past the deadline, returned a non-number, returned NaN or
±inf, or killed its worker process."""

_CALLER_FILES = frozenset(
    {__file__, *(os.path.join(os.path.dirname(__file__), name) for name in ("binding.py", "foreign.py"))}
)
"""rlpost's frames above a reward call, left out of failure tracebacks."""

Task = tuple[int, str, list, dict]
"""One call: (index of the reward function, prompt, completions, row fields). A per-completion reward
gets one completion per task; a batched (TRL-style) reward gets a whole group in one call."""


class WorkerReward(NamedTuple):
    """What a worker needs to call one reward function."""

    name: str
    """The name in the config (for messages)."""
    target: Any
    """A registered function (sent by reference), or a `/abs/file.py:fn` / `module:fn` spec the worker loads."""
    kwargs: dict
    """The function's config kwargs."""
    style: str = "rlpost"
    """Calling style (rlpost, trl or verl), already resolved from `auto`."""
    data_source: str | None = None
    """verl: the data_source of rows without one."""


class Outcome(NamedTuple):
    """Result of one call: `kind` is "ok" or one of FAILURE_KINDS; `detail` explains a failure."""

    kind: str
    value: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def call_reward(fn: Any, prompt: str, completion: str, row: dict) -> Outcome:
    """Call `fn(prompt, completion, row)` and classify what it returned."""
    try:
        value = fn(prompt, completion, row)
    except BaseException as exc:  # even SystemExit: a reward must not take its worker down
        return Outcome("exception", math.nan, format_exception(exc))
    return classify(value)


def call_task(bound: Any, prompt: str, completions: list, row: dict) -> list[Outcome]:
    """One outcome per completion: a batched reward is called once for all of them, and its failure
    is the failure of each; a per-completion reward is called once per completion."""
    if not getattr(bound, "batched", False):
        return [call_reward(bound, prompt, completion, row) for completion in completions]
    try:
        values = bound(prompt, completions, row)
    except BaseException as exc:
        return [Outcome("exception", math.nan, format_exception(exc))] * len(completions)
    return classify_batch(values, len(completions))


def classify_batch(values: Any, count: int) -> list[Outcome]:
    """The scores of a batched call: a sequence of `count` entries, each classified; None (TRL: the
    reward does not apply to this completion) scores 0, as in TRL's sum over reward functions."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(type(values), "__len__"):
        failure = Outcome("non_number", math.nan, f"returned {type(values).__name__} {reprlib.repr(values)}, "
                          f"not a list of {count} scores")
        return [failure] * count
    if len(values) != count:
        failure = Outcome("non_number", math.nan, f"returned {len(values)} scores for {count} completions")
        return [failure] * count
    return [Outcome("ok", 0.0) if value is None else classify(value) for value in values]


def classify(value: Any) -> Outcome:
    """Real numbers (bool included: True is 1.0) and objects with `__float__` (numpy scalars,
    one-element tensors) are scores; anything else, numeric strings and None included, is not."""
    if isinstance(value, Mapping):
        return Outcome("non_number", math.nan, f"returned dict {reprlib.repr(value)}, with no 'score' key (only "
                       "a verl-style function may return a dict, with the score under 'score')")
    if not (isinstance(value, numbers.Real) or (hasattr(type(value), "__float__") and not isinstance(value, str))):
        return Outcome("non_number", math.nan, f"returned {type(value).__name__} {reprlib.repr(value)}")
    try:
        number = float(value)
    except Exception as exc:
        return Outcome("non_number", math.nan, f"returned {reprlib.repr(value)}, and float() of it failed: {exc}")
    if not math.isfinite(number):
        return Outcome("nan", math.nan, f"returned {number}")
    return Outcome("ok", number)


def format_exception(exc: BaseException) -> str:
    """The traceback from the reward's own frames on (rlpost's calling frames dropped), at most 2000 characters."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename in _CALLER_FILES:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb)).strip()
    return text if len(text) <= 2000 else "..." + text[-2000:]


def _load(rewards: list[WorkerReward]) -> list[Any]:
    from rlpost.rewards.binding import bind_reward
    from rlpost.rewards.registry import get_reward_fn

    bound = []
    for reward in rewards:
        fn = get_reward_fn(reward.target) if isinstance(reward.target, str) else reward.target
        warmup = getattr(fn, "warmup", None)
        if callable(warmup):  # outside any call's deadline: imports, model loading, caches
            warmup()
        bound.append(bind_reward(fn, reward.name, reward.kwargs, reward.style, reward.data_source))
    return bound


def serve(conn: Connection) -> None:
    """The worker loop (returns when the parent says stop or goes away)."""
    try:
        bound = _load(conn.recv())
    except BaseException as exc:
        conn.send(("init_error", format_exception(exc)))
        return
    conn.send(("ready", ""))
    while True:
        try:
            tasks = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if tasks is None:
            return
        for reward_index, prompt, completions, row in tasks:
            conn.send(call_task(bound[reward_index], prompt, completions, row))


def _exit_with_parent(parent: int) -> None:
    """A worker stuck in a reward never reads the end of file its parent's death leaves: exit anyway."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    # The parent decides what a Ctrl-C means, and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    serve(Connection(int(sys.argv[1])))
