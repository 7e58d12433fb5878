"""Turn scored groups into the padded tensors the learner trains on.

Layout: each row is `prompt + response`, left-aligned and right-padded to S tokens.
`response_index[i, t]` is the position in row i of the t-th response token, so any
per-position tensor [N, S] becomes a response-aligned [N, T] tensor with one gather.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from rlpost.objectives.base import AdvantageInputs, Metrics, Objective
from rlpost.objectives.core import clip_advantages, condition_rewards
from rlpost.types import Group


@dataclass
class TrainBatch:
    """One rollout batch: N sequences (all completions of all groups), tensors on the CPU; the learner
    moves one micro-batch at a time to the model's device (`to`)."""

    input_ids: torch.Tensor
    """[N, S] long, prompt followed by response, right-padded."""
    attention_mask: torch.Tensor
    """[N, S] long, 1 on prompt and response tokens."""
    response_index: torch.Tensor
    """[N, T] long, position in `input_ids` of each response token (0 where padded)."""
    response_mask: torch.Tensor
    """[N, T] float, 1 on valid response tokens."""
    response_ids: torch.Tensor
    """[N, T] long, response token ids (pad where masked)."""
    behaviour_logp: torch.Tensor
    """[N, T] log-probs reported by the rollout engine."""
    group_index: torch.Tensor
    """[N] long, group of each sequence."""
    rewards: torch.Tensor
    """[N] float, total reward."""
    correct: torch.Tensor
    """[N] bool."""
    truncated: torch.Tensor
    """[N] bool, the completion hit the length limit."""
    policy_version: torch.Tensor
    """[N] long, version of the weights that generated each completion."""
    reward_components: dict[str, torch.Tensor]
    """Unweighted score of each reward function, [N] each."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1).long()

    def advantage_inputs(self) -> AdvantageInputs:
        return AdvantageInputs(
            rewards=self.rewards,
            group_index=self.group_index,
            response_lengths=self.response_lengths,
            correct=self.correct,
            truncated=self.truncated,
            reward_components=self.reward_components,
            token_ids=self.response_ids,
            mask=self.response_mask,
            behaviour_logp=self.behaviour_logp,
        )

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TrainBatch:
        """A batch of `fn` applied to every tensor (reward components included)."""
        mapped = {}
        for field in fields(self):
            value = getattr(self, field.name)
            mapped[field.name] = {key: fn(tensor) for key, tensor in value.items()} if isinstance(value, dict) else fn(value)
        return TrainBatch(**mapped)

    def select(self, rows: torch.Tensor | list[int]) -> TrainBatch:
        """The sub-batch of `rows`, trimmed to its own longest sequence and response."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return self.map_tensors(lambda tensor: tensor[rows])._trimmed()

    def to(self, device: torch.device | str) -> TrainBatch:
        """This batch's tensors on `device` (the same tensors where they are there already)."""
        return self.map_tensors(lambda tensor: tensor.to(device))

    def _trimmed(self) -> TrainBatch:
        seq_len = max(int(self.attention_mask.sum(dim=1).max().item()), 1) if self.size else 1
        resp_len = max(int(self.response_lengths.max().item()), 1) if self.size else 1
        self.input_ids = self.input_ids[:, :seq_len]
        self.attention_mask = self.attention_mask[:, :seq_len]
        for name in ("response_index", "response_mask", "response_ids", "behaviour_logp"):
            setattr(self, name, getattr(self, name)[:, :resp_len])
        return self


def build_train_batch(groups: list[Group], pad_token_id: int) -> TrainBatch:
    """Stack every completion of every (scored) group into one `TrainBatch`."""
    rows: list[tuple[list[int], list[int], list[float]]] = []
    group_index, rewards, correct, truncated, versions = [], [], [], [], []
    components: dict[str, list[float]] = {name: [] for name in (groups[0].reward_components if groups else {})}
    for g, group in enumerate(groups):
        if len(group.rewards) != group.size:
            raise ValueError(f"group {group.prompt.prompt_id} is not scored ({len(group.rewards)} rewards, {group.size} completions)")
        for c, completion in enumerate(group.completions):
            rows.append((group.prompt.token_ids, completion.token_ids, completion.logprobs))
            group_index.append(g)
            rewards.append(group.rewards[c])
            correct.append(bool(group.correct[c]) if group.correct else False)
            truncated.append(completion.finish_reason == "length")
            versions.append(completion.policy_version)
            for name, values in components.items():
                values.append(group.reward_components[name][c])

    n = len(rows)
    seq_len = max((len(p) + len(r) for p, r, _ in rows), default=1)
    resp_len = max(max((len(r) for _, r, _ in rows), default=1), 1)
    input_ids = torch.full((n, seq_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, seq_len), dtype=torch.long)
    response_index = torch.zeros((n, resp_len), dtype=torch.long)
    response_mask = torch.zeros((n, resp_len), dtype=torch.float32)
    response_ids = torch.full((n, resp_len), pad_token_id, dtype=torch.long)
    behaviour_logp = torch.zeros((n, resp_len), dtype=torch.float32)
    for i, (prompt_ids, completion_ids, logprobs) in enumerate(rows):
        p, r = len(prompt_ids), len(completion_ids)
        input_ids[i, :p] = torch.tensor(prompt_ids, dtype=torch.long)
        input_ids[i, p : p + r] = torch.tensor(completion_ids, dtype=torch.long)
        attention_mask[i, : p + r] = 1
        response_index[i, :r] = torch.arange(p, p + r)
        response_mask[i, :r] = 1.0
        response_ids[i, :r] = torch.tensor(completion_ids, dtype=torch.long)
        behaviour_logp[i, : len(logprobs)] = torch.tensor(logprobs, dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_index=response_index,
        response_mask=response_mask,
        response_ids=response_ids,
        behaviour_logp=behaviour_logp,
        group_index=torch.tensor(group_index, dtype=torch.long),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        correct=torch.tensor(correct, dtype=torch.bool),
        truncated=torch.tensor(truncated, dtype=torch.bool),
        policy_version=torch.tensor(versions, dtype=torch.long),
        reward_components={name: torch.tensor(values, dtype=torch.float32) for name, values in components.items()},
    )


