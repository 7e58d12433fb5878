"""Score groups of completions with the configured reward functions, in worker processes."""

from __future__ import annotations

import logging
import math
import pickle
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rlpost.config.schema import RewardConfig, RewardFunctionConfig
from rlpost.registry import closest
from rlpost.rewards.binding import bind_reward
from rlpost.rewards.errors import RewardFunctionError
from rlpost.rewards.pool import FAILURE_KINDS, Outcome, Task, WorkerPool, WorkerReward
from rlpost.rewards.registry import get_reward_fn
from rlpost.rewards.user import absolute_spec
from rlpost.types import Completion, Group

log = logging.getLogger(__name__)

_SNIPPET_CHARS = 300


@dataclass(frozen=True)
class _Reward:
    name: str
    """Component name: the config name, with `#2`, `#3`... when a function is listed more than once."""
    weight: float
    worker: WorkerReward
    batched: bool = False
    """Called once per group (TRL style) rather than once per completion."""


class RewardManager:
    """Runs `reward_config.functions` on every completion, in `num_workers` reusable worker processes.

    A call that raises, runs past `timeout_seconds`, returns a non-number, NaN or ±inf, or kills its
    worker scores `failure_score`, is counted in the metrics, and is logged (the first
    `log_failures` of them, with the row and a snippet of the completion). A hung or dead worker is
    killed and replaced, so a broken reward never stalls training. Use as a context manager or call
    `close()`.
    """

    def __init__(self, reward_config: RewardConfig) -> None:
        self.config = reward_config
        self._rewards = _resolve_all(reward_config.functions)
        self._correct = _correct_index(reward_config.correct_reward, [reward.name for reward in self._rewards])
        self._failures_logged = 0
        self._pool = WorkerPool(
            [reward.worker for reward in self._rewards], reward_config.num_workers, reward_config.timeout_seconds
        )
        # Workers must not outlive a manager that was never closed.
        self._finalizer = weakref.finalize(self, self._pool.close)

    @property
    def names(self) -> list[str]:
        """Component names, in config order (the keys of `Group.reward_components`)."""
        return [reward.name for reward in self._rewards]

    def score(self, groups: list[Group]) -> dict[str, float]:
        """Fill `rewards`, `reward_components` and `correct` of every group; return reward metrics.

        Metrics: `reward/mean`, `reward/std` (of the weighted totals), `reward/accuracy` (fraction
        judged correct), `reward/component/<name>` (mean unweighted score per function),
        `reward/failures` and `reward/failures/<kind>` for kind in exception, timeout, non_number,
        nan (NaN or infinite), crash, and `reward/worker_restarts` (workers replaced in this call).
        """
        if not self._finalizer.alive:
            raise RuntimeError("RewardManager.score() after close()")
        tasks, places = _tasks(groups, [reward.batched for reward in self._rewards])
        restarts_before = self._pool.restarts
        table = _table(groups, len(self._rewards), places, self._pool.run(tasks))
        failures: Counter[str] = Counter()
        for group, outcomes in zip(groups, table):
            self._fill(group, self._group_scores(group, outcomes, failures))
        return self._metrics(groups, failures, self._pool.restarts - restarts_before)

    def _group_scores(self, group: Group, outcomes: list[list[Outcome]], failures: Counter[str]) -> list[list[Outcome]]:
        """Outcomes by completion and reward, failures scored, counted and maybe logged."""
        scores = []
        previous: list[tuple[str, str] | None] = [None] * len(self._rewards)
        for row, completion in zip(outcomes, group.completions):
            scored = []
            for index, (outcome, reward) in enumerate(zip(row, self._rewards)):
                # A batched call that fails fails every completion of the group alike: log it once.
                repeat = reward.batched and previous[index] == (outcome.kind, outcome.detail)
                previous[index] = (outcome.kind, outcome.detail)
                scored.append(self._score_of(outcome, reward, group, completion, failures, log=not repeat))
            scores.append(scored)
        return scores

    def _score_of(
        self, outcome: Outcome, reward: _Reward, group: Group, completion: Completion, failures: Counter[str],
        log: bool = True,
    ) -> Outcome:
        """The outcome with a failure replaced by `failure_score` (its kind kept), counted and maybe logged."""
        if outcome.ok:
            return outcome
        failures[outcome.kind] += 1
        if log:
            self._log_failure(reward, outcome, group, completion)
        return outcome._replace(value=self.config.failure_score)

    def _fill(self, group: Group, scores: list[list[Outcome]]) -> None:
        group.reward_components = {
            reward.name: [row[index].value for row in scores] for index, reward in enumerate(self._rewards)
        }
        group.rewards = [
            sum(reward.weight * outcome.value for reward, outcome in zip(self._rewards, row)) for row in scores
        ]
        # A failed call is never "correct", whatever failure_score is.
        group.correct = [row[self._correct].ok and row[self._correct].value > 0 for row in scores]

    def _metrics(self, groups: list[Group], failures: Counter[str], restarts: int) -> dict[str, float]:
        totals = [value for group in groups for value in group.rewards]
        mean = sum(totals) / len(totals) if totals else 0.0
        metrics = {
            "reward/mean": mean,
            "reward/std": math.sqrt(sum((value - mean) ** 2 for value in totals) / len(totals)) if totals else 0.0,
            "reward/accuracy": _mean([float(flag) for group in groups for flag in group.correct]),
        }
        for reward in self._rewards:
            metrics[f"reward/component/{reward.name}"] = _mean(
                [value for group in groups for value in group.reward_components[reward.name]]
            )
        metrics["reward/failures"] = float(sum(failures.values()))
        metrics.update({f"reward/failures/{kind}": float(failures[kind]) for kind in FAILURE_KINDS})
        metrics["reward/worker_restarts"] = float(restarts)
        return metrics

    def _log_failure(self, reward: _Reward, outcome: Outcome, group: Group, completion: Completion) -> None:
        if self._failures_logged >= self.config.log_failures:
            return
        self._failures_logged += 1
        log.warning(
            "reward %r failed (%s) on prompt %s: %s\n  row: %s\n  completion: %s%s",
            reward.name, outcome.kind, group.prompt.prompt_id, outcome.detail,
            _snippet(repr(group.prompt.row)), _snippet(repr(completion.text)),
            "\n  (further reward failures are only counted, in the reward/failures metrics)"
            if self._failures_logged == self.config.log_failures else "",
        )

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        self._finalizer()

    def __enter__(self) -> RewardManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _tasks(groups: list[Group], batched: list[bool]) -> tuple[list[Task], list[tuple[int, int, int]]]:
    """The calls that score `groups`, and where each call's outcomes go: (group, reward, first completion).
    A batched reward gets one call per group; any other reward one call per completion."""
    tasks: list[Task] = []
    places: list[tuple[int, int, int]] = []
    for g, group in enumerate(groups):
        texts = [completion.text for completion in group.completions]
        for r, whole_group in enumerate(batched):
            calls = [(0, texts)] if whole_group and texts else [(c, [text]) for c, text in enumerate(texts)]
            for first, completions in calls:
                tasks.append((r, group.prompt.text, completions, group.prompt.row))
                places.append((g, r, first))
    return tasks, places


