"""Carry out a controller's plan for one step: build the RL and demonstration batches, update once.

The trainer (and any other loop) calls `blended_update` in place of `Learner.train_step` when a
blending controller is configured.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlpost.blending.base import BlendController, Metrics, StepStats
from rlpost.blending.demos import Demonstrations
from rlpost.learner.batch import PolicyTargets, TrainBatch, build_train_batch, prepare_update
from rlpost.types import Group, Prompt


def blended_update(
    controller: BlendController,
    learner,
    demos: Demonstrations,
    step: int,
    groups: list[Group],
    batch: TrainBatch,
    targets: PolicyTargets,
    validation_prompts: Sequence[Prompt] = (),
) -> Metrics:
    """One optimizer step as `controller` plans it; the plan's, the learner's and the controller's metrics.

    `batch`/`targets` are the whole step's rollouts (`build_train_batch` + `prepare_update`); when
    the plan keeps only some groups for RL, their batch and advantages are rebuilt from those groups
    alone, so dropped questions leave no trace in the group statistics or the normalisers.
    """
    plan = controller.plan(StepStats(step=step, groups=groups))
    rl_batch = rl_targets = sft_batch = validation = None
    if plan.trains_rl:
        if sorted(plan.rl_groups) == list(range(len(groups))):
            rl_batch, rl_targets = batch, targets
        else:
            rl_batch = build_train_batch([groups[i] for i in plan.rl_groups], demos.pad_token_id)
            rl_targets = prepare_update(learner.objective, rl_batch)
    if plan.trains_sft:
        sft_batch = demos.batch([groups[i].prompt for i in plan.sft_groups])
    if plan.meta_gradient and validation_prompts:
        validation = demos.batch(list(validation_prompts))
    metrics, probe = learner.blended_step(
        plan, rl_batch, rl_targets, sft_batch, validation_batch=validation, decide=controller.decide
    )
    return {**plan.metrics, **metrics, **controller.observe(probe)}
