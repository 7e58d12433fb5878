"""VCPO's per-trajectory gradient path: the off-policy optimal baseline (OPOB, ALGORITHMS.md §6.3).

b_g = Σ_i W_i R_i / Σ_i W_i with W_i = w_i²‖g_i‖² needs every trajectory's own gradient g_i, so
each sequence of a group is back-propagated alone with advantage 1, and the two-buffer
accumulator (`rlpost.objectives.vcpo.OpobGradientBuffers`) combines them into
Σ_i ((R_i - b_g)/σ_g)·g_i once the group is complete. The result is left in `param.grad` for
the learner's usual clip and optimizer step.
"""

from __future__ import annotations

import torch

from rlpost.learner.batch import TrainBatch
from rlpost.objectives.base import LossInputs, Metrics, StepScale
from rlpost.objectives.vcpo import OpobGradientBuffers, opob_coefficients, sequence_log_weights


def accumulate_opob_gradients(
    learner, batch: TrainBatch, rows: torch.Tensor, scale: StepScale, old_logp: torch.Tensor | None
) -> tuple[float, Metrics, torch.Tensor]:
    """Fill the policy's `param.grad` with the OPOB gradient of the sequences `rows` of `batch`.

    Returns the loss Σ_i ((R_i - b_g)/σ_g)·L_i(A=1) whose gradient that is, the metrics (baselines
    next to the groups' mean rewards, skipped trajectories) and the current log-probs
    [len(rows), T] (no grad) for the step's learning-rate hook.
    """
    objective = learner.objective
    vcpo = objective.config.vcpo
    learner.check_gradient_access()
    params = learner.trainable_parameters()
    buffers = OpobGradientBuffers(params, norm_by_std=vcpo.opob_norm_by_std, use_is_weights=vcpo.opob_use_is_weights)
    per_sequence_loss_mean = objective.config.loss_agg == "seq-mean-token-mean"
    current_logp = torch.zeros_like(batch.response_mask[rows])
    group_rewards, group_baselines, total_loss = [], [], 0.0
    for group in torch.unique(batch.group_index[rows]):
        members = (batch.group_index[rows] == group).nonzero().flatten()
        rewards = batch.rewards[rows[members]]
        buffers.start_group(rewards)
        unit_losses = []
        for local in members.tolist():
            row = int(rows[local])
            sub = batch.select([row])
            width = sub.response_mask.shape[1]
            logp, _ = learner.token_logprobs(learner.module, sub, compute_entropy=False)
            inputs = LossInputs(
                logp=logp,
                old_logp=old_logp[[row], :width] if old_logp is not None else logp.detach(),
                advantages=torch.ones(1),
                mask=sub.response_mask,
                token_ids=sub.response_ids,
                group_index=torch.zeros(1, dtype=torch.long),
                behaviour_logp=sub.behaviour_logp,
            )
            loss, _ = objective.compute_loss(inputs, scale)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
            log_weight = float(sequence_log_weights(logp.detach(), sub.behaviour_logp, sub.response_mask)[0])
            length = float(sub.response_mask.sum())
            buffers.add(grads, float(batch.rewards[row]), log_weight, norm_scale=length if per_sequence_loss_mean else 1.0)
            current_logp[local, :width] = logp.detach().float()
            unit_losses.append(float(loss.detach()))
        baseline = buffers.finish_group()
        coefficients = opob_coefficients(
            rewards, torch.full_like(rewards, baseline), torch.zeros(len(rewards), dtype=torch.long),
            norm_by_std=vcpo.opob_norm_by_std,
        )
        total_loss += float((coefficients * torch.tensor(unit_losses, dtype=torch.float64)).nan_to_num().sum())
        group_baselines.append(baseline)
        group_rewards.append(float(rewards.mean()))
    for param, gradient in zip(params, buffers.accumulated, strict=True):
        param.grad = gradient.to(param.dtype)
    metrics = {
        "vcpo/opob_baseline_mean": sum(group_baselines) / max(len(group_baselines), 1),
        "vcpo/opob_group_reward_mean": sum(group_rewards) / max(len(group_rewards), 1),
        "vcpo/opob_skipped": float(buffers.skipped),
    }
    return total_loss, metrics, current_logp
