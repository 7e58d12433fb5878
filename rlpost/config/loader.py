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


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merge key by key, anything else (lists too) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of `path`, with `extends: other.yaml` (relative to the file) merged under it."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} extends itself (cycle: {' -> '.join(str(p) for p in (*_seen, path))})")
    tree = read_yaml(path)
    base = tree.pop("extends", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"config {path}: extends must be a file path, not {base!r}")
    return deep_merge(read_config_tree(path.parent / base, (*_seen, path)), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RLPostConfig:
    """The validated config of `path` (default: the quickstart) with `overrides` applied."""
    source = Path(path) if path is not None else QUICKSTART
    tree = read_config_tree(source)
    for override in overrides:
        keys, value = parse_override(override)
        apply_override(tree, keys, value)
    try:
        return RLPostConfig.model_validate(tree)
    except ValidationError as exc:
        raise format_validation_error(RLPostConfig, exc, str(source)) from None


def dump_config(config: RLPostConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
