"""Data that crosses component boundaries: prompts, completions and groups.

Plain dataclasses with no torch dependency, so that data, rewards, samplers and the
runtime can exchange them (and Ray can pickle them) without importing a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    """One training or evaluation prompt."""

    prompt_id: str
    """Stable identifier (the same across epochs and resumes); samplers key their state on it."""
    text: str
    """The prompt after the chat template, exactly as fed to the model."""
    token_ids: list[int]
    """`text` tokenised (no special tokens added beyond what the template wrote)."""
    row: dict[str, Any] = field(default_factory=dict)
    """The dataset row: at least `question` and `answer`, optionally `solution` and any other field."""


@dataclass
class Completion:
    """One sampled completion of a prompt."""

    token_ids: list[int]
    """Generated token ids, without the prompt, including the end-of-sequence token if one was sampled."""
    text: str
    """Detokenised completion (special tokens skipped)."""
    logprobs: list[float]
    """Behaviour log-probability of each generated token under the distribution sampled from (after
    temperature, top-k and top-p), which the learner recomputes the same way."""
    finish_reason: str
    """`"stop"` (end-of-sequence or stop string) or `"length"` (hit the token limit)."""
    policy_version: int = 0
    """Version of the weights that generated this completion (learner optimizer steps)."""


@dataclass
class Group:
    """All completions of one prompt, with their rewards once scored.

    Groups may differ in size: the sampler decides how many rollouts each prompt gets.
    """

    prompt: Prompt
    completions: list[Completion]
    rewards: list[float] = field(default_factory=list)
    """Total reward of each completion (filled by the reward manager)."""
    reward_components: dict[str, list[float]] = field(default_factory=dict)
    """Per-reward-function scores of each completion, by reward name (unweighted)."""
    correct: list[bool] = field(default_factory=list)
    """Whether each completion is judged correct (accuracy metric, not necessarily the reward)."""

    @property
    def size(self) -> int:
        return len(self.completions)

    @property
    def policy_version(self) -> int:
        """Oldest policy version among the completions (what staleness is measured against)."""
        return min((c.policy_version for c in self.completions), default=0)
