"""A controller's plan for one step, split where the work runs.

`plan_blend` runs in the training loop: the controller plans, and the RL and demonstration batches
are built. `BlendUpdate` travels to the learner (in this process or a Ray actor), where
`apply_blend` takes the one optimizer step, calling the controller's `decide` when the plan
defers its weights. The controller comes back with the result (a copy, when the step ran in
another process) and the loop calls `observe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlpost.blending.base import BlendController, BlendPlan, StepStats
from rlpost.blending.demos import Demonstrations
from rlpost.learner.batch import PolicyTargets, TrainBatch, build_train_batch, prepare_update
from rlpost.objectives.base import Objective
from rlpost.types import Group, Prompt


@dataclass
class BlendUpdate:
    """Everything the learner needs for a blended step besides the RL batch."""

    plan: BlendPlan
    controller: BlendController | None
    """None for a step no controller planned (the SFT warm-up, `rlpost.loop.warmup`)."""
    sft_batch: TrainBatch | None
    validation_batch: TrainBatch | None


def plan_blend(
    controller: BlendController,
    objective: Objective,
    demos: Demonstrations,
    step: int,
    groups: list[Group],
    batch: TrainBatch,
    targets: PolicyTargets,
    validation_prompts: Sequence[Prompt] = (),
) -> tuple[TrainBatch | None, PolicyTargets | None, BlendUpdate]:
    """(RL batch, its targets, the rest of the update) of one step as `controller` plans it.

    `batch`/`targets` are the whole step's rollouts; when the plan keeps only some groups for RL,
    their batch and advantages are rebuilt from those groups alone, so dropped questions leave no
    trace in the group statistics or the normalisers.
    """
    plan = controller.plan(StepStats(step=step, groups=groups))
    rl_batch = rl_targets = sft_batch = validation = None
    if plan.trains_rl:
        if sorted(plan.rl_groups) == list(range(len(groups))):
            rl_batch, rl_targets = batch, targets
        else:
            rl_batch = build_train_batch([groups[i] for i in plan.rl_groups], demos.pad_token_id)
            rl_targets = prepare_update(objective, rl_batch)
        rl_targets = controller.rl_targets(rl_batch, rl_targets)
    if plan.trains_sft:
        sft_batch = demos.batch([groups[i].prompt for i in plan.sft_groups])
    if plan.meta_gradient and validation_prompts:
        validation = demos.batch(list(validation_prompts))
    return rl_batch, rl_targets, BlendUpdate(plan, controller, sft_batch, validation)


def apply_blend(learner: Any, rl_batch: TrainBatch | None, rl_targets: PolicyTargets | None, update: BlendUpdate):
    """Take the blended optimizer step on `learner`: (metrics, probe)."""
    decide = update.controller.decide if update.controller is not None else None
    return learner.blended_step(
        update.plan, rl_batch, rl_targets, update.sft_batch, validation_batch=update.validation_batch, decide=decide,
    )
