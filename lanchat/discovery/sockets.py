"""The I/O edge shared by the announcer and the browser: UDP sockets, target resolution, errno hints.

Owns how discovery sockets are opened (reuse and broadcast options), how HOST[:PORT] targets are parsed
and resolved (IPv4 only), and how send errors and dropped datagrams are logged: expected errnos once per
target with a hint, drops counted and logged at debug level at most log2(n) times. It never decides what
to send or whom to answer; that is the announcer's and the browser's business.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Sequence
from typing import Final

from lanchat.config import parse_address
from lanchat.discovery.const import SEND_ERROR_LOG_EVERY

log = logging.getLogger("lanchat.discovery")

# errno -> hint. These happen on real networks (cables out, Wi-Fi switching, firewalls) and are logged as
# warnings; any other OSError from sendto is logged as an error with its traceback.
SEND_HINTS: Final[dict[int, str]] = {
    errno.ENETUNREACH: "no route to that network: is the interface up and addressed?",
    errno.EHOSTUNREACH: "host unreachable: check the address and the subnet",
    errno.EADDRNOTAVAIL: "that address is not available here any more (interface changed?)",
    errno.ENETDOWN: "the interface is down",
    errno.EACCES: "broadcast refused: a firewall or a missing SO_BROADCAST",
    errno.EPERM: "a local firewall (iptables/nftables) rejects discovery's UDP port",
    errno.ENOBUFS: "the kernel is out of socket buffers; the datagram is dropped",
    errno.EMSGSIZE: "datagram larger than the path MTU",
    errno.EINVAL: "invalid destination for this socket",
    errno.ECONNREFUSED: "an earlier datagram was refused (nobody listening there)",
}
BIND_HINTS: Final[dict[int, str]] = {
    errno.EADDRINUSE: "another program holds this UDP port without SO_REUSEPORT: choose --discovery-port",
    errno.EACCES: "ports below 1024 need privileges: choose --discovery-port >= 1024",
    errno.EADDRNOTAVAIL: "that address is not on this host (interface gone?)",
}


def open_udp(host: str, port: int, *, reuse: bool, broadcast: bool) -> socket.socket:
    """A non-blocking IPv4 UDP socket bound to (host, port). ``reuse``: several processes may share it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_hint(exc: OSError) -> str:
    return BIND_HINTS.get(exc.errno or 0, "unexpected error")


Target = tuple[str, int]  # (host, port)


def split_targets(
    targets: Sequence[str], default_port: int, *, what: str = "target"
) -> tuple[list[Target], list[Target]]:
    """HOST[:PORT] values: the IPv4 literals (usable at once) and the names that need resolving. One that is
    neither is logged (as ``what``: the option it came from) and left out."""
    literal: list[Target] = []
    names: list[Target] = []
    for text in targets:
        try:
            host, port = parse_address(text, default_port, ipv6=False)
        except ValueError as exc:
            log.warning("discovery: ignoring %s %r: %s", what, text, exc)
            continue
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            names.append((host, port))
        else:
            literal.append((host, port))
    return literal, names


async def resolve_names(names: Sequence[Target], *, timeout: float) -> list[Target]:
    """Each (name, port) as (its first IPv4 address, port); unresolvable ones are logged with a hint and left
    out. ``timeout`` bounds all the lookups together."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: list[Target] = []
    for host, port in names:
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM),
                max(deadline - loop.time(), 0.01),
            )
        except (OSError, TimeoutError, UnicodeError) as exc:  # UnicodeError: not a name at all ("a..b")
            log.warning("cannot resolve %s: %s (hint: use an IPv4 address)", host, exc or "timed out")
            continue
        for info in infos[:1]:
            out.append((str(info[4][0]), port))
    return out


async def resolve_targets(targets: Sequence[str], default_port: int, *, timeout: float) -> list[Target]:
    """Each HOST[:PORT] as (IPv4 address, port), the literals first (see split_targets, resolve_names)."""
    literal, names = split_targets(targets, default_port)
    return list(dict.fromkeys(literal + await resolve_names(names, timeout=timeout)))


class SendErrors:
    """Logs send failures: one line per (target, errno) per SEND_ERROR_LOG_EVERY seconds, with a hint."""

    __slots__ = ("_last", "_level", "count")

    def __init__(self, *, quiet: bool = False) -> None:
        """``quiet``: at debug level (a search whose failures its caller handles, see browse)."""
        self._last: dict[tuple[str, int], float] = {}
        self.count = 0
        self._level = logging.DEBUG if quiet else None

    def report(self, what: str, target: tuple[str, int], exc: OSError, now: float) -> None:
        self.count += 1
        code = exc.errno or 0
        key = (target[0], code)
        if now - self._last.get(key, -SEND_ERROR_LOG_EVERY) < SEND_ERROR_LOG_EVERY:
            return
        if len(self._last) > 1024:  # bounded: targets are few, but never let this grow
            self._last.clear()
        self._last[key] = now
        hint = SEND_HINTS.get(code)
        where = f"{target[0]}:{target[1]}"
        if hint is None:
            log.log(self._level or logging.ERROR, "discovery: cannot send %s to %s: %s", what, where, exc,
                    exc_info=exc if self._level is None else None)  # fmt: skip
        else:
            log.log(self._level or logging.WARNING, "discovery: cannot send %s to %s: %s (hint: %s)", what, where,
                    exc.strerror or exc, hint)  # fmt: skip


class Drops:
    """Counts ignored datagrams by reason; logs the 1st, 2nd, 4th, 8th, ... of each reason at debug level."""

    __slots__ = ("_counts", "_side")

    def __init__(self, side: str) -> None:
        self._side = side
        self._counts: Counter[str] = Counter()

    def __call__(self, reason: str, source: tuple[str, int] | None = None, detail: str = "") -> None:
        self._counts[reason] += 1
        n = self._counts[reason]
        if n & (n - 1) == 0 and log.isEnabledFor(logging.DEBUG):
            src = f" from {source[0]}:{source[1]}" if source else ""
            more = f": {detail}" if detail else ""
            log.debug("%s: ignored datagram%s (%s #%d)%s", self._side, src, reason, n, more)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def total(self) -> int:
        return sum(self._counts.values())
