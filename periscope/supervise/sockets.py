"""Which TCP addresses a tree of processes listens on, from /proc (Linux; no psutil needed).

`periscope up`'s security check: every listening socket of its processes is on loopback.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Listener", "descendants", "listening_sockets", "parse_proc_net_tcp"]

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    pid: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def _decode_address(hex_address: str, *, ipv6: bool) -> str:
    """/proc/net/tcp{,6} print addresses as host-order 32-bit words in hex."""
    raw = bytes.fromhex(hex_address)
    if not ipv6:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def parse_proc_net_tcp(text: str, *, ipv6: bool) -> dict[int, tuple[str, int]]:
    """{socket inode: (address, port)} of the LISTEN sockets in a /proc/net/tcp{,6} dump."""
    listening = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        hex_address, hex_port = fields[1].split(":")
        listening[int(fields[9])] = (_decode_address(hex_address, ipv6=ipv6), int(hex_port, 16))
    return listening


def descendants(root_pid: int) -> list[int]:
    """`root_pid` and every process below it (from each process's parent in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def listening_sockets(pids: Iterable[int]) -> list[Listener]:
    """Every TCP socket (IPv4 and IPv6) in LISTEN state held by one of `pids`."""
    listening: dict[int, tuple[str, int]] = {}
    for name, ipv6 in (("tcp", False), ("tcp6", True)):
        try:
            listening |= parse_proc_net_tcp(Path(f"/proc/net/{name}").read_text(), ipv6=ipv6)
        except OSError:
            continue
    found = []
    for pid in pids:
        for inode in _socket_inodes(pid):
            if inode in listening:
                address, port = listening[inode]
                found.append(Listener(address, port, pid))
    return sorted(found, key=lambda listener: (listener.port, listener.pid))
