"""The prompt-sampler interface, the shared epoch order, and the sampler registry.

A sampler decides which prompts the next step rolls out and how many completions each gets,
and learns from the scored groups. Its whole state (data position, per-prompt statistics, the
counters its random draws are keyed on) round-trips through plain JSON, so a resumed run draws
exactly the batches an uninterrupted one would.

Randomness is counter-based: every random draw uses a generator seeded from
(seed, purpose, counter), e.g. the epoch number for the epoch permutation. No generator object
is carried between calls, so the saved counters are the RNG state.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from rlpost.registry import Registry
from rlpost.samplers.outcomes import group_metrics
from rlpost.types import Group, Prompt

STATE_VERSION = 1

SAMPLERS: Registry[type[PromptSampler]] = Registry("sampler", package="rlpost.samplers")
"""Prompt samplers by `sampler.name`; each sampler's module registers itself (`register_sampler`)."""

SamplerT = TypeVar("SamplerT", bound="type[PromptSampler]")

# Purposes of the counter-keyed generators; distinct so that streams never coincide.
EPOCH_STREAM = 0
SELECTION_STREAM = 1


def keyed_rng(seed: int, stream: int, counter: int) -> np.random.Generator:
    """A generator that depends only on (seed, stream, counter)."""
    # SeedSequence takes non-negative entropy only; fold a negative seed into 64 bits.
    return np.random.default_rng([seed % 2**64, stream, counter])


class EpochOrder:
    """Seeded epoch-by-epoch shuffling of dataset indices.

    Each epoch is a fresh permutation of 0..size-1 (seeded by the epoch number). `take(k)` hands
    out the next k positions; when fewer than k remain in the epoch the rest is dropped (as a
    data loader with drop_last does) and the next epoch starts, so a take never repeats a prompt
    and every prompt appears at most once per epoch (exactly once when size is a multiple of k).
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("cannot shuffle an empty dataset")
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def take(self, k: int) -> np.ndarray:
        """The next k dataset indices (distinct)."""
        if not 1 <= k <= self.size:
            raise ValueError(f"cannot take {k} distinct prompts from {self.size}")
        if self.position + k > self.size:
            self.epoch += 1
            self.position = 0
        indices = self.permutation(self.epoch)[self.position : self.position + k]
        self.position += k
        return indices

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of `epoch` (cached: every take within an epoch reuses it)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, keyed_rng(self.seed, EPOCH_STREAM, epoch).permutation(self.size))
        return self._cached[1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.size:
            raise ValueError(f"invalid epoch order state {state!r} for {self.size} prompts")
        self.epoch, self.position = epoch, position


class PromptSampler(ABC):
    """Which prompts each step rolls out, with how many rollouts each.

    Subclasses implement `next_batch`, and optionally `_learn` (per-prompt statistics from scored
    groups) and `_extra_state`/`_load_extra_state` (their part of the checkpoint).
    """

    name: str = ""
    """Config name of the sampler (`sampler.name`), recorded in the state to catch mismatches."""

    def __init__(self, prompts: list[Prompt], *, prompts_per_step: int, default_n: int, seed: int) -> None:
        if not prompts:
            raise ValueError("the sampler needs at least one training prompt")
        if prompts_per_step < 1 or default_n < 1:
            raise ValueError("prompts_per_step and default_n must be >= 1")
        if prompts_per_step > len(prompts):
            raise ValueError(
                f"train.prompts_per_step ({prompts_per_step}) is larger than the training set "
                f"({len(prompts)} prompts)"
            )
        self.prompts = prompts
        self.index_of = _index_by_id(prompts)
        self.prompts_per_step = prompts_per_step
        self.default_n = default_n
        self.seed = seed
        self.order = EpochOrder(len(prompts), seed)
        self.batches_drawn = 0
        """How many batches were drawn: the counter that per-batch random draws are keyed on."""
        self.pending_metrics: dict[str, float] = {}
        """Metrics of the last selection/allocation, reported (and cleared) by the next `update`."""
        self._fingerprint = _fingerprint(prompts)

    @abstractmethod
    def next_batch(self, step: int) -> list[tuple[Prompt, int]]:
        """The prompts of the next step and the number of rollouts of each (all >= 1).

        Deterministic given the sampler's state. `step` is the trainer's step, used only in
        messages: the draws are keyed on the sampler's own batch counter, so the batch is the
        same whether or not the run was interrupted and resumed.
        """

    def update(self, groups: list[Group]) -> dict[str, float]:
        """Learn from scored groups; returns metrics (`sampler/...`) of this step."""
        metrics = group_metrics(groups)
        metrics.update(self.pending_metrics)
        self.pending_metrics = {}
        metrics.update(self._learn(groups))
        return metrics

    def _learn(self, groups: list[Group]) -> dict[str, float]:
        """Update per-prompt statistics; returns sampler-specific metrics. Stateless by default."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as plain JSON-serialisable values."""
        return {
            "version": STATE_VERSION,
            "sampler": self.name,
            "seed": self.seed,
            "num_prompts": len(self.prompts),
            "fingerprint": self._fingerprint,
            "order": self.order.state_dict(),
            "batches_drawn": self.batches_drawn,
            "pending_metrics": dict(self.pending_metrics),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken from a sampler of the same kind on the same prompts."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported sampler state version {state.get('version')!r}")
        if state.get("sampler") != self.name:
            raise ValueError(f"sampler state is for {state.get('sampler')!r}, this sampler is {self.name!r}")
        if state.get("fingerprint") != self._fingerprint:
            raise ValueError(
                f"sampler state was saved for a different training set ({state.get('num_prompts')} prompts "
                f"then, {len(self.prompts)} now, or different prompt ids): the data order cannot be resumed"
            )
        self.seed = int(state["seed"])
        self.order = EpochOrder(len(self.prompts), self.seed)
        self.order.load_state_dict(state["order"])
        self.batches_drawn = int(state["batches_drawn"])
        self.pending_metrics = {str(k): float(v) for k, v in state["pending_metrics"].items()}
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def _next_selection_rng(self) -> np.random.Generator:
        """A generator for this batch's random choices; advances the batch counter."""
        rng = keyed_rng(self.seed, SELECTION_STREAM, self.batches_drawn)
        self.batches_drawn += 1
        return rng

    def _indices_of(self, groups: list[Group]) -> list[int]:
        """Dataset index of each group's prompt (by its stable prompt_id)."""
        try:
            return [self.index_of[g.prompt.prompt_id] for g in groups]
        except KeyError as err:
            raise KeyError(f"group for prompt_id {err.args[0]!r}, which is not in the sampler's training set") from None


def _index_by_id(prompts: list[Prompt]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        if prompt.prompt_id in index:
            raise ValueError(f"duplicate prompt_id {prompt.prompt_id!r}: samplers key their state on it")
        index[prompt.prompt_id] = i
    return index


def _fingerprint(prompts: list[Prompt]) -> str:
    """Hash of the ordered prompt ids: the epoch order is only reproducible on the same list."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(prompt.prompt_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()



def register_sampler(name: str, *, config: type | None = None, **capabilities: Any) -> Callable[[SamplerT], SamplerT]:
    """Class decorator: register a sampler as `sampler.name: <name>`, with its `sampler.<name>` section."""

    def decorate(cls: SamplerT) -> SamplerT:
        cls.name = name  # recorded in the state, to refuse a checkpoint of another sampler
        return SAMPLERS.register(name, config=config, **capabilities)(cls)

    return decorate
