"""Load a YAML config, apply dotted command-line overrides, validate into `RLPostConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlpost.config.errors import ConfigError, format_validation_error
from rlpost.config.schema import RLPostConfig

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def parse_override(override: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], parsed value). Values are parsed as YAML scalars/lists."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, list):
            index = _list_index(node, part, path[: depth + 1])
            node = node[index]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, where: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override key {'.'.join(where)!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RLPostConfig:
    """The validated config of `path` (default: the quickstart) with `overrides` applied."""
    source = Path(path) if path is not None else QUICKSTART
    tree = read_yaml(source)
    for override in overrides:
        keys, value = parse_override(override)
        apply_override(tree, keys, value)
    try:
        return RLPostConfig.model_validate(tree)
    except ValidationError as exc:
        raise format_validation_error(RLPostConfig, exc, str(source)) from None


def dump_config(config: RLPostConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
