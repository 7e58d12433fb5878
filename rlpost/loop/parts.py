"""The parts of a run the loop holds itself, built the same way on every runtime: model path,
tokenizer, prompts, sampler, the objective that computes advantages, the blending controller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlpost.blending import build_controller
from rlpost.blending.demos import Demonstrations
from rlpost.blending.runner import plan_blend
from rlpost.config.schema import RLPostConfig
from rlpost.data import build_prompts, build_training_prompts, load_rows
from rlpost.loop.setup import load_tokenizer, pad_token_id
from rlpost.loop.warmup import SftWarmup, build_warmup
from rlpost.models import resolve_model
from rlpost.objectives.luffy import attach_guidance
from rlpost.objectives.registry import get_objective
from rlpost.runtime.executor import LearnerRequest
from rlpost.samplers import build_sampler
from rlpost.types import Prompt


@dataclass
class RunParts:
    model_path: str
    tokenizer: Any
    pad_token_id: int
    train_prompts: list[Prompt]
    test_prompts: list[Prompt]
    objective: Any
    """Computes advantages and filters groups (the learner holds its own instance for the loss)."""
    sampler: Any = None
    blender: Any = None
    demos: Demonstrations | None = None
    validation_prompts: list[Prompt] = field(default_factory=list)
    warmup: SftWarmup | None = None
    """SFT steps before the first rollout (`blending.sft.warmup_steps`), or None."""

    def blend_request(self, step: int, groups, batch, targets) -> tuple[LearnerRequest, dict[str, float]]:
        """The blended optimizer step of batch `step` and the plan's metrics."""
        rl_batch, rl_targets, update = plan_blend(
            self.blender, self.objective, self.demos, step, groups, batch, targets, self.validation_prompts
        )
        return LearnerRequest(step, rl_batch, rl_targets, blend=update), dict(update.plan.metrics)

    def state_dict(self) -> dict[str, Any]:
        state = {"objective": self.objective.state_dict(), "sampler": self.sampler.state_dict()}
        if self.blender is not None:
            state["blending"] = self.blender.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.objective.load_state_dict(state["objective"])
        if self.blender is not None:
            self.blender.load_state_dict(state["blending"])


def build_parts(config: RLPostConfig) -> RunParts:
    model_path = resolve_model(config.model.path)
    tokenizer = load_tokenizer(model_path)
    train_rows = load_rows(config.data.train, config.data.split, data_config=config.data)
    test_prompts = []
    if config.data.test:
        test_rows = load_rows(config.data.test, config.data.test_split, data_config=config.data)
        test_prompts = build_prompts(test_rows, tokenizer, config.data).prompts
    parts = RunParts(
        model_path=model_path,
        tokenizer=tokenizer,
        pad_token_id=pad_token_id(tokenizer),
        train_prompts=build_training_prompts(train_rows, tokenizer, config.data).prompts,
        test_prompts=test_prompts,
        objective=get_objective(config.objective.name)(config.objective, config.rollout.max_new_tokens),
    )
    _add_blending(parts, config)
    parts.warmup = build_warmup(config, parts.train_prompts, parts.demos)
    attach_guidance(parts)  # LUFFY's demonstrations join its groups; other objectives are left alone
    parts.sampler = build_sampler(
        config.sampler, parts.train_prompts, prompts_per_step=config.train.prompts_per_step,
        default_n=config.rollout.n, seed=config.train.seed,
    )
    return parts


def _add_blending(parts: RunParts, config: RLPostConfig) -> None:
    """The blending controller, its held-out validation prompts and the demonstration builder (also
    built for an SFT warm-up without a controller)."""
    parts.blender = build_controller(config.blending, seed=config.train.seed)
    if parts.blender is None and config.blending.sft.warmup_steps == 0:
        return
    eos = parts.tokenizer.eos_token_id
    if eos is None:
        raise ValueError("SFT demonstrations end with the end-of-sequence token: the tokenizer has none")
    if parts.blender is not None:
        parts.train_prompts, parts.validation_prompts = parts.blender.split_validation(parts.train_prompts)
    parts.demos = Demonstrations(parts.tokenizer, eos, parts.pad_token_id, config.blending.sft.max_demo_tokens)
    parts.demos.check(parts.train_prompts + parts.validation_prompts)
