"""Cross-section settings a run needs, checked before anything loads (each message names the key)."""

from __future__ import annotations

from rlpost.config.errors import ConfigError
from rlpost.config.schema import RLPostConfig

ROUTES_BY_SUCCESS = frozenset({"hpt"})
"""Blending controllers that send a question to SFT by how its rollouts scored. DAPO's dynamic sampling
drops the groups whose rollouts all score alike before the controller sees them, which removes exactly
the all-wrong groups these controllers train with SFT. SASR (a coin flip per step on gradient norms)
and AMFT (every group in both losses) do not route by score, so the filter does not empty a branch."""


def check_config(config: RLPostConfig) -> None:
    """Refuse combinations no runtime can run, and the few one runtime cannot."""
    cluster = config.cluster
    if cluster.learner_ranks > 1 and config.learner.backend != "deepspeed":
        raise ConfigError("cluster.learner_ranks > 1 needs learner.backend: deepspeed")
    if cluster.learner_ranks > config.train.prompts_per_step * config.rollout.n:
        raise ConfigError("cluster.learner_ranks exceeds the sequences per step (train.prompts_per_step x rollout.n)")
    if config.blending.name != "none" and cluster.learner_ranks > 1:
        raise ConfigError(
            f"blending.name={config.blending.name!r} needs cluster.learner_ranks: 1 "
            "(a blended step's SFT and validation batches are not sharded over learner ranks)"
        )
    check_blending_filter(config)


def check_blending_filter(config: RLPostConfig) -> None:
    """Refuse a controller that routes failed questions to SFT under DAPO's dynamic sampling."""
    filtering = config.objective.name == "dapo" and config.objective.dapo.filter_groups
    if filtering and config.blending.name in ROUTES_BY_SUCCESS:
        raise ConfigError(
            f"blending.name={config.blending.name!r} cannot run with objective.dapo.filter_groups: true: dynamic "
            "sampling drops every group whose rollouts all fail before blending routes it, and those never-solved "
            f"questions are the ones {config.blending.name} sends to SFT (with gate 0 its SFT branch never runs); "
            "set objective.dapo.filter_groups: false"
        )
