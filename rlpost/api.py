"""The Python API: `rlpost.train` and `rlpost.evaluate` for notebooks and scripts; the CLI calls them.

    import rlpost

    summary = rlpost.train("configs/grpo.yaml", train={"steps": 3}, **{"rollout.n": 4},
                           reward_functions=[my_reward, ("boxed_format", 0.2)])

Overrides are keyword arguments, in either form: a dotted key (`**{"train.steps": 3}`) sets one
value, a section name with a dict (`train={"steps": 3}`) merges into that section (the keys it does
not name keep their values). Both forms may be mixed; they apply in the order given.

Reward functions given as callables run in the reward worker processes like any other: a function
defined in a notebook or a `__main__` script cannot be imported there by name, so it travels by
value (cloudpickle). It must not rely on the notebook's globals changing after the call.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

# Before torch is imported: busy-waiting OpenMP threads slow everything on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ConfigLike = Union["RLPostConfig", Mapping[str, Any], str, Path, None]  # noqa: F821 (resolved lazily)
RewardLike = Union[Callable[..., Any], str, tuple]
SUMMARY_KEYS = ("reward/mean", "train/accuracy", "eval/accuracy", "eval/boxed_rate")
"""The metrics `rlpost train` prints as its one-line summary."""


class UsageError(ValueError):
    """An argument is out of range; the message names the argument."""


# ---- configs


def build_config(config: ConfigLike = None, *, reward_functions: Sequence[RewardLike] | None = None,
                 **overrides: Any) -> Any:
    """An `RLPostConfig` from a config object, a dict, a YAML path or None (the quickstart), with
    `overrides` (dotted keys or section dicts) and `reward_functions` (replacing `reward.functions`) applied."""
    from pydantic import ValidationError

    from rlpost.config.errors import format_validation_error
    from rlpost.config.schema import RLPostConfig

    if isinstance(config, RLPostConfig) and not overrides and reward_functions is None:
        return config
    tree, source = _config_tree(config)
    for key, value in overrides.items():
        _apply(tree, key, value)
    if reward_functions is not None:
        tree.setdefault("reward", {})["functions"] = reward_configs(reward_functions)
    try:
        return RLPostConfig.model_validate(tree)
    except ValidationError as exc:
        raise format_validation_error(RLPostConfig, exc, source) from None


def _config_tree(config: ConfigLike) -> tuple[dict[str, Any], str]:
    """The config as a plain mutable tree, and how to name it in messages."""
    from rlpost.config.errors import ConfigError
    from rlpost.config.loader import QUICKSTART, read_config_tree
    from rlpost.config.schema import RLPostConfig

    if isinstance(config, RLPostConfig):
        return config.model_dump(), "the config object"
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), "the config dict"
    if config is None or isinstance(config, (str, Path)):
        path = Path(config) if config is not None else QUICKSTART
        return read_config_tree(path), str(path)
    raise ConfigError(f"config: expected an RLPostConfig, a dict, a YAML path or None, not {type(config).__name__}")


def _apply(tree: dict[str, Any], key: str, value: Any) -> None:
    """One override: a dict merges into the section or mapping at `key`, anything else replaces it."""
    from rlpost.config.loader import apply_override, deep_merge

    path = key.split(".")
    node: Any = tree
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    current = node.get(path[-1]) if isinstance(node, dict) else None
    if isinstance(value, Mapping) and isinstance(current, dict):
        value = deep_merge(current, dict(value))
    apply_override(tree, path, value)


# ---- reward functions given as Python objects


class ShippedReward:
    """A reward callable that pickles by value, so that a worker process can call a function it cannot import.

    Looks like the function to signature inspection (`__wrapped__`) and keeps its attributes (`warmup`);
    its `__module__` stays `rlpost.api`, which every worker imports.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__dict__.update({k: v for k, v in getattr(fn, "__dict__", {}).items() if not k.startswith("__")})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __reduce__(self) -> tuple:
        import cloudpickle

        return (_unship, (cloudpickle.dumps(self.__wrapped__),))


def _unship(payload: bytes) -> ShippedReward:
    import pickle

    return ShippedReward(pickle.loads(payload))


