"""Typed configuration: schema, YAML loading, dotted overrides and errors that name the key.

The exports load on first use (module `__getattr__`): the schema is built from the plug-in
registries, which import every objective, sampler and controller module (and torch). Importing a
leaf such as `rlpost.config.base` must not build it, or a plug-in module importing `Section`
would start the schema while its own package is half-imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlpost.config.errors import ConfigError
    from rlpost.config.loader import dump_config, load_config
    from rlpost.config.schema import RLPostConfig

EXPORTS = {
    "ConfigError": "rlpost.config.errors",
    "RLPostConfig": "rlpost.config.schema",
    "dump_config": "rlpost.config.loader",
    "load_config": "rlpost.config.loader",
}
"""Exported name -> the module defining it."""

__all__ = ["ConfigError", "RLPostConfig", "dump_config", "load_config"]


def __getattr__(name: str) -> Any:
    if name in EXPORTS:
        return getattr(importlib.import_module(EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
