"""Fail when a package of the CI stack does not import: without this, a broken vllm, ray, deepspeed or
triton turns its tests into skips (pytest.importorskip) and CI passes without running them."""

from __future__ import annotations

import importlib
import sys

STACK = ("vllm", "ray", "deepspeed", "triton", "pytest_timeout")


def import_problem(name: str) -> str | None:
    """None when `name` imports, else its exception in one line."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure counts, whatever its type
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return None


def main() -> int:
    failed = [f"  {name}: {problem}" for name in STACK if (problem := import_problem(name))]
    if failed:
        print("error: the test stack does not import, so its tests would be skipped:", *failed, sep="\n", file=sys.stderr)
        return 1
    print(f"test stack imports: {', '.join(STACK)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
