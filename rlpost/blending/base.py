"""The interface of SFT–RL blending controllers, the data that crosses it, and the registry.

A controller decides, each step, which losses the learner back-propagates and with what weight:

1. `plan(stats)` runs after the step's rollouts are scored and before any forward pass. It sees the
   step's groups (per-question accuracies) and returns a `BlendPlan`: which questions train with
   RL on their rollouts, which with SFT on their demonstration, and the weights w_rl, w_sft of
   the step loss w_rl·L_RL + w_sft·L_SFT. A per-step choice (SASR) puts every question on one
   side; a per-question choice (HPT) splits them; a weight (AMFT) keeps both.
2. `decide(probe)`, only for plans with `defer_weights`, runs after both gradients are computed at
   unit weight and before the optimizer step. It sees what the learner measured (losses, token
   entropies, gradient dot products with a validation loss) and returns the final (w_rl, w_sft).
3. `observe(probe)` runs after the optimizer step with the pre-clip gradient norm and the weights
   applied, updates the controller's state and returns its metrics.

Exactly the chosen losses are back-propagated: a side with no questions, or with weight 0 in a
plan that does not defer its weights, is never computed. Everything a controller needs to continue
the same schedule after a restart (RNG, reference norms, mu, step counters) is in `state_dict()`,
which the trainer writes into the checkpoint.

A controller is one module of `rlpost.blending.controllers` whose class registers itself with
`@register_controller("name", config=ItsSection, **capabilities)`; its section becomes
`blending.<name>`. This module is torch-free and imports no config (the config imports it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rlpost.registry import Registry
from rlpost.types import Group, Prompt

Metrics = dict[str, float]

CAPABILITIES = ("holds_out_validation", "combines_gradients")
"""Flags a controller declares when it registers (class attributes of `BlendController`, False by default)."""

CONTROLLERS: Registry[type[BlendController]] = Registry("blending controller", package="rlpost.blending.controllers")
"""Blending controllers by `blending.name` (`none`, the RL objective alone, is not one of them)."""

ControllerT = TypeVar("ControllerT", bound="type[BlendController]")


def register_controller(
    name: str, *, config: type | None = None, **capabilities: bool
) -> Callable[[ControllerT], ControllerT]:
    """Class decorator: register a controller as `blending.name: <name>`, with its `blending.<name>` section.

    The capability flags are set on the class too, where the trainer and the learner read them.
    """

    unknown = sorted(set(capabilities) - set(CAPABILITIES))
    if unknown:  # a misspelt flag would silently read as "not capable"
        raise ValueError(f"controller {name!r}: unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")

    def decorate(cls: ControllerT) -> ControllerT:
        cls.name = name
        for flag, value in capabilities.items():
            setattr(cls, flag, value)
        return CONTROLLERS.register(name, config=config, **capabilities)(cls)

    return decorate


def controller_names() -> list[str]:
    return CONTROLLERS.names()


def get_controller(name: str) -> type[BlendController]:
    """The controller class registered under `name` (KeyError naming the closest one otherwise)."""
    return CONTROLLERS.get(name)


def build_controller(config: Any, seed: int) -> BlendController | None:
    """The controller `config.name` names (`config` is the `blending` section), or None for `none`."""
    if config.name == "none":
        return None
    return get_controller(config.name)(config, seed)


# --------------------------------------------------------------------------------------------
# what crosses the interface


@dataclass
class StepStats:
    """What a controller sees before the update: the step's scored groups, in batch order."""

    step: int
    """0-based training step (the trainer's step, the same on a resumed run)."""
    groups: list[Group]
    """The step's scored groups (rewards, correct flags, prompts with their rows)."""

    @property
    def group_sizes(self) -> list[int]:
        return [group.size for group in self.groups]

    @property
    def group_correct(self) -> list[int]:
        """Completions of each group judged correct."""
        return [sum(bool(c) for c in group.correct) for group in self.groups]

    @property
    def group_accuracy(self) -> list[float]:
        return [c / max(n, 1) for c, n in zip(self.group_correct, self.group_sizes, strict=True)]


