"""torch.distributed set-up for the learner: one process works as a group of one."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_process_group() -> None:
    """Join the process group named by the launcher's env vars, or form a group of one on loopback.

    gloo on the CPU, NCCL when CUDA is available.
    """
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_loopback_port()),
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (step normalisers must be global)."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()
