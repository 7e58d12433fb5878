"""Settings of the distributed runtime (Ray actors, placement, async off-policy training)."""

from __future__ import annotations

from typing import Literal

from rlpost.config.base import Section


class ClusterConfig(Section):
    runtime: Literal["local", "ray"] = "local"
    """`local`: everything in this process. `ray`: rollout workers, learner ranks and reward workers as Ray actors."""