@dataclass
class BlendPlan:
    """How one step combines the losses: w_rl·L_RL(rollouts of rl_groups) + w_sft·L_SFT(demonstrations of sft_groups)."""

    step_type: str
    """`rl`, `sft` or `mixed` (both losses), for metrics."""
    rl_groups: list[int]
    """Indices of the step's groups whose rollouts enter the RL loss (advantages from these groups only)."""
    sft_groups: list[int]
    """Indices of the step's groups whose demonstration enters the SFT loss (one demonstration each)."""
    rl_weight: float = 1.0
    """w_rl (ignored when `defer_weights`: `decide` returns it)."""
    sft_weight: float = 1.0
    """w_sft (ignored when `defer_weights`)."""
    defer_weights: bool = False
    """Compute both gradients at unit weight, then ask `decide(probe)` for the weights (torch backend only)."""
    rl_entropy: bool = False
    """Measure the policy's mean token entropy on the RL rollouts (`BlendProbe.rl_entropy`)."""
    sft_entropy: bool = False
    """Measure the policy's mean token entropy on the demonstrations (`BlendProbe.sft_entropy`)."""
    meta_gradient: bool = False
    """Also compute grad L_val on the validation demonstrations and its dot products with grad L_SFT and grad L_RL."""
    reset_reference: bool = False
    """After this step's update, make the current policy the frozen KL reference (SASR's post-warm-up reference)."""
    lr_scale: float = 1.0
    """Factor on this step's learning rate (the SFT warm-up's `blending.sft.warmup_lr`; objectives' own factors multiply it)."""
    metrics: Metrics = field(default_factory=dict)
    """The controller's metrics of the decision."""

    @classmethod
    def rl_only(cls, num_groups: int, **extra: Any) -> BlendPlan:
        return cls("rl", list(range(num_groups)), [], rl_weight=1.0, sft_weight=0.0, **extra)

    @classmethod
    def sft_only(cls, num_groups: int, **extra: Any) -> BlendPlan:
        return cls("sft", [], list(range(num_groups)), rl_weight=0.0, sft_weight=1.0, **extra)

    @property
    def trains_rl(self) -> bool:
        """Whether the RL loss is computed and back-propagated this step."""
        return bool(self.rl_groups) and (self.defer_weights or self.rl_weight != 0)

    @property
    def trains_sft(self) -> bool:
        """Whether the SFT loss is computed and back-propagated this step."""
        return bool(self.sft_groups) and (self.defer_weights or self.sft_weight != 0)


@dataclass
class BlendProbe:
    """What the learner measured during one blended step (None: not computed this step)."""

    lr: float
    """Learning rate applied at this step."""
    rl_loss: float | None = None
    """Unweighted RL loss (the objective's step loss on the RL rows)."""
    sft_loss: float | None = None
    """Unweighted SFT loss."""
    rl_entropy: float | None = None
    """Mean token entropy of the policy on the RL rollouts (before the update)."""
    sft_entropy: float | None = None
    """Mean token entropy of the policy on the demonstrations (before the update)."""
    kl: float | None = None
    """KL-to-reference loss term of the RL part, when the objective has one (`actor/kl_loss`)."""
    val_loss: float | None = None
    """NLL of the validation demonstrations (meta-gradient steps)."""
    val_dot_sft: float | None = None
    """<grad L_val, grad L_SFT> (meta-gradient steps)."""
    val_dot_rl: float | None = None
    """<grad L_val, grad L_RL> (meta-gradient steps)."""
    rl_weight: float = 0.0
    """w_rl applied (0 when the RL loss was not back-propagated)."""
    sft_weight: float = 0.0
    """w_sft applied (0 when the SFT loss was not back-propagated)."""
    grad_norm: float = math.nan
    """Global gradient norm of the step loss before clipping (after the optimizer step)."""


# --------------------------------------------------------------------------------------------
# the controller


class BlendController:
    """Base class. Subclasses implement `plan`, and `decide` if they defer weights."""

    name: str = ""
    holds_out_validation: bool = False
    """Whether `split_validation` keeps training rows aside for a validation loss (AMFT)."""
    combines_gradients: bool = False
    """Whether its plans defer their weights (the learner then rewrites gradients: torch backend or DeepSpeed stage 0)."""

    def __init__(self, config: Any, seed: int):
        """`config`: the whole `blending` section (`rlpost.config.blending.BlendingConfig`)."""
        self.config = config
        self.seed = seed

    def split_validation(self, prompts: list[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
        """(training prompts, held-out validation prompts). Default: nothing held out."""
        return prompts, []

    def plan(self, stats: StepStats) -> BlendPlan:
        raise NotImplementedError

    def decide(self, probe: BlendProbe) -> tuple[float, float]:
        """(w_rl, w_sft) of a plan with `defer_weights`, from what the learner measured."""
        raise NotImplementedError(f"{self.name}: plans that defer their weights need decide()")

    def rl_targets(self, batch: Any, targets: Any) -> Any:
        """The RL side's targets (`PolicyTargets` of `batch`: a `TrainBatch`), reshaped by the controller
        (SASR's median split). Default: unchanged."""
        del batch
        return targets

    def observe(self, probe: BlendProbe) -> Metrics:
        """Update the state after the optimizer step; the controller's metrics."""
        del probe
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    @property
    def reference_was_reset(self) -> bool:
        """True once a plan with `reset_reference` ran: the KL reference must then be checkpointed."""
        return False
