"""The pieces of work both executors run, in whichever process holds the engine or the learner.

One definition each, so that the in-process executor and the Ray actors do the same thing.
"""

from __future__ import annotations

from typing import Any

from rlpost.runtime.buffer import WorkUnit
from rlpost.runtime.executor import LearnerRequest, LearnerResult
from rlpost.types import Group, Prompt

REFERENCE_FILE = "reference.safetensors"
"""Checkpointed KL reference, written once a blending controller has replaced the initial one."""


def learner_objective(config: Any):
    """The objective the learner computes the loss with: the configured one, wrapped in the
    importance-sampling correction `cluster.is_correction` puts in force."""
    from rlpost.objectives.offpolicy import wrap_objective
    from rlpost.objectives.registry import get_objective

    inner = get_objective(config.objective.name)(config.objective, config.rollout.max_new_tokens)
    cluster = config.cluster
    return wrap_objective(inner, cluster.is_mode(config.objective.name), cluster.is_cap, cluster.is_floor)


def build_learner(config: Any, model_path: str):
    """A `Learner` with `learner_objective(config)`."""
    from rlpost.learner.learner import Learner

    return Learner(config, model_path, learner_objective(config), total_steps=config.train.steps)


def run_learner_request(learner: Any, request: LearnerRequest) -> LearnerResult:
    """One optimizer step of `request` on this rank (every rank of the learner group calls it)."""
    from rlpost.blending.runner import apply_blend
    from rlpost.learner.distributed import all_gather_objects

    probe = controller = None
    if request.blend is None:
        metrics = learner.train_step(request.batch, request.targets)  # already reduced over the ranks
    else:
        metrics, probe = apply_blend(learner, request.batch, request.targets, request.blend)
        controller = request.blend.controller
    take_stats = getattr(learner.objective, "take_stats", None)
    # Every rank's importance-weight accumulators: the effective sample size is that of the whole step.
    is_stats = all_gather_objects(take_stats()) if take_stats is not None else None
    return LearnerResult(metrics=metrics, is_stats=is_stats, probe=probe, controller=controller)


def generate_unit(engine: Any, unit: WorkUnit, rollout_config: Any) -> list[Group]:
    """The groups of `unit`, sampled with the run's rollout settings and the unit's seed."""
    from rlpost.rollout.base import SamplingSettings

    sampling = SamplingSettings(
        max_new_tokens=rollout_config.max_new_tokens, temperature=rollout_config.temperature,
        top_p=rollout_config.top_p, top_k=rollout_config.top_k, seed=unit.seed,
    )
    return engine.generate(unit.prompts, unit.n_per_prompt, sampling)


def eval_rewards(num_workers: int):
    """The reward manager of evaluations (correctness and boxing only)."""
    from rlpost.evaluation import EVAL_REWARDS
    from rlpost.rewards.manager import RewardManager

    return RewardManager(EVAL_REWARDS.model_copy(update={"num_workers": num_workers}))


def evaluate_engine(engine: Any, rewards: Any, prompts: list[Prompt], max_new_tokens: int, version: int) -> dict[str, float]:
    """Greedy evaluation metrics of `engine` (at policy `version`) on `prompts`."""
    from rlpost.evaluation import evaluate

    result = evaluate(engine, prompts, rewards, max_new_tokens=max_new_tokens)
    return {**result.metrics(), "eval/policy_version": float(version)}
