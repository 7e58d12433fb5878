"""The training loop: one program for every runtime (`rlpost.loop.run.TrainingRun`)."""

from rlpost.loop.run import RunHooks, TrainingRun

__all__ = ["RunHooks", "TrainingRun", "train"]


def train(config) -> dict[str, float]:
    """Train `config` on the runtime its `cluster.runtime` names; returns the last step's metrics."""
    return TrainingRun(config).fit()