def register_callable(fn: Callable[..., Any]) -> str:
    """Register `fn` as a reward (by value) and return its name: the function's own name, or `name-2`,
    `name-3`... when another function holds it (a notebook cell run again defines a new function)."""
    from rlpost.rewards import REWARDS, register_reward

    if inspect.iscoroutinefunction(fn):
        raise UsageError(f"reward_functions: {getattr(fn, '__name__', fn)!r} is an async function; use a plain def")
    base = getattr(fn, "__name__", type(fn).__name__).replace(":", "_")
    if base == "<lambda>":
        base = "lambda"
    name, number = base, 1
    while name in REWARDS:
        if getattr(REWARDS.get(name), "__wrapped__", None) is fn:
            return name
        number += 1
        name = f"{base}-{number}"
    register_reward(name)(ShippedReward(fn))
    return name


def reward_configs(rewards: Sequence[RewardLike]) -> list[dict[str, Any]]:
    """`reward.functions` entries for callables, names/specs, `(either, weight)` pairs, or entry dicts
    (`{"name": fn, "weight": 0.5, "kwargs": {...}}`, the name a callable or a string)."""
    if isinstance(rewards, (str, bytes)) or callable(rewards):
        rewards = [rewards]
    entries = []
    for reward in rewards:
        weight = 1.0
        if isinstance(reward, tuple):
            if len(reward) != 2:
                raise UsageError(f"reward_functions: {reward!r} is not a (function, weight) pair")
            reward, weight = reward
        if isinstance(reward, Mapping):  # a reward.functions entry; its name may be a callable
            entry = dict(reward)
            if callable(entry.get("name")):
                entry["name"] = register_callable(entry["name"])
            entries.append(entry)
        elif isinstance(reward, str):
            entries.append({"name": reward, "weight": weight})
        elif callable(reward):
            entries.append({"name": register_callable(reward), "weight": weight})
        else:
            raise UsageError(f"reward_functions: {reward!r} is neither a callable, a reward name nor a spec")
    return entries


# ---- training


def configure_logging(level: str | int = "INFO") -> None:
    """rlpost's log lines on stderr, as the CLI shows them, unless the program has set up logging itself."""
    if logging.getLogger().handlers:
        return  # the caller's configuration wins
    logger = logging.getLogger("rlpost")
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def train(config: ConfigLike = None, *, reward_functions: Sequence[RewardLike] | None = None,
          log_level: str | int = "INFO", **overrides: Any) -> dict[str, float]:
    """Train and return the last step's metrics with the run's `run/...` summary figures.

    `config`: an `RLPostConfig`, a dict, a YAML path, or None (the quickstart); `overrides` and
    `reward_functions` as in `build_config`. The checks of `rlpost validate` run first: a mistake
    raises before any model loads and leaves no output folder behind.
    """
    configure_logging(log_level)
    resolved = build_config(config, reward_functions=reward_functions, **overrides)
    return train_config(resolved)


def train_config(config: Any) -> dict[str, float]:
    """`train` for a resolved config (the CLI's entry)."""
    from rlpost.preflight import preflight

    if config.cluster.runtime == "ray" and _has_shipped_rewards(config):
        raise UsageError("reward_functions: Python callables run only with cluster.runtime = local; for Ray, "
                         "name them as path/to/file.py:function or package.module:function")
    preflight(config)  # before the output folder exists: a mistake leaves nothing behind
    created = _missing_folders(Path(config.train.output_dir))
    try:
        from rlpost.loop import train as run_training

        return run_training(config)  # in-process, or Ray actors when cluster.runtime = ray
    except BaseException:
        _remove_if_empty(created)
        raise


def _has_shipped_rewards(config: Any) -> bool:
    from rlpost.rewards import REWARDS

    names = [function.name for function in config.reward.functions if ":" not in function.name]
    return any(name in REWARDS and isinstance(REWARDS.get(name), ShippedReward) for name in names)


def summary_line(config: Any, metrics: Mapping[str, float]) -> str:
    """The JSON line `rlpost train` prints at the end."""
    summary = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
    return json.dumps({"output_dir": config.train.output_dir, **summary})


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, if it left them empty (rmdir never deletes a file)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


