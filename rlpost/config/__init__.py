"""Typed configuration: schema, YAML loading, dotted overrides and errors that name the key."""

from rlpost.config.errors import ConfigError
from rlpost.config.loader import dump_config, load_config
from rlpost.config.schema import RLPostConfig

__all__ = ["ConfigError", "RLPostConfig", "dump_config", "load_config"]
