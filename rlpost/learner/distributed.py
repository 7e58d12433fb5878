"""torch.distributed set-up for the learner (one process works as a group of one), and the
cross-rank reductions of its step values.

Ports bind to one address, loopback unless the caller passes another: a TCPStore alone listens
on every interface, so rank 0 serves it from a socket bound here (`listening_socket`), and gloo's
pair sockets go to the network interface that holds the address (`bind_gloo_to`).
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import socket
from typing import Any

import torch
import torch.distributed as dist

LOOPBACK = "127.0.0.1"
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=10)


def listening_socket(host: str) -> socket.socket:
    """A TCP socket listening on `host` at a free port; held until the store takes it over (no port race)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def _resolve(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(socket.gethostbyname(host) if ":" not in host else host)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine's loopback; False for names that do not resolve."""
    try:
        return _resolve(host).is_loopback
    except (OSError, ValueError):
        return False


def interface_of(host: str) -> str | None:
    """Name of the network interface holding the address `host` resolves to (None: no local interface)."""
    import psutil

    address = _resolve(host)
    for name, addresses in psutil.net_if_addrs().items():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6) and _same_address(entry.address, address):
                return name
    return None


def _same_address(text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text.split("%")[0]) == address
    except ValueError:
        return False


def bind_gloo_to(host: str) -> None:
    """Make gloo groups of this process listen on the interface of `host` (not the hostname's address).

    torch reads GLOO_SOCKET_IFNAME whenever it builds a gloo group; a value the user set wins.
    """
    interface = interface_of(host)
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)


def rendezvous_store(
    host: str, port: int, rank: int, world_size: int, listener: socket.socket | None = None,
    timeout: datetime.timedelta = RENDEZVOUS_TIMEOUT,
) -> dist.TCPStore:
    """The group's key-value store at host:port; rank 0 serves it on `listener` (bound to `host` only),
    which the store then owns."""
    if rank == 0 and listener is None:
        raise ValueError("rank 0 serves the store: pass the socket from listening_socket(host)")
    return dist.TCPStore(
        host, port, world_size, rank == 0, timeout=timeout, wait_for_workers=False,
        master_listen_fd=listener.detach() if rank == 0 else None,
    )


def backend_name() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def join_process_group(host: str, port: int, rank: int, world_size: int, listener: socket.socket | None = None) -> None:
    """Form the default group through the store at host:port (rank 0: served on `listener`)."""
    backend = backend_name()
    if backend == "gloo":
        bind_gloo_to(host)
    # DeepSpeed's CPU shared-memory all-reduce names its segment after MASTER_ADDR/MASTER_PORT.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=host, MASTER_PORT=str(port))
    os.environ.setdefault("LOCAL_RANK", "0")
    store = rendezvous_store(host, port, rank, world_size, listener)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)


def ensure_process_group() -> None:
    """Join the group a launcher describes in RANK/MASTER_* (its env:// rendezvous), or form a group
    of one on loopback. gloo on the CPU, NCCL when CUDA is available."""
    if dist.is_initialized():
        return
    if "RANK" in os.environ:
        dist.init_process_group(backend=backend_name())
        return
    listener = listening_socket(LOOPBACK)
    join_process_group(LOOPBACK, listener.getsockname()[1], 0, 1, listener)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def group_device() -> torch.device:
    """Where the default group's collectives take their tensors: the current GPU under NCCL, else the
    CPU (gloo, or a `cpu:gloo,cuda:nccl` group, whose CPU half serves CPU tensors)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: list[float], op: dist.ReduceOp) -> list[float]:
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=group_device())
    dist.all_reduce(tensor, op=op)
    return tensor.cpu().tolist()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (step normalisers must be global)."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values: list[float]) -> list[float]:
    """Maximum of a few numbers over all ranks (counts every rank must match)."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (small picklable objects), in rank order."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """[N_r, T_r] on each rank -> [sum N_r, max T_r], ranks' rows in rank order, right-padded with 0,
    on `tensor`'s device (gathered on the group's)."""
    if world_size() == 1:
        return tensor
    shapes = all_gather_objects(tuple(tensor.shape))
    rows, width = max(n for n, _ in shapes), max(t for _, t in shapes)
    padded = torch.zeros((rows, width), dtype=tensor.dtype, device=group_device())
    padded[: tensor.shape[0], : tensor.shape[1]] = tensor.to(padded.device)
    parts = [torch.empty_like(padded) for _ in shapes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, (n, _) in zip(parts, shapes, strict=True)]).to(tensor.device)


def sum_over_ranks(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise exact sum of every rank's metrics (a key missing on a rank counts 0)."""
    keys = list(dict.fromkeys(key for metrics in per_rank for key in metrics))
    return {key: math.fsum(metrics.get(key, 0.0) for metrics in per_rank) for key in keys}


def step_metrics(shares: dict[str, float], global_values: dict[str, float]) -> dict[str, float]:
    """One optimizer step's metrics, the same on every rank.

    `shares`: this rank's additive part of each step value (losses, entropy, KL, clip fractions are
    normalised by the all-reduced `StepScale`), summed over ranks. `global_values`: already the
    same on every rank (gradient norm after the gradient all-reduce, learning rate, values computed
    from every rank's data).
    """
    return {**sum_over_ranks(all_gather_objects(shares)), **global_values}


def lr_scale_inputs(logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """`Objective.lr_scale`'s inputs over every rank's sequences of the step.

    VCPO scales the learning rate by the effective sample size of the whole step: from one rank's
    rows alone, ranks would pick different learning rates and their weights would drift apart.
    """
    return {"logp": all_gather_rows(logp), "behaviour_logp": all_gather_rows(behaviour_logp), "mask": all_gather_rows(mask)}
