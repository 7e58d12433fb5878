"""Safety: weights and checkpoints are read without unpickling (safetensors, `torch.load(weights_only=True)`),
and what rlpost starts by default listens on loopback only."""

from __future__ import annotations

import ast
import ipaddress
import re
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from rlpost.config.schema import RLPostConfig
from tests.conftest import fresh_process_environment
from tests.listening import listening_addresses, non_loopback
from tests.reliability.runs import REPO, SUBPROCESS_TIMEOUT

SOURCES = sorted((REPO / "rlpost").rglob("*.py"))

# Calls and imports that unpickle (run code from) a file or a byte string.
UNPICKLERS = {
    f"{module}.{name}"
    for module in ("pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve")
    for name in ("load", "loads", "Unpickler", "open")
} | {"pandas.read_pickle", "pd.read_pickle", "torch.serialization.load"}

TRUSTED_UNPICKLES = {"rlpost/api.py: pickle.loads"}
"""The one unpickling call allowed, with its reason (docs/reliability.md, "Safety"): a reward function
passed to `rlpost.train` as a Python object is pickled by value (cloudpickle) by the trainer itself,
sent to the reward workers that trainer started over their socket pair, and rebuilt there: the same
bytes, from the same process, as every other message of that pipe, which multiprocessing unpickles."""


def _dotted(node: ast.expr) -> str:
    """`a.b.c` for a name or attribute chain, '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def _nodes() -> Iterator[tuple[str, ast.AST]]:
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            yield f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}", node


def test_every_torch_load_is_weights_only():
    loads = [(where, node) for where, node in _nodes() if isinstance(node, ast.Call) and _dotted(node.func) == "torch.load"]
    assert loads, "the scan must see the optimizer-state load of the learner"
    assert [where for where, call in loads if not _keyword_is_true(call, "weights_only")] == []


def test_nothing_unpickles():
    offenders = []
    for where, node in _nodes():
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in UNPICKLERS or (name in ("np.load", "numpy.load") and _keyword_is_true(node, "allow_pickle")):
                offenders.append(f"{where}: {name}")
        elif isinstance(node, ast.ImportFrom):
            offenders += [f"{where}: from {node.module} import {a.name}" for a in node.names if f"{node.module}.{a.name}" in UNPICKLERS]
    assert [found for found in offenders if re.sub(r":\d+:", ":", found) not in TRUSTED_UNPICKLES] == []


def test_defaults_trust_no_remote_code_and_open_no_public_port():
    config = RLPostConfig()
    assert config.model.trust_remote_code is False
    assert config.cluster.dashboard is False
    assert ipaddress.ip_address(config.cluster.dashboard_host).is_loopback
    assert ipaddress.ip_address(config.cluster.bind_host).is_loopback


# ---------------------------------------------------------------- listening sockets of real processes


def listening_while(setup: str) -> set[str]:
    """Listening addresses of a Python process (and its children) that ran `setup` and now waits."""
    script = textwrap.dedent(setup) + "\nprint('ready', flush=True)\nsys.stdin.read()\n"
    child = subprocess.Popen([sys.executable, "-c", "import sys\n" + script], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=fresh_process_environment(PYTHONPATH=str(REPO)))
    try:
        # A hang guard (the child starts in seconds), not a speed limit.
        ready, _, _ = select.select([child.stdout], [], [], SUBPROCESS_TIMEOUT)
        assert ready, f"the child did not start within {SUBPROCESS_TIMEOUT} s"
        assert child.stdout.readline().strip() == "ready"
        return listening_addresses(child.pid)
    finally:
        try:
            child.communicate("", timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()


def test_local_learner_process_group_listens_on_loopback_only():
    addresses = listening_while("from rlpost.learner.distributed import ensure_process_group\nensure_process_group()")
    assert addresses, "torch.distributed's store listens somewhere"
    assert non_loopback(addresses) == set()


@pytest.mark.slow
@pytest.mark.ray
def test_local_ray_instance_listens_on_loopback_only():
    pytest.importorskip("ray")
    addresses = listening_while(
        """
        import os
        import ray
        from rlpost.config.cluster import ClusterConfig
        from rlpost.runtime.placement import RAY_CLUSTER_SWITCH, connect
        connect(ClusterConfig(runtime="ray", num_cpus=1))
        assert ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote()) == "127.0.0.1"  # a worker runs
        assert RAY_CLUSTER_SWITCH not in os.environ, "the loopback switch is restored once Ray has started"
        """
    )
    assert addresses, "Ray's processes listen somewhere"
    assert non_loopback(addresses) == set()