@dataclass
class PolicyTargets:
    """What the objective derives from a scored batch before the update."""

    advantages: torch.Tensor
    """[N] or [N, T] advantages."""
    token_weights: torch.Tensor | None
    """[N, T] per-token loss weights (GTPO), or None."""
    metrics: Metrics


def prepare_update(objective: Objective, batch: TrainBatch) -> PolicyTargets:
    """Shape rewards, compute advantages and token weights; drop excluded sequences from the loss.

    Sequences the objective excludes (e.g. DAPO's overlong filter) get an all-zero response
    mask, so they count in no normaliser.
    """
    inputs = batch.advantage_inputs()
    shaped, metrics = objective.shape_rewards(inputs)
    knobs = objective.config  # the reward / advantage switches every objective shares, applied here only
    inputs.rewards, reward_metrics = condition_rewards(shaped, knobs.reward_normalization, knobs.reward_clip)
    advantages, advantage_metrics = objective.compute_advantages(inputs)
    advantages, clip_metrics = clip_advantages(advantages, knobs.advantage_clip, batch.response_mask)
    token_weights = objective.token_weights(inputs)
    keep = objective.sequences_in_loss(inputs)
    if keep is not None:
        batch.response_mask[~keep] = 0.0
    return PolicyTargets(advantages, token_weights, {**metrics, **advantage_metrics, **reward_metrics, **clip_metrics})


def micro_batches(size: int, micro_batch_size: int) -> list[torch.Tensor]:
    """Row indices of consecutive micro-batches covering 0..size-1."""
    return [torch.arange(start, min(start + micro_batch_size, size)) for start in range(0, size, micro_batch_size)]


def sequence_lengths(batch: TrainBatch) -> torch.Tensor:
    """[N] long, prompt + response tokens of each row."""
    return batch.attention_mask.sum(dim=1).long()


def token_budget_micro_batches(lengths: torch.Tensor, budget: int, packed: bool) -> list[torch.Tensor]:
    """Positions (into `lengths`) of micro-batches of rows sorted longest first, each filled while it fits
    `budget`: its rows x its longest row (padded, bucketed), or the sum of its rows' lengths (`packed`).

    Each row lands in exactly one micro-batch; a row over the budget alone gets one of its own. Longest
    first puts the step's memory peak in its first micro-batch; within one, rows keep the batch's order."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    chunks: list[list[int]] = []
    cost = longest = 0
    for position, length in zip(order.tolist(), lengths[order].tolist(), strict=True):
        if chunks:
            grown = cost + length if packed else (len(chunks[-1]) + 1) * longest
            if grown <= budget:
                chunks[-1].append(position)
                cost = grown
                continue
        chunks.append([position])
        cost = longest = length
    return [torch.tensor(sorted(chunk), dtype=torch.long) for chunk in chunks]


def split_micro_batches(batch: TrainBatch, rows: torch.Tensor, mode: str, micro_batch_size: int,
                        micro_batch_tokens: int | None) -> list[torch.Tensor]:
    """Positions within `rows` of each micro-batch of `rows` of `batch`, as `learner.micro_batching` says.

    `padded`: consecutive runs of `micro_batch_size`. `bucketed` / `packed`: a token budget of
    `micro_batch_tokens` (None: `micro_batch_size` x the longest of `rows`) over rows sorted by length.
    """
    if mode == "padded" or len(rows) == 0:
        return micro_batches(len(rows), micro_batch_size)
    lengths = sequence_lengths(batch)[rows]
    budget = micro_batch_tokens or micro_batch_size * max(int(lengths.max()), 1)
    return token_budget_micro_batches(lengths, budget, packed=mode == "packed")
