"""Errors of the rewards component."""

from __future__ import annotations


class RewardFunctionError(ValueError):
    """A configured reward function cannot be loaded or used; the message names the reward spec."""


class RewardWorkerError(RuntimeError):
    """The reward worker processes cannot start (a reward's module or warm-up fails inside a worker)."""
