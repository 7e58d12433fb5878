"""Objective registry: name -> "module:Class". Torch-free so the config can validate names.

Adding an objective: write `rlpost/objectives/<name>.py` with a class implementing
`rlpost.objectives.base.Objective`, add one line here, and add its tests.
"""

from __future__ import annotations

import importlib

_OBJECTIVES: dict[str, str] = {
    "grpo": "rlpost.objectives.grpo:GRPO",
    "dr_grpo": "rlpost.objectives.dr_grpo:DrGRPO",
    "dapo": "rlpost.objectives.dapo:DAPO",
    "gspo": "rlpost.objectives.gspo:GSPO",
    "bnpo": "rlpost.objectives.bnpo:BNPO",
    "gtpo": "rlpost.objectives.gtpo:GTPO",
    "vcpo": "rlpost.objectives.vcpo:VCPO",
}


def objective_names() -> list[str]:
    return list(_OBJECTIVES)


def get_objective(name: str) -> type:
    """The objective class registered under `name`."""
    try:
        target = _OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {', '.join(sorted(_OBJECTIVES))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
