"""The rollout engine interface shared by the vLLM and Hugging Face engines."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from rlpost.types import Group, Prompt


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled (engine-independent)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    """-1 disables top-k."""
    seed: int | None = None
    """Seed of this generate call; engines derive per-request seeds from it so runs repeat."""
    greedy: bool = False
    """Greedy decoding (temperature and top-p ignored)."""

    @property
    def decodes_greedily(self) -> bool:
        """Argmax decoding: asked for, or implied by temperature 0."""
        return self.greedy or self.temperature == 0


class RolloutEngine(ABC):
    """Generates groups of completions and takes new weights from the learner."""

    policy_version: int = 0

    @abstractmethod
    def generate(self, prompts: list[Prompt], n_per_prompt: list[int], sampling: SamplingSettings) -> list[Group]:
        """One group per prompt with `n_per_prompt[i]` completions each, in prompt order.

        Every completion carries its token ids, text, per-token behaviour log-probs, finish reason
        and the engine's current policy version. The log-probs are those of the distribution each
        token was sampled from: after temperature, top-k and top-p, renormalised (greedy: of the
        raw logits), what `rlpost.ops.model_token_logprobs` computes with the same settings.
        """

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new weights (Hugging Face parameter names) and set the policy version."""

    def close(self) -> None:
        """Release the engine's resources."""
