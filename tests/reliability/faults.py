"""Fault injection for the reliability tests: run the `rlpost` CLI with one function made to fail on its Nth call.

    RLPOST_TEST_FAULT="rlpost.rollout.hf:HFEngine.generate@3:kill" python -m tests.reliability.faults train ...

A fault is `module:attribute.path@call:action`. The patch is applied here, in the launched process, before
the command runs: production code has no fault hooks. Patch the name where it is looked up (a function
imported with `from x import f` must be patched in the importing module). Actions, run on entry of the
Nth call (1-based):

- `kill`: SIGKILL this process: no handler, no `finally`, nothing flushed (a power cut, the OOM killer).
- `term`: SIGTERM this process (a scheduler's preemption), then the call proceeds.
- `raise`: `InjectedCrash` (a component that crashes).
- `enospc`: `OSError(ENOSPC)` (the disk is full).
"""

from __future__ import annotations

import errno
import functools
import importlib
import itertools
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

FAULT_ENV = "RLPOST_TEST_FAULT"


class InjectedCrash(RuntimeError):
    """The failure of a component crashed on purpose."""


def _raise_crash() -> None:
    raise InjectedCrash("injected crash")


def _raise_enospc() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


ACTIONS: dict[str, Callable[[], None]] = {
    "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "term": lambda: os.kill(os.getpid(), signal.SIGTERM),
    "raise": _raise_crash,
    "enospc": _raise_enospc,
}


@dataclass(frozen=True)
class Fault:
    target: str
    """`module:attribute.path` of the function to patch."""
    call: int
    """The call (1-based) on whose entry the action runs."""
    action: str
    """A key of ACTIONS."""

    @property
    def spec(self) -> str:
        return f"{self.target}@{self.call}:{self.action}"

    @classmethod
    def parse(cls, spec: str) -> Fault:
        target, _, rest = spec.partition("@")
        call, _, action = rest.partition(":")
        if ":" not in target or not call.isdigit() or action not in ACTIONS:
            raise ValueError(f"fault {spec!r} is not module:attribute.path@call:action with an action of {', '.join(ACTIONS)}")
        return cls(target, int(call), action)


def install(fault: Fault) -> None:
    """Replace the target by a wrapper that runs the action on entry of call number `fault.call`."""
    module_name, _, path = fault.target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = itertools.count(1)

    @functools.wraps(original)
    def faulty(*args, **kwargs):
        if next(calls) == fault.call:
            ACTIONS[fault.action]()
        return original(*args, **kwargs)

    setattr(owner, name, faulty)


def main(argv: list[str]) -> int:
    from rlpost.cli import main as cli_main  # first: it sets the environment torch reads on import

    spec = os.environ.get(FAULT_ENV)
    if spec:
        install(Fault.parse(spec))
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
