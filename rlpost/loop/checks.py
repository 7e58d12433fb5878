"""Cross-section settings a run needs, checked before anything loads (each message names the key)."""

from __future__ import annotations

from rlpost.config.errors import ConfigError
from rlpost.config.schema import RLPostConfig


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
