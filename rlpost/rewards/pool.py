"""Reward worker processes that run calls in batches, with a deadline per call.

Why not a library pool (tried with a hanging call, a call that ignores SIGTERM, one that starts a
child process, and one that kills its worker): `concurrent.futures.ProcessPoolExecutor` and `loky`
time out only the wait (the hung worker keeps running and blocks the next call), and a dead worker
breaks the whole executor (every later call fails until a new one is made). `pebble.ProcessPool`
kills a timed-out worker (SIGTERM, SIGKILL ~3 s later) and replaces it, but not what the reward
started (a child process lives on), its workers are multiprocessing children (fork inherits the
trainer's threads and locks; spawn re-imports `__main__`), and a timeout or crash in a chunk of
calls (`map(chunksize=...)`) loses the whole chunk (pebble issue #132).

Here every worker is its own process group with its own socket. The parent sends a worker a chunk
of calls in one message and the worker answers each call as soon as it finishes, so the parent
always knows which call is running; that call's deadline runs from the previous answer (or the
dispatch), and is `timeout_seconds` per completion the call scores (a batched TRL-style call scores
a whole group). If the deadline passes, the worker is killed and each completion of the call scores
a timeout; if the worker dies, a crash. Either way a fresh worker takes the slot and the rest of
the chunk goes back to the queue.

Workers are fresh interpreters (`subprocess`, like the `spawn` start method: no torch threads or
locks inherited from the trainer) that, unlike `spawn`, do not re-import the parent's `__main__`
(which fails for `python -` and re-runs scripts that lack an `if __name__ == "__main__"` guard).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from rlpost.rewards.errors import RewardWorkerError
from rlpost.rewards.worker import FAILURE_KINDS, Outcome, Task, WorkerReward

__all__ = ["FAILURE_KINDS", "Outcome", "Task", "WorkerPool", "WorkerReward"]

_STARTUP_SECONDS = 300.0
"""Longest a worker may take to import and warm up its rewards (sympy on a busy CPU is slow)."""
_CHUNKS_PER_WORKER = 2
"""Chunks per worker and batch: a little load balancing for few round-trips."""
_WORKER_COMMAND = "from rlpost.rewards.worker import main; main()"


@dataclass
class _Worker:
    """One worker process and the calls it was sent but has not answered yet, in order."""

    process: subprocess.Popen
    conn: Connection
    started: float
    ready: bool = False
    pending: deque[int] = field(default_factory=deque)
    deadline: float = math.inf

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float) -> None:
        """Ask the worker to exit, kill it after `grace` seconds, and release the socket."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        """Kill the worker and anything its reward started (the worker leads its own process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.process.kill()
        self.process.wait()


class WorkerPool:
    """`num_workers` reward processes, reused across `run` calls, replaced when they hang or die."""

    def __init__(self, rewards: list[WorkerReward], num_workers: int, timeout_seconds: float) -> None:
        self._rewards = rewards
        self._timeout = timeout_seconds
        self._workers: list[_Worker] = []
        self.restarts = 0
        """Workers replaced so far (after a timeout or a crash)."""
        for _ in range(num_workers):
            self._workers.append(self._start())

    def _start(self) -> _Worker:
        ours, theirs = socket.socketpair()
        # The child gets the parent's import path, so it finds rlpost and the modules the rewards need.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path or os.getcwd() for path in sys.path)}
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a process group of its own: killing it also ends what a reward spawned
        )
        theirs.close()  # only the child holds its end now, so its death shows here as end of file
        conn = Connection(ours.detach())
        conn.send(self._rewards)
        return _Worker(process=process, conn=conn, started=time.monotonic())

    def run(self, tasks: Sequence[Task]) -> list[list[Outcome]]:
        """Per task, in order, one outcome per completion of the task. A bad reward call never raises
        here; RewardWorkerError means a worker could not start at all."""
        results: list[list[Outcome] | None] = [None] * len(tasks)
        queue: deque[list[int]] = deque(_chunks(len(tasks), len(self._workers) * _CHUNKS_PER_WORKER))
        try:
            while queue or any(worker.pending for worker in self._workers):
                self._dispatch(queue, tasks)
                self._wait()
                for slot in range(len(self._workers)):
                    self._collect(slot, tasks, results, queue)
        except BaseException:
            # Interrupted mid-batch (Ctrl-C, a start-up failure): busy workers would answer into the next batch.
            for slot, worker in enumerate(self._workers):
                if worker.pending:
                    self._replace(slot)
            raise
        assert all(result is not None for result in results), "every task gets an outcome"
        return results  # type: ignore[return-value]

    def _dispatch(self, queue: deque[list[int]], tasks: Sequence[Task]) -> None:
        for slot, worker in enumerate(self._workers):
            if not (worker.ready and not worker.pending and queue):
                continue
            chunk = queue.popleft()
            try:
                # One message per chunk: pickle stores a row or prompt shared by several calls only once.
                worker.conn.send([tasks[index] for index in chunk])
            except OSError:  # the worker died while idle: nothing of this chunk ran
                queue.appendleft(chunk)
                self._replace(slot)
                continue
            worker.pending.extend(chunk)
            worker.deadline = time.monotonic() + self._limit(tasks[chunk[0]])

    def _wait(self) -> None:
        """Block until a worker answers or dies, or the nearest deadline passes."""
        deadlines = [
            worker.deadline if worker.ready else worker.started + _STARTUP_SECONDS
            for worker in self._workers
            if worker.pending or not worker.ready
        ]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        wait([worker.conn for worker in self._workers], timeout)

    def _limit(self, task: Task) -> float:
        """Seconds a call may run: the per-call timeout for each completion it scores."""
        return self._timeout * max(1, len(task[2]))

    def _collect(
        self, slot: int, tasks: Sequence[Task], results: list[list[Outcome] | None], queue: deque[list[int]]
    ) -> None:
        """Read what worker `slot` answered, then deal with its death, its deadline or its start-up."""
        worker = self._workers[slot]
        connected = True
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if worker.ready:
                    results[worker.pending.popleft()] = message
                    if worker.pending:
                        worker.deadline = time.monotonic() + self._limit(tasks[worker.pending[0]])
                else:
                    _check_startup(message)
                    worker.ready = True
        except (EOFError, OSError):
            connected = False
        alive = connected and worker.alive()
        if not worker.ready:
            if not alive:
                raise RewardWorkerError(f"a reward worker exited during start-up ({_exit_detail(worker)})")
            if time.monotonic() > worker.started + _STARTUP_SECONDS:
                raise RewardWorkerError(f"a reward worker did not start within {_STARTUP_SECONDS:.0f} s")
        elif not alive:
            self._fail_current(slot, tasks, results, queue, Outcome("crash", math.nan, _exit_detail(worker)))
        elif worker.pending and time.monotonic() >= worker.deadline:
            limit = self._limit(tasks[worker.pending[0]])
            timeout = Outcome("timeout", math.nan, f"no result within {limit:g} s")
            self._fail_current(slot, tasks, results, queue, timeout)

    def _fail_current(
        self, slot: int, tasks: Sequence[Task], results: list[list[Outcome] | None], queue: deque[list[int]],
        outcome: Outcome,
    ) -> None:
        """Score each completion of the call the worker was running, requeue the rest of its chunk, and
        replace the worker."""
        worker = self._workers[slot]
        if worker.pending:
            index = worker.pending.popleft()
            results[index] = [outcome] * len(tasks[index][2])
        if worker.pending:
            queue.appendleft(list(worker.pending))
        self._replace(slot)

    def _replace(self, slot: int) -> None:
        worker = self._workers[slot]
        worker.kill()
        worker.conn.close()
        self._workers[slot] = self._start()
        self.restarts += 1

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop(grace=0.0 if worker.pending else 2.0)


def _check_startup(message: tuple[str, str]) -> None:
    kind, detail = message
    if kind == "init_error":
        raise RewardWorkerError(f"a reward worker could not load its reward functions:\n{detail}")


def _chunks(count: int, pieces: int) -> list[list[int]]:
    """Indices 0..count-1 in about `pieces` contiguous chunks."""
    size = max(1, math.ceil(count / pieces))
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def _exit_detail(worker: _Worker) -> str:
    code = worker.process.poll()
    if code is None:
        return "its connection closed"
    if code < 0:
        try:
            return f"the worker process was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"the worker process exited with code {code}"
