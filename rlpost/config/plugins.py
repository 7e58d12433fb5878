"""Config sections assembled from a plug-in registry: `name` picks the plug-in, each plug-in's own
knobs sit in a sub-section named after it, declared beside its code (`Registry.register(config=...)`).

    SamplerConfig = with_plugin_sections(SamplerSettings, SAMPLERS, "SamplerConfig")

gives `SamplerSettings`' fields plus `vade: VadeConfig`, `knapsack: KnapsackConfig`, ... for every
registered sampler that has a config, so adding a plug-in never touches the config package.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from pydantic import Field, create_model

from rlpost.config.base import Section
from rlpost.registry import Registry, UnknownPluginError

S = TypeVar("S", bound=Section)


def known_plugin(name: str, registry: Registry[Any], *, also: tuple[str, ...] = ()) -> str:
    """`name` if it is registered (or one of `also`); else a ValueError naming the closest name."""
    if name in also:
        return name
    try:
        registry.entry(name)
    except UnknownPluginError as err:
        extra = f" (or {', '.join(also)})" if also else ""
        raise ValueError(f"{err}{extra}") from None
    return name


def summary(section: type) -> str:
    """First paragraph of a section's docstring, on one line (the sub-section field's description)."""
    doc = inspect.getdoc(section) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def plugin_fields(base: type[Section], registry: Registry[Any]) -> dict[str, Any]:
    """`<name>: <its config>` field definitions of every registered plug-in that has a config.

    Refuses what would make the schema silently wrong: a section named like a field of `base` (it
    would shadow it) and a section without a docstring (its field description).
    """
    fields: dict[str, Any] = {}
    for entry in registry.entries():
        if entry.config is None:
            continue
        if entry.name in base.model_fields:
            raise TypeError(f"{registry.kind} {entry.name!r}: its config section would shadow the field {entry.name!r}")
        if not summary(entry.config):
            raise TypeError(f"{registry.kind} {entry.name!r}: config section {entry.config.__name__} needs a docstring")
        description = f"Settings of the `{entry.name}` {registry.kind}: {summary(entry.config)}"
        fields[entry.name] = (entry.config, Field(default_factory=entry.config, description=description))
    return fields


def with_plugin_sections(base: type[S], registry: Registry[Any], model_name: str) -> type[S]:
    """`base` plus one sub-section per registered plug-in that has a config, defaults filled in."""
    # __module__ is the base's, so that a config pickles by reference (`rlpost.config.sampler.SamplerConfig`).
    return create_model(
        model_name, __base__=base, __module__=base.__module__, __doc__=base.__doc__, **plugin_fields(base, registry)
    )
