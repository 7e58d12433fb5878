"""Registries of plug-ins: objectives, prompt samplers, blending controllers, reward functions.

A plug-in is one module that registers itself with a decorator:

    OBJECTIVES = Registry("objective", package="rlpost.objectives")

    @OBJECTIVES.register("rloo", config=RlooConfig, defaults={"normalize_adv_by_std": False})
    class RLOO(GRPO): ...

The registry imports every public module of its package the first time a name is looked up, so
adding a method is adding its file: nothing else lists it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def closest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class UnknownPluginError(KeyError):
    """A name no plug-in of that kind is registered under; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plug-in."""

    name: str
    target: T
    """The registered class or function."""
    config: type | None = None
    """Its config section (a `rlpost.config.base.Section`), or None when it has no knobs of its own."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Values of shared knobs that this method sets when the user's config leaves them unset."""
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    """Flags other components consult (e.g. `corrects_off_policy`), declared beside the code."""


class Registry(Generic[T]):
    """Name -> plug-in, filled by the `register` decorator of the plug-ins' own modules."""

    def __init__(self, kind: str, package: str | None = None, capabilities: Iterable[str] | None = None):
        """`capabilities`, when given, are the only capability flags `register` accepts (a typo in a flag
        would otherwise read as "not capable" everywhere it is consulted)."""
        self.kind = kind
        self.package = package
        self.capabilities = None if capabilities is None else frozenset(capabilities)
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = package is None

    def register(
        self, name: str, *, config: type | None = None, defaults: Mapping[str, Any] | None = None, **capabilities: Any
    ) -> Callable[[T], T]:
        """Decorator: register the class or function under `name`."""

        unknown = sorted(set(capabilities) - self.capabilities) if self.capabilities is not None else []
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r}: unknown capabilities {', '.join(unknown)}; known: {', '.join(sorted(self.capabilities))}"
            )

        def decorate(target: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing.target is not target:
                raise ValueError(f"two {self.kind}s are registered as {name!r}: {existing.target!r} and {target!r}")
            self._entries[name] = Entry(name, target, config, dict(defaults or {}), dict(capabilities))
            return target

        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        self._discover()
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        self._discover()
        return list(self._entries.values())

    def entry(self, name: str) -> Entry[T]:
        """The entry registered under `name`; an unknown name names the closest registered one."""
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}{closest(name, known)}; registered: {', '.join(known)}"
            ) from None

    def get(self, name: str) -> T:
        """The class or function registered under `name`."""
        return self.entry(name).target

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries
