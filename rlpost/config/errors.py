"""Config errors that name the key, the value and what is allowed."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from rlpost.registry import closest


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


def _model_at(root: type[BaseModel], location: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `location` (without the last element)."""
    model: type[BaseModel] | None = root
    for part in location[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            model = inner[0]  # list[Section] / Section | None
        else:
            model = None
    return model


def _describe(root: type[BaseModel], error: dict) -> str:
    location = tuple(error["loc"])
    key = ".".join(str(part) for part in location) or "<root>"
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(root, location)
        valid = list(owner.model_fields) if owner else []
        section = ".".join(str(p) for p in location[:-1]) or "top level"
        return f"unknown key {key!r}{closest(str(location[-1]), valid)}; valid keys in {section}: {', '.join(valid)}"
    value = error.get("input")
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if not location:
        return message
    if kind == "missing":
        return f"missing required key {key!r}"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"{key} = {value!r} is not allowed; expected {allowed}"
    return f"{key} = {value!r}: {message}"


def format_validation_error(root: type[BaseModel], exc: ValidationError, source: str) -> ConfigError:
    """One ConfigError listing every problem of a failed validation (on one line when there is one)."""
    lines = [_describe(root, error) for error in exc.errors()]
    header = f"invalid config ({source})"
    if len(lines) == 1:
        return ConfigError(f"{header}: {lines[0]}")
    return ConfigError("\n".join([f"{header}:"] + [f"  - {line}" for line in lines]))