def _table(
    groups: list[Group], rewards: int, places: list[tuple[int, int, int]], answers: list[list[Outcome]]
) -> list[list[list[Outcome]]]:
    """Outcomes by group, completion and reward."""
    table: list[list[list[Any]]] = [[[None] * rewards for _ in group.completions] for group in groups]
    for (g, r, first), outcomes in zip(places, answers, strict=True):
        for offset, outcome in enumerate(outcomes):
            table[g][first + offset][r] = outcome
    return table


def _resolve_all(functions: list[RewardFunctionConfig]) -> list[_Reward]:
    """Load and check every configured function here, so that mistakes surface before any worker starts."""
    if not functions:
        raise RewardFunctionError("reward.functions is empty: configure at least one reward function")
    rewards: list[_Reward] = []
    seen: Counter[str] = Counter()
    for config in functions:
        seen[config.name] += 1
        name = config.name if seen[config.name] == 1 else f"{config.name}#{seen[config.name]}"
        worker, batched = _worker_reward(config, name)
        rewards.append(_Reward(name=name, weight=config.weight, worker=worker, batched=batched))
    return rewards


def _worker_reward(config: RewardFunctionConfig, name: str) -> tuple[WorkerReward, bool]:
    """What the workers need to call the function, and whether it is batched (called once per group)."""
    fn = get_reward_fn(config.name)
    bound = bind_reward(fn, config.name, config.kwargs, config.style, config.data_source)
    settings = (dict(config.kwargs), bound.style, config.data_source)
    if ":" in config.name:
        # Specs are loaded again inside each worker (a file's module cannot be pickled by reference).
        return WorkerReward(name, absolute_spec(config.name), *settings), bound.batched
    # A registered function travels by reference (module and name), so the workers must be able to import it.
    problem = "it is defined in the __main__ script" if getattr(fn, "__module__", None) == "__main__" else None
    try:
        pickle.dumps(fn)
    except Exception as exc:
        problem = str(exc)
    if problem:
        raise RewardFunctionError(
            f"reward {config.name!r}: the registered function cannot be sent to worker processes ({problem}); "
            "define it at the top level of an importable module, or name it as path/to/file.py:function"
        )
    return WorkerReward(name, fn, *settings), bound.batched


def _correct_index(correct_reward: str | None, names: list[str]) -> int:
    if correct_reward is None:
        return 0
    if correct_reward not in names:
        raise RewardFunctionError(
            f"reward.correct_reward = {correct_reward!r} is not among reward.functions"
            f"{closest(correct_reward, names)}; functions: {', '.join(names)}"
        )
    return names.index(correct_reward)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _snippet(text: str) -> str:
    return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + f"... ({len(text)} chars)"

