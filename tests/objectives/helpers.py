"""Small builders shared by the objective tests."""

from __future__ import annotations

import torch

from rlpost.objectives.base import AdvantageInputs


def lengths_mask(lengths: list[int], width: int) -> torch.Tensor:
    """[N, width] float mask with the first lengths[i] tokens of row i valid."""
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(torch.float64)


def advantage_inputs(rewards, group_index, lengths=None, correct=None, truncated=None, **extra) -> AdvantageInputs:
    rewards_t = torch.tensor(rewards, dtype=torch.float64)
    n = rewards_t.numel()
    return AdvantageInputs(
        rewards=rewards_t,
        group_index=torch.tensor(group_index, dtype=torch.long),
        response_lengths=torch.tensor(lengths if lengths is not None else [1] * n, dtype=torch.long),
        correct=torch.tensor(correct if correct is not None else [r > 0 for r in rewards], dtype=torch.bool),
        truncated=torch.tensor(truncated if truncated is not None else [False] * n, dtype=torch.bool),
        **extra,
    )
