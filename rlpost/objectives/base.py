"""The interface every objective implements, and the tensors that cross it.

Shapes: N sequences (completions) in a micro-batch or step, T padded response length.
Per-token tensors are [N, T] and right-padded; `mask` marks valid response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the config module builds its schema from the objective modules, so they import it lazily
    from rlpost.config.objective import ObjectiveConfig


@dataclass
class AdvantageInputs:
    """Everything an advantage estimator may look at, for the whole optimizer step."""

    rewards: torch.Tensor
    """[N] total (weighted) reward of each sequence."""
    group_index: torch.Tensor
    """[N] long, index of the sequence's group (prompt) in 0..G-1; groups may differ in size."""
    response_lengths: torch.Tensor
    """[N] long, number of valid response tokens."""
    correct: torch.Tensor
    """[N] bool, accuracy of each sequence (used by filters and metrics, not necessarily the reward)."""
    truncated: torch.Tensor
    """[N] bool, True where generation stopped at the length limit."""
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)
    """Unweighted score of each reward function, by name, each [N]."""
    token_ids: torch.Tensor | None = None
    """[N, T] long, right-padded response token ids (objectives with `needs_token_ids`, e.g. GTPO)."""
    mask: torch.Tensor | None = None
    """[N, T] float, 1 on valid response tokens (given together with `token_ids`)."""
    behaviour_logp: torch.Tensor | None = None
    """[N, T] log-probs of the sampled tokens reported by the rollout engine (the sampling policy's), for
    step-level token selections that need them before the learner's forward (Clip-Cov, KL-Cov)."""


@dataclass
class LossInputs:
    """Per-token inputs of the policy loss for one micro-batch."""

    logp: torch.Tensor
    """[N, T] log-probs of the sampled tokens under the current policy (requires grad)."""
    old_logp: torch.Tensor
    """[N, T] log-probs under the policy that the ratio is taken against (no grad)."""
    advantages: torch.Tensor
    """[N] per-sequence or [N, T] per-token advantages (no grad)."""
    mask: torch.Tensor
    """[N, T] float, 1 on valid response tokens."""
    ref_logp: torch.Tensor | None = None
    """[N, T] log-probs under the frozen reference policy (present when the objective asks for it)."""
    entropy: torch.Tensor | None = None
    """[N, T] per-token entropy of the current policy (present when the objective asks for it)."""
    token_ids: torch.Tensor | None = None
    """[N, T] long, response token ids."""
    group_index: torch.Tensor | None = None
    """[N] long, group of each sequence."""
    behaviour_logp: torch.Tensor | None = None
    """[N, T] log-probs reported by the rollout engine (off-policy corrections)."""
    token_weights: torch.Tensor | None = None
    """[N, T] rows of `Objective.token_weights(...)` for this micro-batch, when that hook returns a tensor (GTPO)."""
    fused_ops: bool = False
    """Compute the per-token clipped surrogate with the fused op (`rlpost.ops.policy_loss_terms`); the
    learner sets it from `learner.fused_ops`. Values, gradients and metrics are the same either way."""


@dataclass
class StepScale:
    """Normalisers taken over the whole optimizer step (all micro-batches, all ranks).

    Each micro-batch loss is divided by these, so the sum of micro-batch losses equals the loss
    of one big batch: gradient accumulation and data parallelism do not change the update.
    """

    tokens: int
    """Valid response tokens in the optimizer step."""
    sequences: int
    """Sequences with at least one valid token in the optimizer step."""
    max_response_length: int
    """Fixed L_max (the rollout's max new tokens), the constant normaliser of Dr.GRPO-style modes."""


Metrics = dict[str, float]


class Objective:
    """Base class: advantages from rewards, and a per-micro-batch loss.

    Subclasses override what differs. Stateful objectives keep their state in attributes listed
    by `state_dict`, so a resumed run continues with the same state.
    """

    name: str = ""
    needs_entropy: bool = False
    """Whether `compute_loss` needs `LossInputs.entropy` (the learner then computes it)."""
    needs_token_ids: bool = False
    """Whether `AdvantageInputs.token_ids` and `.mask` must be filled (GTPO's conflict masks)."""
    rejects_tokens: bool = False
    """Whether `loss_mask` may remove tokens (off-policy rejection): the learner then needs the old
    log-probs of the whole step before counting its normalisers."""

    def __init__(self, config: ObjectiveConfig, max_response_length: int):
        self.config = config
        self.max_response_length = max_response_length

    @property
    def per_trajectory_baseline(self) -> bool:
        """Whether the learner takes the per-trajectory gradient path (VCPO's OPOB,
        `rlpost.learner.opob`) instead of back-propagating `compute_loss` with the step's advantages."""
        return False

    @property
    def needs_reference(self) -> bool:
        """Whether a frozen reference model must provide `ref_logp`."""
        return self.config.kl_coef > 0

    def shape_rewards(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        """Rewards after method-specific shaping (e.g. DAPO's overlong penalty). Default: unchanged."""
        return inputs.rewards, {}

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        """[N] or [N, T] advantages for the whole step."""
        raise NotImplementedError

    def token_weights(self, inputs: AdvantageInputs) -> torch.Tensor | None:
        """[N, T] per-token loss weights for the whole step, or None (default).

        Called once per step after `compute_advantages`; the learner slices the rows of each
        micro-batch into `LossInputs.token_weights`. GTPO's conflict weights need every member of a
        group at once, which a micro-batch may not hold.
        """
        del inputs
        return None

    def sequences_in_loss(self, inputs: AdvantageInputs) -> torch.Tensor | None:
        """[N] bool: sequences whose tokens enter the loss, or None for all (default).

        The learner zeroes the mask rows of excluded sequences before counting `StepScale`
        (DAPO's optional overlong filter), so they leave the normalisers as well as the loss.
        """
        del inputs
        return None

    def group_filter(self, prompts_per_step: int):
        """A collector that keeps sampling until `prompts_per_step` informative groups are kept
        (DAPO's dynamic sampling: `rlpost.objectives.dapo.DynamicSampler`), or None (default)."""
        del prompts_per_step
        return None

    def compute_loss(self, inputs: LossInputs, scale: StepScale) -> tuple[torch.Tensor, Metrics]:
        """Scalar loss of one micro-batch, already divided by the step normalisers in `scale`.

        The metrics are additive too: each is this micro-batch's share of the step value
        (normalised by `scale`), so the learner sums them over micro-batches and ranks.
        """
        raise NotImplementedError

    def loss_mask(self, old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The step's mask [N, T] that `StepScale` is counted from: `mask` itself (default), or without
        the tokens an off-policy rejection removes (`rlpost.objectives.offpolicy`), so they leave the normalisers."""
        del old_logp, behaviour_logp
        return mask

    def lr_scale(self, step_inputs: dict[str, torch.Tensor]) -> tuple[float, Metrics]:
        """Multiplier of the learning rate for this optimizer step only (VCPO). Default 1."""
        return 1.0, {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
