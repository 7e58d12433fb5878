"""A SIGKILLed trainer leaves no vLLM child processes behind (they hold gigabytes of KV cache)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
from rlpost.rollout.vllm import reap_children_when_parent_dies
reap_children_when_parent_dies()
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split()[2] != "Z"


def test_children_are_killed_when_the_parent_is_sigkilled():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(300):  # the watcher polls once a second; give it ample time on a loaded machine
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)
