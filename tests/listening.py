"""Which TCP addresses a process and its descendants listen on, read from /proc (Linux)."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = {pid for pid, ppid in parents.items() if ppid == parent} - found
        found |= children
        frontier += children
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6} local address (host bytes in 32-bit little-endian words) as text."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listening_addresses(root: int) -> set[str]:
    """Addresses of the TCP sockets that process `root` and its descendants listen on."""
    inodes = set().union(*(_socket_inodes(pid) for pid in _descendants(root)))
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{root}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A: LISTEN
                found.add(_address(fields[1]))
    return found


def is_loopback_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def non_loopback(addresses: set[str]) -> set[str]:
    return {a for a in addresses if not is_loopback_address(a)}