# ---- evaluation


def check_eval_settings(settings: Mapping[str, Any], name: Callable[[str], str]) -> None:
    """Out-of-range settings, named by `name(key)`, before the model, the data or the reward workers load."""
    for key in ("samples", "max_new_tokens", "limit"):
        value = settings.get(key)
        if value is not None and value < 1:
            raise UsageError(f"{name(key)} = {value}: must be at least 1")
    if settings.get("temperature", 0) < 0:
        raise UsageError(f"{name('temperature')} = {settings['temperature']}: must be at least 0")
    out = settings.get("out")
    if out and not Path(out).parent.is_dir():
        raise UsageError(f"{name('out')} {out}: folder {Path(out).parent} does not exist")


def _eval_prompts(model_path: str, data: str, settings: Mapping[str, Any], config: ConfigLike) -> list:
    from rlpost.data import build_prompts, load_rows
    from rlpost.loop.setup import load_tokenizer

    # The prompt format (system prompt, templates) of a training config, if one is given.
    if config is None:
        from rlpost.config.schema import DataConfig

        base = DataConfig()
    else:
        base = build_config(config).data
    data_config = base.model_copy(update={
        "train": data, "test": None, "question_field": settings["question_field"],
        "answer_field": settings["answer_field"], "solution_field": None, "split": settings["split"]})
    rows = load_rows(data, settings["split"], data_config=data_config)[: settings["limit"]]
    return build_prompts(rows, load_tokenizer(model_path), data_config).prompts


def evaluate(model: str, data: str = "arithmetic", *, split: str = "test", config: ConfigLike = None,
             samples: int = 1, temperature: float = 1.0, max_new_tokens: int = 256, limit: int | None = None,
             question_field: str = "question", answer_field: str = "answer", engine: str = "hf",
             dtype: str = "bfloat16", seed: int = 0, out: str | Path | None = None,
             log_level: str | int = "INFO") -> dict[str, Any]:
    """pass@1 (and pass@`samples`) of `model` on `data` under math-verify, with the boxed-answer rate.

    Returns `{"problems", "pass@1", "boxed_rate"[, "pass@k"], "result"}`, `result` holding the
    per-problem details; `out` also writes them to a JSON file. `config` (anything `train` accepts)
    gives the prompt format. Greedy when `samples == 1`.
    """
    settings = {"samples": samples, "temperature": temperature, "max_new_tokens": max_new_tokens, "limit": limit,
                "out": out, "split": split, "question_field": question_field, "answer_field": answer_field}
    check_eval_settings(settings, lambda key: f"evaluate: {key}")
    configure_logging(log_level)
    return _run_eval(model, data, settings, config, engine=engine, dtype=dtype, seed=seed)


def _run_eval(model: str, data: str, settings: Mapping[str, Any], config: ConfigLike, *, engine: str,
              dtype: str, seed: int) -> dict[str, Any]:
    from rlpost.config.schema import RolloutConfig
    from rlpost.evaluation import EVAL_REWARDS
    from rlpost.evaluation import evaluate as evaluate_prompts
    from rlpost.models import check_model_folder, resolve_model
    from rlpost.rewards.manager import RewardManager
    from rlpost.rollout import build_engine

    model_path = resolve_model(model)
    if Path(model_path).is_dir():
        check_model_folder(Path(model_path), tokenizer=True)
    prompts = _eval_prompts(model_path, data, settings, config)
    rollout = build_engine(RolloutConfig(engine=engine, dtype=dtype), model_path, seed=seed)
    try:
        with RewardManager(EVAL_REWARDS) as rewards:
            result = evaluate_prompts(rollout, prompts, rewards, samples=settings["samples"], seed=seed,
                                      max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"])
    finally:
        rollout.close()
    summary: dict[str, Any] = {"problems": len(prompts), "pass@1": result.pass_at_1, "boxed_rate": result.boxed_rate}
    if settings["samples"] > 1:
        summary[f"pass@{settings['samples']}"] = result.pass_at_k
    if settings["out"]:
        Path(settings["out"]).write_text(json.dumps({**summary, "result": result.to_json()}, indent=1))
    return {**summary, "result": result.to_json()}
