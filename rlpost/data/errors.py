"""The one error type of the data component."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be used as configured; the message names the source (and the row when one is at fault)."""
