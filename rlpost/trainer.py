"""The names earlier releases exported from here; the loop lives in `rlpost.loop`."""

from rlpost.loop.run import TrainingRun as Trainer
from rlpost.loop.setup import load_tokenizer

__all__ = ["Trainer", "load_tokenizer"]
