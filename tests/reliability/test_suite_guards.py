"""The suite guards itself: every test has a hang guard (pytest-timeout), every subprocess a test of this folder
starts has a timeout, and CI fails when the optional stack does not import instead of skipping its tests."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

import pytest

from tests.reliability.runs import REPO, SUBPROCESS_TIMEOUT

CHECK_STACK = REPO / "scripts" / "check_stack.py"


def test_every_test_has_a_hang_guard(request: pytest.FixtureRequest):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is installed (scripts/install.sh)"
    assert float(request.config.getini("timeout")) >= 600
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(dep.startswith("pytest-timeout") for dep in project["project"]["optional-dependencies"]["test"])
    pins = (REPO / "scripts" / "constraints-cpu.txt").read_text().split()
    assert any(pin.startswith("pytest-timeout==") for pin in pins)


def _waits_without_timeout(path) -> list[str]:
    """`subprocess.run(...)` and `.communicate(...)` calls without a timeout; collecting a process on the line
    after killing it needs none."""
    lines = path.read_text().splitlines()
    missing = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        waits = node.func.attr == "communicate" or (node.func.attr == "run" and ast.unparse(node.func.value) == "subprocess")
        after_kill = node.lineno >= 2 and lines[node.lineno - 2].strip().endswith(".kill()")
        if waits and not after_kill and not any(keyword.arg == "timeout" for keyword in node.keywords):
            missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return missing


def test_every_subprocess_started_here_has_a_timeout():
    sources = [*(REPO / "tests" / "reliability").glob("*.py"), *(REPO / "tests" / "io").glob("*.py")]
    assert len(sources) > 10
    assert [place for path in sources for place in _waits_without_timeout(path)] == []


def test_ci_fails_when_the_optional_stack_does_not_import():
    assert "python scripts/check_stack.py" in (REPO / "scripts" / "test.sh").read_text().split("python -m pytest")[0]
    # Each package made unimportable (None in sys.modules): the check names every one and fails.
    code = (
        "import runpy, sys\n"
        "for name in ('vllm', 'ray', 'deepspeed', 'triton', 'pytest_timeout'):\n"
        "    sys.modules[name] = None\n"
        f"runpy.run_path({str(CHECK_STACK)!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "error: the test stack does not import, so its tests would be skipped:"
    assert "  triton: ModuleNotFoundError: import of triton halted; None in sys.modules" in result.stderr.splitlines()
