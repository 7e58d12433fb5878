"""LUFFY: learning to reason under off-policy guidance (Yan et al. 2025, arXiv 2504.14945; ALGORITHMS.md §12.4).

Mixed-policy GRPO: each prompt's group holds its on-policy rollouts and the prompt's demonstration
(the dataset's worked solution, reward `luffy.demo_reward`), and the advantage is taken over the
mixed group, A_i = (r_i - mean(G_on ∪ G_off)) / (std(G_on ∪ G_off) + eps) (the paper's formula;
`normalize_adv_by_std: false` gives the authors' script's r - mean). The per-token loss is

    rollout tokens:        the clipped surrogate of GRPO, -min(ρ A, clip(ρ) A)
    demonstration tokens:  -A · f(π_θ),  f(π) = π / (π + γ)      (policy shaping, no clipping)

with π_θ the current policy's probability of the demonstration token and no importance-sampling
denominator (the demonstrator's probability is taken as 1, as in the paper). The shaping's gradient
weight γπ/(π+γ)² · ∇log π keeps low-probability demonstration tokens in play instead of the
vanishing π · ∇log π of the plain ratio (`luffy.shaping: false` uses f(π) = π).

How a demonstration gets into each group (the loop is unchanged): the objective's `group_filter`
returns a `GuidanceMixer`, the collector hook DAPO's dynamic sampling uses, which takes each
generation round's scored groups and appends the demonstration to every group. The sampler has
already learned from the rollouts alone (`sampler.update` runs first). The mixer needs the tokenizer:
`attach_guidance(parts)`, one call in `rlpost.loop.parts.build_parts`, hands it over.

Demonstration rows are recognised by the reward component `luffy/off_policy` (1 on the
demonstration, 0 on rollouts) and reach the loss through `token_weights`: +1 on rollout tokens,
-1 on demonstration tokens. An importance-sampling correction (`cluster.is_correction`) multiplies
these weights; the rollout tokens take the corrected magnitude, the demonstration tokens only the
sign (their behaviour probability is unknown, so a correction of them has no meaning).

Reconstructed where the paper leaves it open: the demonstration's reward is a fixed value (the
paper's traces are verified correct, reward 1); its other reward components are the best value any
rollout of its group scored; the demonstration counts as correct; the group metrics
(`groups/*`, `adv/*`) are computed over the rollouts alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from rlpost.config.base import Section
from rlpost.objectives.base import AdvantageInputs, LossInputs, Metrics, StepScale
from rlpost.objectives.core import (
    PolicyLossTerms,
    aggregate_loss,
    batch_metrics,
    group_metrics,
    policy_metrics,
    tensor_stats,
    token_share,
)
from rlpost.objectives.grpo import GRPO
from rlpost.objectives.registry import OBJECTIVES
from rlpost.types import Completion, Group

if TYPE_CHECKING:  # see rlpost.objectives.base
    from rlpost.config.objective import ObjectiveConfig

OFF_POLICY_COMPONENT = "luffy/off_policy"
"""Reward component marking demonstration rows (1.0) among rollouts (0.0)."""


class LuffyConfig(Section):
    """LUFFY (arXiv 2504.14945): the prompt's demonstration joins each GRPO group; advantages over
    the mixed group; demonstration tokens trained with the shaped weight f(π) = π/(π + gamma), no
    clipping; rollouts with the clipped surrogate. Needs every training row to carry a worked solution
    (`data.solution_field`)."""

    gamma: float = Field(0.1, gt=0)
    """γ of the policy shaping f(π) = π/(π + γ) on demonstration tokens (the paper: 0.1)."""
    shaping: bool = True
    """Shape the demonstration weight; false uses f(π) = π (importance sampling with the demonstrator's probability taken as 1)."""
    demo_reward: float = 1.0
    """Reward of the demonstration in its group (the paper's traces are verified correct: 1). Set it to what a correct answer earns under the configured reward (the quickstart's: 1.2 with the boxed bonus)."""
    max_demo_tokens: int | None = Field(None, ge=1)
    """Cut demonstrations to this many tokens; null uses rollout.max_new_tokens."""


def shaped_weight(logp: torch.Tensor, gamma: float, shaping: bool = True) -> torch.Tensor:
    """f(π) = π/(π + γ) with π = exp(logp) (or π itself without shaping), differentiable in logp."""
    prob = torch.exp(logp)
    return prob / (prob + gamma) if shaping else prob


def demonstration_rows(inputs: AdvantageInputs) -> torch.Tensor:
    """[N] bool: the rows that are demonstrations (none when the batch carries no marker)."""
    marker = inputs.reward_components.get(OFF_POLICY_COMPONENT)
    if marker is None:
        return torch.zeros_like(inputs.rewards, dtype=torch.bool)
    return marker > 0.5


def with_demonstration(group: Group, demo: Completion, reward: float) -> Group:
    """A copy of the scored `group` with `demo` appended (reward `reward`, correct, marked off-policy)."""
    size = group.size
    demo = replace(demo, policy_version=group.policy_version)  # no effect on the group's staleness
    components = {name: [*values, max(values, default=0.0)] for name, values in group.reward_components.items()}
    components[OFF_POLICY_COMPONENT] = [0.0] * size + [1.0]
    correct = list(group.correct) if group.correct else [False] * size
    return Group(group.prompt, [*group.completions, demo], [*group.rewards, reward], components, [*correct, True])


@dataclass
class GuidanceMixer:
    """A one-round collector (the `group_filter` interface) that appends each group's demonstration."""

    demonstrations: Any
    """`rlpost.blending.demos.Demonstrations`: `completion(prompt)` gives the tokenised worked solution."""
    round_size: int
    demo_reward: float
    _groups: list[Group] = field(default_factory=list)
    _done: bool = False

    @property
    def ready(self) -> bool:
        return self._done

    def add_groups(self, groups: list[Group]) -> list[bool]:
        self._groups = [with_demonstration(g, self.demonstrations.completion(g.prompt), self.demo_reward) for g in groups]
        self._done = True
        return [True] * len(groups)

    def take(self) -> tuple[list[Group], Metrics]:
        groups, self._groups, self._done = self._groups, [], False
        demo_tokens = [len(g.completions[-1].token_ids) for g in groups]
        return groups, {
            "luffy/demos_added": float(len(groups)),
            "luffy/demo_tokens_mean": sum(demo_tokens) / max(len(demo_tokens), 1),
        }


@OBJECTIVES.register("luffy", config=LuffyConfig, group_relative=True)
class LUFFY(GRPO):
    """Mixed-policy GRPO with one demonstration per group and shaped demonstration weights."""

    name = "luffy"

    def __init__(self, config: ObjectiveConfig, max_response_length: int):
        super().__init__(config, max_response_length)
        self.demonstrations: Any = None
        """Set by `attach_guidance` on the loop's instance (the learner's instance never needs it)."""

    def group_filter(self, prompts_per_step: int) -> GuidanceMixer:
        if self.demonstrations is None:
            raise RuntimeError(
                "luffy: demonstrations need the tokenizer; rlpost.loop.parts.build_parts must call "
                "rlpost.objectives.luffy.attach_guidance(parts)"
            )
        return GuidanceMixer(self.demonstrations, prompts_per_step, self.config.luffy.demo_reward)

    def compute_advantages(self, inputs: AdvantageInputs) -> tuple[torch.Tensor, Metrics]:
        advantages = self.group_relative_advantages(inputs)
        demo = demonstration_rows(inputs)
        on = ~demo
        metrics = {
            **batch_metrics(inputs.rewards[on], inputs.response_lengths[on], inputs.truncated[on]),
            **group_metrics(inputs.rewards[on], inputs.group_index[on], inputs.correct[on]),
            **tensor_stats(advantages[on], "adv"),
            "luffy/demo_rows": float(demo.sum()),
            "luffy/demo_adv_mean": float(advantages[demo].mean()) if demo.any() else 0.0,
        }
        return advantages, metrics

    def token_weights(self, inputs: AdvantageInputs) -> torch.Tensor | None:
        """+1 on rollout rows, -1 on demonstration rows ([N, T]; only the sign marks the rows)."""
        if inputs.mask is None:
            raise ValueError("luffy: token_weights needs AdvantageInputs.mask")
        sign = 1.0 - 2.0 * demonstration_rows(inputs).to(inputs.mask.dtype)
        return sign.unsqueeze(-1).expand_as(inputs.mask).clone()

    def policy_terms(self, inputs: LossInputs) -> PolicyLossTerms:
        """Rollout tokens: GRPO's clipped surrogate times |token weight|; demonstration tokens: -A·f(π)."""
        terms = super().policy_terms(inputs)
        if inputs.token_weights is None:
            return terms
        off = inputs.token_weights < 0
        advantages = inputs.advantages if inputs.advantages.dim() == 2 else inputs.advantages.unsqueeze(-1)
        s = self.config.luffy
        off_loss = -advantages * shaped_weight(inputs.logp, s.gamma, s.shaping)
        on_loss = terms.loss * inputs.token_weights.abs().to(terms.loss.dtype)
        return PolicyLossTerms(
            loss=torch.where(off, off_loss.to(terms.loss.dtype), on_loss),
            ratio=terms.ratio,
            clipped_upper=terms.clipped_upper & ~off,
            clipped_lower=terms.clipped_lower & ~off,
            dual_clipped=terms.dual_clipped & ~off,
        )

    def clip_metrics(self, terms: PolicyLossTerms, inputs: LossInputs, scale: StepScale) -> Metrics:
        metrics = policy_metrics(terms, inputs.logp, inputs.old_logp, inputs.mask, scale)
        off = inputs.token_weights < 0 if inputs.token_weights is not None else torch.zeros_like(inputs.mask, dtype=torch.bool)
        off_mask = inputs.mask * off.to(inputs.mask.dtype)
        metrics["luffy/off_policy_token_frac"] = token_share(off, inputs.mask, scale)
        metrics["luffy/off_policy_prob"] = token_share(torch.exp(inputs.logp.detach()), off_mask, scale)
        metrics["luffy/off_policy_pg_loss"] = float(aggregate_loss(terms.loss.detach(), off_mask, self.loss_agg, scale))
        return metrics


def attach_guidance(parts: Any) -> None:
    """Give a LUFFY objective of the run its demonstrations (tokenised worked solutions); any other
    objective is left alone. `parts`: `rlpost.loop.parts.RunParts` (tokenizer, pad id, prompts)."""
    objective = getattr(parts.objective, "inner", parts.objective)  # an importance-sampling wrapper's
    if not isinstance(objective, LUFFY):
        return
    from rlpost.blending.demos import Demonstrations  # the learner package imports the objectives

    eos = parts.tokenizer.eos_token_id
    if eos is None:
        raise ValueError("luffy: demonstrations end with the end-of-sequence token: the tokenizer has none")
    limit = objective.config.luffy.max_demo_tokens or objective.max_response_length
    objective.demonstrations = Demonstrations(parts.tokenizer, eos, parts.pad_token_id, limit)
    objective.demonstrations.check(parts.train_prompts)
