"""Dr.GRPO ("GRPO Done Right", understand-r1-zero): GRPO without its two biases.

ALGORITHMS.md §1.3. A_i = r_i - mean_g (no std: removes the difficulty bias), and the per-token
loss summed per sequence over a constant L_max instead of |o_i| (removes the length bias):
loss_agg `dr-grpo` = Σ ℓ·M / (B'·L_max), the reference (oat) and TRL form, and verl 0.9.1's
`seq-mean-token-sum-norm`; rlpost's `seq-mean-token-sum-norm` is older verl's, without the 1/B'. Truncated completions get reward 0, as in the reference.
"""

from __future__ import annotations

import torch

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, Metrics
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES


class DrGrpoConfig(Section):
    """Reward of truncated completions."""

    truncated_reward: float | None = 0.0
    """Reward of completions that hit the length limit (the Dr.GRPO reference sets 0); null keeps their reward."""


# ALGORITHMS §1.3: no std, Σ/(B·L_max), no KL.
@OBJECTIVES.register(
    "dr_grpo", config=DrGrpoConfig, defaults={"normalize_adv_by_std": False, "loss_agg": "dr-grpo"}, group_relative=True
)
class DrGRPO(GRPO):
    name = "dr_grpo"

    @property
    def normalize_by_std(self) -> bool:
        return False  # the defining change of Dr.GRPO, whatever objective.normalize_adv_by_std says

    def shape_rewards(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        value = self.config.dr_grpo.truncated_reward
        metrics = {"dr_grpo/truncated_frac": float(inputs.truncated.double().mean()) if inputs.truncated.numel() else 0.0}
        if value is None:
            return inputs.rewards, metrics
        return torch.where(inputs.truncated, torch.full_like(inputs.rewards, value), inputs.rewards), metrics
