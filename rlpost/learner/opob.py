"""VCPO's per-trajectory gradient path: the off-policy optimal baseline (OPOB, ALGORITHMS.md §6.3).

b_g = Σ_i W_i R_i / Σ_i W_i with W_i = w_i²‖g_i‖² needs every trajectory's own gradient g_i, so
each sequence of a group is its own micro-batch, back-propagated alone with advantage 1, and the
two-buffer accumulator (`rlpost.objectives.vcpo.OpobGradientBuffers`) combines them into
Σ_i ((R_i - b_g)/σ_g)·g_i once the group is complete. The result is left in `param.grad` for
the learner's usual clip and optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlpost.learner.accumulate import Accumulated, Backward, Micro, Strategy, on_device
from rlpost.learner.batch import TrainBatch
from rlpost.objectives.base import LossInputs, Objective
from rlpost.objectives.vcpo import OpobGradientBuffers, opob_coefficients, sequence_log_weights


@dataclass
class OpobGradient(Strategy):
    """Fills `param.grad` with the OPOB gradient of the accumulated rows.

    The pass's loss is Σ_i ((R_i - b_g)/σ_g)·L_i(A=1), whose gradient that is; its metrics are the
    baselines next to the groups' mean rewards, and the skipped trajectories.
    """

    loss_fn: Objective
    params: list[torch.nn.Parameter]
    rewards: torch.Tensor
    """[N] rewards of the whole batch."""
    old_logp: torch.Tensor | None = None
    buffers: OpobGradientBuffers = field(init=False)
    groups: list[torch.Tensor] = field(default_factory=list)
    """Batch rows of each group, in accumulation order."""
    unit_losses: list[float] = field(default_factory=list)
    total_loss: float = 0.0
    baselines: list[float] = field(default_factory=list)
    group_rewards: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        vcpo = self.loss_fn.config.vcpo
        self.buffers = OpobGradientBuffers(self.params, norm_by_std=vcpo.opob_norm_by_std, use_is_weights=vcpo.opob_use_is_weights)

    @property
    def needs_entropy(self) -> bool:
        return False

    def micro_batches(self, runner, batch: TrainBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """One sequence each, group after group."""
        chunks = []
        for group in torch.unique(batch.group_index[rows]):
            members = (batch.group_index[rows] == group).nonzero().flatten()
            self.groups.append(rows[members])
            chunks.extend(members[[i]] for i in range(len(members)))
        return chunks

    def loss_inputs(self, micro: Micro) -> LossInputs:
        width, sub = micro.width, micro.sub
        return on_device(
            LossInputs(
                logp=micro.logp,
                old_logp=self.old_logp[micro.picked, :width] if self.old_logp is not None else micro.logp.detach(),
                advantages=torch.ones(1),
                mask=sub.response_mask,
                token_ids=sub.response_ids,
                group_index=torch.zeros(1, dtype=torch.long),
                behaviour_logp=sub.behaviour_logp,
            ),
            micro.logp.device,
        )

    def apply(self, loss: torch.Tensor, micro: Micro, backward: Backward) -> None:
        """This sequence's own gradient into the group's buffers; the group's baseline after its last one."""
        group = self.groups[len(self.baselines)]
        row = int(micro.picked[0])
        if row == int(group[0]):
            self.buffers.start_group(self.rewards[group])
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        sub = micro.sub
        log_weight = float(sequence_log_weights(micro.logp.detach(), sub.behaviour_logp, sub.response_mask)[0])
        per_sequence_mean = self.loss_fn.config.loss_agg == "seq-mean-token-mean"
        norm_scale = float(sub.response_mask.sum()) if per_sequence_mean else 1.0
        self.buffers.add(grads, float(self.rewards[row]), log_weight, norm_scale=norm_scale)
        self.unit_losses.append(float(loss.detach()))
        if row == int(group[-1]):
            self.finish_group(self.rewards[group])

    def finish_group(self, rewards: torch.Tensor) -> None:
        baseline = self.buffers.finish_group()
        coefficients = opob_coefficients(
            rewards, torch.full_like(rewards, baseline), torch.zeros(len(rewards), dtype=torch.long),
            norm_by_std=self.loss_fn.config.vcpo.opob_norm_by_std,
        )
        self.total_loss += float((coefficients * torch.tensor(self.unit_losses, dtype=torch.float64)).nan_to_num().sum())
        self.unit_losses = []
        self.baselines.append(baseline)
        self.group_rewards.append(float(rewards.mean()))

    def finish(self, result: Accumulated) -> Accumulated:
        for param, gradient in zip(self.params, self.buffers.accumulated, strict=True):
            param.grad = gradient.to(param.dtype)
        result.loss = self.total_loss
        result.metrics = {
            "vcpo/opob_baseline_mean": sum(self.baselines) / max(len(self.baselines), 1),
            "vcpo/opob_group_reward_mean": sum(self.group_rewards) / max(len(self.group_rewards), 1),
            "vcpo/opob_skipped": float(self.buffers.skipped),
        }
        return result
