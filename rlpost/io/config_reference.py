"""The config explained from the schema itself: `rlpost config fields` (every field with its type, default
and docstring, as text or as the Markdown of docs/config.md) and `rlpost config show`'s marks on the
values that differ from the defaults.

The walk goes over the real pydantic models, so the sub-sections that objectives, samplers and
blending controllers register (`rlpost.config.plugins`) are listed like any other.
"""

from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import dataclass
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel

from rlpost.config.errors import ConfigError
from rlpost.config.schema import RLPostConfig
from rlpost.registry import closest

FORMATS = ("text", "markdown")


@dataclass(frozen=True)
class FieldRow:
    """One documented setting."""

    key: str
    """Dotted key; `[]` marks the items of a list of sections (`reward.functions[].name`)."""
    type: str
    """The annotation, readable, with its bounds (`int, >= 1`)."""
    default: str
    """The default as YAML, or `required`."""
    doc: str
    """The field's docstring, on one line."""


def section_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section class of a field (and whether it is a list of them), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    return None, False


def sections(model: type[BaseModel] = RLPostConfig, prefix: str = "", doc: str = "") -> dict[str, tuple[type[BaseModel], str]]:
    """Every section by dotted key (the root is ''), with its description."""
    found = {prefix: (model, doc)}
    for name, info in model.model_fields.items():
        inner, many = section_model(info.annotation)
        if inner is not None:
            key = (f"{prefix}.{name}" if prefix else name) + ("[]" if many else "")
            found.update(sections(inner, key, _one_line(info.description)))
    return found


def field_rows(model: type[BaseModel], prefix: str) -> list[FieldRow]:
    """The plain-value fields of one section (its sub-sections have rows of their own)."""
    rows = []
    for name, info in model.model_fields.items():
        if section_model(info.annotation)[0] is not None:
            continue
        default = "required" if info.is_required() else _yaml(info.get_default(call_default_factory=True))
        key = f"{prefix}.{name}" if prefix else name
        rows.append(FieldRow(key, _type_name(info.annotation, info.metadata), default, _one_line(info.description)))
    return rows


def selected_sections(section: str | None) -> list[str]:
    """The section keys under `section` (all when None); an unknown name names the closest one."""
    known = sections()
    if section is None:
        return [key for key in known if key]
    chosen = [key for key in known if key == section or key.startswith(f"{section}.")]
    if not chosen:
        names = [key for key in known if key]
        raise ConfigError(f"config fields: no section {section!r}{closest(section, names)}; sections: {', '.join(names)}")
    return chosen


def render_fields(section: str | None = None, fmt: str = "text") -> str:
    """`rlpost config fields [SECTION] [--format markdown]`."""
    if fmt not in FORMATS:
        raise ConfigError(f"config fields --format {fmt!r}: use one of {', '.join(FORMATS)}")
    known = sections()
    render = _markdown_section if fmt == "markdown" else _text_section
    parts = [render(key, known[key][1], field_rows(known[key][0], key)) for key in selected_sections(section)]
    header = MARKDOWN_HEADER if fmt == "markdown" and section is None else ""
    return header + "\n".join(part for part in parts if part)


MARKDOWN_HEADER = """# Configuration reference

Every setting of an rlpost config, generated from the schema (`rlpost/config/schema.py` and the
sections the plug-ins register) by `rlpost config fields --format markdown > docs/config.md`;
`tests/test_config_docs.py` checks that it is current. `rlpost config fields SECTION` prints one
section in the terminal; `rlpost config show CONFIG` marks the values that differ from the defaults.

"""


def _text_section(key: str, doc: str, rows: list[FieldRow]) -> str:
    if not rows:
        return ""
    lines = [f"[{key}]" + (f"  {doc}" if doc else "")]
    for row in rows:
        lines.append(f"  {row.key.rsplit('.', 1)[-1]}: {row.type} = {row.default}")
        if row.doc:
            lines.append(f"      {row.doc}")
    return "\n".join(lines) + "\n"


def _markdown_section(key: str, doc: str, rows: list[FieldRow]) -> str:
    if not rows:
        return ""
    lines = [f"## `{key}`", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = [f"`{row.key}`", _cell(row.type), f"`{row.default}`" if row.default != "required" else "required",
                 _cell(row.doc)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _yaml(value: Any) -> str:
    """A value as one line of flow-style YAML (`null`, `[a, b]`, `{name: x}`)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value)  # one line: a JSON string is a double-quoted YAML string
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).strip()
    return text.removesuffix("...").strip()


BOUNDS = {annotated_types.Ge: ("ge", ">="), annotated_types.Gt: ("gt", ">"), annotated_types.Le: ("le", "<="),
          annotated_types.Lt: ("lt", "<")}
"""pydantic's `Field(ge=...)` bounds: the attribute holding the value, and how it reads."""


def _type_name(annotation: Any, metadata: list[Any]) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        name = annotation.__name__
    else:
        name = re.sub(r"\btyping\.|\bNoneType\b", lambda m: "" if m.group(0) == "typing." else "None", repr(annotation))
        name = name.replace("<class '", "").replace("'>", "")
    bounds = [f"{symbol} {getattr(item, attr)}" for item in metadata
              for kind, (attr, symbol) in BOUNDS.items() if isinstance(item, kind)]
    return ", ".join([name, *bounds])


# ---- `rlpost config show`: values that differ from the defaults


def default_tree(config: RLPostConfig) -> dict[str, Any]:
    """The defaults to compare `config` with: a section that picks a plug-in by `name` (objective,
    sampler, blending) is compared with that plug-in's defaults (`name: dapo` brings clip_high 0.28)."""
    tree = RLPostConfig().model_dump(mode="json")
    for key in type(config).model_fields:
        section = getattr(config, key)
        if isinstance(section, BaseModel) and "name" in type(section).model_fields:
            chosen = type(section).model_validate({"name": section.name}).model_dump(mode="json")
            tree[key] = {**chosen, "name": tree[key]["name"]}
    return tree


def annotated_yaml(config: RLPostConfig) -> str:
    """The config as YAML, each value that differs from its default followed by `# default: ...`."""
    return "".join(_annotated(config.model_dump(mode="json"), default_tree(config), 0))


def _annotated(values: dict[str, Any], defaults: Any, depth: int) -> list[str]:
    lines = []
    indent = "  " * depth
    for key, value in values.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:\n")
            lines += _annotated(value, default, depth + 1)
            continue
        mark = "" if value == default else f"  # default: {_yaml(default)}"
        lines.append(f"{indent}{key}: {_yaml(value)}{mark}\n")
    return lines


