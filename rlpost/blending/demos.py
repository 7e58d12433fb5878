"""Demonstrations: each prompt's worked solution as a one-completion group, and batches of them.

A demonstration of prompt q is the completion `tokenize(solution) + [EOS]` (cut to
`max_tokens` when set), so `build_train_batch` lays it out exactly like a rollout: prompt tokens are
context, only the solution tokens are "response" and enter the loss. The solution comes from the
canonical `solution` field of the row (`data.solution_field`).
"""

from __future__ import annotations

from typing import Any

from rlpost.learner.batch import TrainBatch, build_train_batch
from rlpost.types import Completion, Group, Prompt


class MissingDemonstration(ValueError):
    """A prompt has no worked solution to train on."""


class Demonstrations:
    """Tokenises each prompt's solution once (cached by prompt id) and builds demonstration batches."""

    def __init__(self, tokenizer: Any, eos_token_id: int, pad_token_id: int, max_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.max_tokens = max_tokens
        self._cache: dict[str, Completion] = {}

    def completion(self, prompt: Prompt) -> Completion:
        cached = self._cache.get(prompt.prompt_id)
        if cached is not None:
            return cached
        solution = prompt.row.get("solution")
        if not solution:
            raise MissingDemonstration(
                f"prompt {prompt.prompt_id!r} has no worked solution: SFT blending needs every training row "
                "to carry one (set data.solution_field to the field that holds it)"
            )
        ids = list(self.tokenizer(solution, add_special_tokens=False)["input_ids"]) + [self.eos_token_id]
        finish = "stop"
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            ids, finish = ids[: self.max_tokens], "length"
        completion = Completion(token_ids=ids, text=solution, logprobs=[0.0] * len(ids), finish_reason=finish)
        self._cache[prompt.prompt_id] = completion
        return completion

    def groups(self, prompts: list[Prompt]) -> list[Group]:
        """One scored group of one demonstration per prompt (reward 1, correct)."""
        return [Group(prompt, [self.completion(prompt)], rewards=[1.0], correct=[True]) for prompt in prompts]

    def batch(self, prompts: list[Prompt]) -> TrainBatch:
        return build_train_batch(self.groups(prompts), self.pad_token_id)

    def check(self, prompts: list[Prompt]) -> None:
        """Raise `MissingDemonstration` naming how many of `prompts` have no solution."""
        missing = [p.prompt_id for p in prompts if not p.row.get("solution")]
        if missing:
            raise MissingDemonstration(
                f"{len(missing)} of {len(prompts)} prompts have no worked solution (first: {missing[0]!r}); "
                "SFT blending needs one per training row: set data.solution_field to the field that holds it"
            )
