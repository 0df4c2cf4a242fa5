"""The server side of discovery: beacons, probe replies, goodbye.

Owns the server's UDP discovery socket (0.0.0.0:discovery_port, shared with other servers and browsers
through SO_REUSEADDR + SO_REUSEPORT) inside the server's asyncio loop: a beacon to each chosen interface's
broadcast address (and each --beacon-to target) at start and every beacon interval, an immediate unicast
reply to each acceptable probe, a goodbye on clean stop. The reply policy (never larger than the probe,
rate-limited per source and in total, only to loopback, directly connected subnets and --beacon-to hosts)
lives in pure pieces (``ReplyLimiter``, ``encode_reply_within``) that take ``now`` as an argument. A chat
bound to one IPv4 address (``bind_host``) is announced at it: every datagram is sent from that address.

It must never let a datagram from the LAN crash it or grow its memory, never block the loop, and never
take the chat server down: a socket it cannot open or a send that fails is logged with a hint.

Run standalone (debugging, tests): ``python -m lanchat.discovery.announcer --name N --port P --data-dir D``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import math
import os
import random
import signal
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lanchat import const
from lanchat.config import DiscoveryConfig, default_data_dir
from lanchat.discovery.const import (
    BEACON_JITTER,
    INTERFACE_REFRESH,
    LIMITER_MAX_SOURCES,
    MAX_PERIOD,
    READ_BUDGET,
    RECV_SIZE,
    REPLY_BURST_PER_SOURCE,
    REPLY_BURST_TOTAL,
    REPLY_RATE_PER_SOURCE,
    REPLY_RATE_TOTAL,
    TWIN_LOG_EVERY,
)
from lanchat.discovery.interfaces import (
    Interface,
    address_for,
    broadcast_targets,
    choose_interfaces,
    is_subnet_broadcast,
    is_unicast_source,
    list_interfaces,
)
from lanchat.discovery.server_id import load_or_create_server_id
from lanchat.discovery.sockets import Drops, SendErrors, Target, bind_hint, open_udp, resolve_names, split_targets
from lanchat.errors import RemoteProtocolError
from lanchat.protocol.beacon import (
    MAX_DATAGRAM,
    MAX_INTERVAL_MS,
    MAX_LOAD,
    U16,
    U32,
    Beacon,
    Goodbye,
    Probe,
    Reply,
    clean_name,
    decode,
    encode,
    encode_reply_within,
    is_discovery,
)
from lanchat.protocol.bucket import TokenBucket

log = logging.getLogger("lanchat.discovery")

# IP_PKTINFO (Linux: 8) lets one sendmsg choose a datagram's source address. Python exposes the constant
# only from 3.12; its value is part of Linux's ABI. None where we do not know it (the fallback is logged).
IP_PKTINFO: Final[int | None] = getattr(socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None)


@dataclass(frozen=True, slots=True)
class BindHost:
    """What the chat's bind address means for discovery (see ``bind_host``)."""

    source: str | None  # the IPv4 address every discovery datagram is sent from and announces; None: wildcard
    ipv6_only: str | None  # the IPv6 address the chat listens on, when discovery (IPv4 only) cannot announce it

    @property
    def loopback_only(self) -> bool:
        """Listening on a loopback address: only this host can connect, so only loopback hears of it."""
        return self.source is not None and ipaddress.IPv4Address(self.source).is_loopback

    @property
    def unannounced(self) -> bool:
        """Listening on IPv6 loopback (::1) only: discovery's IPv4 addresses would all be wrong, and only
        this host could connect anyway; nothing is announced."""
        return self.ipv6_only is not None and ipaddress.IPv6Address(self.ipv6_only.split("%", 1)[0]).is_loopback


def bind_host(host: str) -> BindHost:
    """The discovery consequence of serving chat on ``host`` (an IP literal; "" or a wildcard: every address).

    A wildcard (0.0.0.0, ::) is reachable at every address of the host, so each beacon announces the
    address of the interface it goes out on (and browsers use the datagram's source). A specific IPv4
    address is the only one clients can connect to: it is announced everywhere. An IPv6-only address
    cannot be announced (the datagram format carries IPv4); ValueError for anything that is not an address.
    """
    if host == "":
        return BindHost(None, None)
    addr = ipaddress.ip_address(host.split("%", 1)[0])  # strip an IPv6 scope (fe80::1%eth0)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified:
        return BindHost(None, None)
    if isinstance(addr, ipaddress.IPv6Address):
        return BindHost(None, host)
    return BindHost(str(addr), None)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What beacons and replies say about the server's state (the hub provides it)."""

    users: int = 0
    rooms: int = 0
    workers: int = 0
    load: float = 0.0  # non-negative; `lanchat serve` reports connections / --max-clients


# --- pure policy -----------------------------------------------------------------------------------------


class ReplyLimiter:
    """Whether a probe from ``source`` may be answered now: a per-source bucket and a global one.

    Pure (time is an argument). The per-source table is an LRU of at most ``max_sources`` buckets: a
    flood of distinct (spoofed) sources evicts old buckets instead of growing memory, and the global
    bucket still bounds the total.
    """

    __slots__ = ("_global", "_sources", "burst_per_source", "max_sources", "rate_per_source")

    def __init__(
        self,
        *,
        rate_per_source: float = REPLY_RATE_PER_SOURCE,
        burst_per_source: float = REPLY_BURST_PER_SOURCE,
        rate_total: float = REPLY_RATE_TOTAL,
        burst_total: float = REPLY_BURST_TOTAL,
        max_sources: int = LIMITER_MAX_SOURCES,
        now: float = 0.0,
    ) -> None:
        if min(rate_per_source, burst_per_source, rate_total, burst_total) <= 0 or max_sources < 1:
            raise ValueError("limiter rates, bursts and max_sources must be positive")
        self.rate_per_source = rate_per_source
        self.burst_per_source = burst_per_source
        self.max_sources = max_sources
        self._global = TokenBucket(rate_total, burst_total, now)
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def allow(self, source: str, now: float) -> bool:
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
            bucket = self._sources[source] = TokenBucket(self.rate_per_source, self.burst_per_source, now)
        else:
            self._sources.move_to_end(source)
        bucket.refill(now)
        self._global.refill(now)
        if not (bucket.ready and self._global.ready):
            return False
        bucket.tokens -= 1
        self._global.tokens -= 1
        return True


def reply_address(
    source: tuple[str, int], interfaces: Sequence[Interface], trusted: Collection[str], discovery_port: int
) -> tuple[str | None, str]:
    """Whether a probe from ``source`` is answered: (the address to advertise to it, "") or (None, why not).

    Answered: loopback, the subnets of ``interfaces`` (the chosen ones), and ``trusted`` hosts (the
    --beacon-to targets, advertised as 0.0.0.0: "use the address this came from"). A source that cannot
    be a real prober (port 0, our own discovery port, broadcast, multicast) is spoofed-looking.
    """
    ip, port = source[0], source[1]
    if port == 0 or port == discovery_port or not is_unicast_source(ip) or is_subnet_broadcast(ip, interfaces):
        return None, "spoofed_source"
    advertised = address_for(ip, interfaces)
    if advertised is not None:
        return advertised, ""
    if ip in trusted:
        return "0.0.0.0", ""
    return None, "not_directly_connected"


@dataclass(slots=True)
class AnnouncerStats:
    """Counters of one announcer (a snapshot: ``Announcer.stats()`` returns a copy)."""

    received: int = 0
    probes: int = 0
    replies: int = 0
    beacons: int = 0
    goodbyes: int = 0
    send_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def _clamp_int(value: int, limit: int) -> int:
    """``value`` forced into 0..limit (the provider is our code, but a bad figure must not stop beacons)."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(number, 0), limit)


def _clamp_load(value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return min(max(number, 0.0), MAX_LOAD) if math.isfinite(number) else 0.0


# --- I/O -------------------------------------------------------------------------------------------------


class Announcer:
    """Announces one server and answers probes, inside the running asyncio loop."""

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        server_id: str,
        name: str,
        tcp_port: int,
        info: Callable[[], ServerInfo],
        interfaces: Callable[[], list[Interface]] = list_interfaces,
        limiter: ReplyLimiter | None = None,
        host: str = "0.0.0.0",
    ) -> None:
        Goodbye(server_id=server_id, address="0.0.0.0", port=tcp_port)  # validates both (LocalProtocolError)
        try:
            self.bind = bind_host(host)  # `lanchat serve` passes the address it bound: always a literal
        except ValueError:
            log.warning("discovery: %r is not an IP address: announcing each interface's address", host)
            self.bind = BindHost(None, None)
        # A server bound to one address (serve --host 10.0.0.7) must be announced at that address. Browsers
        # take a server's address from the *source* of its datagrams (the payload's address is only a hint:
        # behind NAT or on a multi-address interface the source is what is reachable), so rather than a new
        # payload rule that browsers already in the field would not follow, every datagram is sent *from*
        # that address: one sendmsg with IP_PKTINFO, on the same socket (a second socket bound to it would
        # take unicast probes away from this one). The payload's address says the same.
        self._pktinfo: list[tuple[int, int, bytes]] = []
        if self.bind.source is not None and IP_PKTINFO is not None:
            spec = struct.pack("@i4s4s", 0, socket.inet_aton(self.bind.source), bytes(4))  # struct in_pktinfo
            self._pktinfo = [(socket.IPPROTO_IP, IP_PKTINFO, spec)]
        if config.beacon and config.beacon_interval > MAX_PERIOD:
            # Browsers count at most MAX_PERIOD of an interval (a forged beacon must not keep a listing for
            # days): beaconing less often, a live server came and went in their lists (a review). Started all
            # the same, for a service file written when more was taken.
            log.warning(
                "discovery: --beacon-interval %g is more than browsers wait for: beacons every %g s",
                config.beacon_interval, MAX_PERIOD,
            )  # fmt: skip
            config = dataclasses.replace(config, beacon_interval=MAX_PERIOD)
        self.config = config
        self.server_id = server_id
        self.name = clean_name(name)
        if self.name != name:
            log.warning("server name %r shortened or cleaned to %r for discovery", name, self.name)
        self.tcp_port = tcp_port
        self._info = info
        self._list_interfaces = interfaces
        self._limiter = limiter if limiter is not None else ReplyLimiter()
        self._interval_ms = min(round(config.beacon_interval * 1000), MAX_INTERVAL_MS) if config.beacon else 0
        self._sock: socket.socket | None = None
        self._port = config.discovery_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._chosen: list[Interface] = []
        self._local: frozenset[str] = frozenset()  # this host's addresses: our own beacons come back from them
        self._twin_logged_at: float | None = None
        self._problems: list[str] = []
        self._interfaces_known = False
        self._beacon_to: list[tuple[str, int]] = []
        self._literal: list[Target] = []  # the --beacon-to targets that are IPv4 literals (the names resolved apart)
        self._trusted: frozenset[str] = frozenset()
        self._stats = AnnouncerStats()
        self._drops = Drops("announcer")
        self._send_errors = SendErrors()
        self._last_info = ServerInfo()
        self._info_failed = False
        self._stopped = False

    # -- lifecycle --

    @property
    def active(self) -> bool:
        """True while the discovery socket is open (False if discovery is off or could not bind)."""
        return self._sock is not None

    @property
    def port(self) -> int:
        """The UDP port actually bound (config.discovery_port, or the kernel's choice if that was 0)."""
        return self._port

    async def start(self) -> None:
        """Bind, send the first beacon at once, then beacon periodically and answer probes."""
        if not self.config.discovery:
            log.info("discovery off (--no-discovery): no beacons, probes unanswered")
            return
        if self._sock is not None or self._stopped:
            return
        port = self.config.discovery_port
        try:
            self._sock = open_udp("0.0.0.0", port, reuse=True, broadcast=True)
        except OSError as exc:
            log.error("discovery off: cannot bind UDP port %d: %s (hint: %s)", port, exc.strerror, bind_hint(exc))
            return
        self._port = self._sock.getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._warn_about_bind_host()
        self._refresh_interfaces()
        self._literal, names = split_targets(self.config.beacon_to, port, what="--beacon-to")
        self._set_beacon_to(self._literal)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        if self.config.beacon:
            self._send_beacons()
        self._task = self._loop.create_task(self._maintain(names), name="lanchat-announcer")
        targets = ", ".join(f"{h}:{p}" for h, p in self._targets()) or "nobody"
        mode = f"every {self.config.beacon_interval:g}s to {targets}" if self.config.beacon else "no beacons"
        log.info(
            "discovery: %s (id %s, tcp %d) on udp/%d, %s", self.name, self.server_id[:8], self.tcp_port, self.port, mode
        )

    def _warn_about_bind_host(self) -> None:
        bind = self.bind
        if bind.unannounced:
            log.info("discovery: chat listens on %s only: not announced (clients join [::1]:%d)", bind.ipv6_only,
                     self.tcp_port)  # fmt: skip
        elif bind.ipv6_only is not None:
            log.warning(
                "discovery: chat listens on %s (IPv6) only, but discovery announces IPv4 addresses: browsers "
                "will be given this host's IPv4 address and cannot connect (hint: --host :: for IPv4 and IPv6, "
                "or clients join [%s]:%d by address)",
                bind.ipv6_only, bind.ipv6_only.split("%", 1)[0], self.tcp_port,
            )  # fmt: skip
        elif bind.source is not None and not self._pktinfo:
            log.warning(
                "discovery: cannot send from %s on this platform (no IP_PKTINFO): browsers will be given the "
                "interface's address instead and may fail to connect (hint: --host 0.0.0.0)",
                bind.source,
            )
        elif bind.loopback_only:
            log.info("discovery: chat listens on %s only: announced on this host only (loopback)", bind.source)
        elif bind.source is not None:
            log.info("discovery: chat listens on %s only: announced on its subnet only", bind.source)

    async def stop(self) -> None:
        """Send a goodbye to every beacon target and close. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # whatever ended it, the goodbye still goes out and the socket is closed
                log.exception("discovery: the beacon task had failed")
            self._task = None
        sock = self._sock
        if sock is None:
            return
        if self.config.beacon:
            for target, address in self._targets_with_address():
                if self._send(encode(Goodbye(self.server_id, address, self.tcp_port)), target, "goodbye"):
                    self._stats.goodbyes += 1
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        self._sock = None
        s = self.stats()
        log.info(
            "discovery stopped: %d beacons, %d probes, %d replies, %d ignored",
            s.beacons,
            s.probes,
            s.replies,
            sum(s.dropped.values()),
        )

    def stats(self) -> AnnouncerStats:
        s = self._stats
        return AnnouncerStats(
            s.received, s.probes, s.replies, s.beacons, s.goodbyes, self._send_errors.count, self._drops.counts()
        )

    # -- periodic work --

    async def _maintain(self, names: list[Target]) -> None:
        """Beacon every interval (jittered shorter, never longer); re-read interfaces and names now and then."""
        loop = self._loop
        assert loop is not None
        refresh_at = loop.time() + INTERFACE_REFRESH
        if names:
            try:
                self._set_beacon_to(self._literal + await self._resolve(names))
            except Exception:  # as below: the loop must run whatever the names are
                log.exception("discovery: cannot resolve --beacon-to names %s", names)

        def next_beacon() -> float:
            return loop.time() + self.config.beacon_interval * (1.0 - BEACON_JITTER * random.random())

        beacon_at = next_beacon() if self.config.beacon else float("inf")
        while True:  # whichever is due first: the next beacon, or the next re-read (not only on beacon rounds)
            await asyncio.sleep(max(0.0, min(beacon_at, refresh_at) - loop.time()))
            try:
                if loop.time() >= refresh_at:
                    refresh_at = loop.time() + INTERFACE_REFRESH
                    self._refresh_interfaces()
                    if names:
                        self._set_beacon_to(self._literal + await self._resolve(names))
                if loop.time() >= beacon_at:
                    beacon_at = next_beacon()
                    self._send_beacons()
            except Exception:  # a bug here must not silence the server for good: log it, try next round
                log.exception("discovery: beacon round failed")

    async def _resolve(self, names: list[Target]) -> list[Target]:
        return await resolve_names(names, timeout=INTERFACE_REFRESH / 2)

    def _refresh_interfaces(self) -> None:
        every = self._list_interfaces()
        chosen, problems = choose_interfaces(self.config.interface, every)
        if self.bind.loopback_only and not any(i.is_loopback for i in chosen):  # the only place it is heard
            chosen = chosen + [i for i in every if i.is_loopback and i.up and i.broadcast is not None]
        if problems != self._problems:
            for problem in problems:
                log.warning("discovery: %s", problem)
        if chosen != self._chosen or not self._interfaces_known:
            self._interfaces_known = True
            if not chosen:
                log.warning("discovery: no usable interface (hint: --interface NAME, --beacon-to HOST)")
            else:
                log.info(
                    "discovery: interfaces %s", ", ".join(f"{i.name}={i.address} brd {i.broadcast}" for i in chosen)
                )
        self._chosen, self._problems = chosen, problems
        self._local = frozenset(i.address for i in every)

    def _set_beacon_to(self, targets: list[tuple[str, int]]) -> None:
        self._beacon_to = list(dict.fromkeys(targets))
        self._trusted = frozenset(host for host, _ in self._beacon_to)

    def _targets_with_address(self) -> list[tuple[tuple[str, int], str]]:
        """(target, our address as seen from there) for each interface broadcast and --beacon-to target.

        A server bound to one address announces that one, where it can be reached (see _can_reach)."""
        if self.bind.unannounced:
            return []
        port = self.config.discovery_port
        out = [((bcast, port), address) for bcast, address in broadcast_targets(self._chosen)]
        for host, target_port in self._beacon_to:
            out.append(((host, target_port), address_for(host, self._chosen) or "0.0.0.0"))
        source = self.bind.source
        if source is None:
            return out
        return [(target, source) for target, _ in out if self._can_reach(target[0])]

    def _can_reach(self, ip: str) -> bool:
        """Could a client at ``ip`` (or behind the broadcast address ``ip``) connect to the chat? To a bind
        address, this host can (loopback, or one of our own addresses: a browser here probing an
        interface's broadcast address); to a loopback one, only this host; to another, also the subnet of
        the interface that has it, and the --beacon-to hosts (routed: the operator's word). A host on
        two LANs bound to its address on one must not announce it on the other."""
        source = self.bind.source
        if source is None:
            return not self.bind.unannounced
        try:
            if ipaddress.IPv4Address(ip).is_loopback or any(i.address == ip for i in self._chosen):
                return True
        except ValueError:
            return False
        if self.bind.loopback_only:
            return False
        return ip in self._trusted or any(i.address == source and i.contains(ip) for i in self._chosen)

    def _targets(self) -> list[tuple[str, int]]:
        return [target for target, _ in self._targets_with_address()]

    def _current_info(self) -> ServerInfo:
        try:
            info = self._info()
            self._last_info = ServerInfo(
                users=_clamp_int(info.users, U32),
                rooms=_clamp_int(info.rooms, U32),
                workers=_clamp_int(info.workers, U16),
                load=_clamp_load(info.load),
            )
            self._info_failed = False
        except Exception:
            if not self._info_failed:
                log.exception("discovery: the server info provider failed; announcing the last known figures")
            self._info_failed = True
        return self._last_info

    def _advert(self, address: str, info: ServerInfo) -> tuple[str, str, int, int, int, int, int, int, float, str]:
        """The fields a beacon and a probe reply share, in their order."""
        return (
            self.server_id, address, self.tcp_port, const.PROTOCOL_VERSION, self._interval_ms,
            info.users, info.rooms, info.workers, info.load, self.name,
        )  # fmt: skip

    def _send_beacons(self) -> None:
        info = self._current_info()
        for target, address in self._targets_with_address():
            beacon = Beacon(*self._advert(address, info))
            if self._send(encode(beacon), target, "beacon"):
                self._stats.beacons += 1

    # -- probes --

    def _on_readable(self) -> None:
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        for _ in range(READ_BUDGET):
            try:
                data, source = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED queued by an ICMP error: not about this read
                self._drops("recv_error", None, str(exc))
                continue
            self.handle_datagram(data, source, loop.time())

    def handle_datagram(self, data: bytes, source: tuple[str, int], now: float) -> None:
        """Everything the announcer does with one received datagram (public for tests)."""
        self._stats.received += 1
        if len(data) > MAX_DATAGRAM:
            self._drops("oversized", source)
            return
        if not is_discovery(data):
            self._drops("foreign", source)
            return
        try:
            message = decode(data)
        except RemoteProtocolError as exc:
            self._drops(exc.code, source, exc.message)
            return
        if not isinstance(message, Probe):  # beacons, replies and goodbyes of other servers (and our own beacons)
            if message.server_id == self.server_id and not self._is_own(message.port, source[0]):
                self._twin(source[0], message.port, now)
            return
        self._stats.probes += 1
        ip = source[0]
        advertised, refusal = reply_address(source, self._chosen, self._trusted, self.port)
        if advertised is None:
            self._drops(refusal, source)
            return
        if not self._can_reach(ip):  # bound to one address: a prober elsewhere could not connect
            self._drops("loopback_only" if self.bind.loopback_only else "unreachable_bind", source)
            return
        if self.bind.source is not None:
            advertised = self.bind.source
        reply = Reply(*self._advert(advertised, self._current_info()), message.nonce)
        out = encode_reply_within(reply, len(data))
        if out is None:  # checked before the limiter: a probe we would never answer costs no token
            self._drops("probe_too_small", source, f"{len(data)} bytes")
            return
        if not self._limiter.allow(ip, now):
            self._drops("rate_limited", source)
            return
        if self._send(out, source, "reply"):
            self._stats.replies += 1

    def _is_own(self, tcp_port: int, ip: str) -> bool:
        """A datagram with our id is our own beacon if it came from this host (heard back on our socket) for
        our chat port: another host, or another port here, is a second server with our id."""
        if tcp_port != self.tcp_port:
            return False
        if self._pktinfo:  # every datagram of ours goes out from the bound address: another address of this
            return ip == self.bind.source  # host, with our port, is a copy bound there (a review)
        try:
            return ipaddress.ip_address(ip).is_loopback or ip in self._local
        except ValueError:
            return False

    def _twin(self, ip: str, tcp_port: int, now: float) -> None:
        """Another server announces our id: a copied data directory (a cloned VM, an SD card image, `cp -a`).
        Browsers list one of the two and never the other, and neither server could tell (a review on a LAN of
        namespaces): say so, at most every TWIN_LOG_EVERY (a forged datagram can say it too)."""
        self._drops("twin_id", (ip, tcp_port))
        if self._twin_logged_at is not None and now < self._twin_logged_at + TWIN_LOG_EVERY:
            return
        self._twin_logged_at = now
        log.warning(
            "discovery: another server at %s (chat port %d) announces this server's id %s: browsers list only"
            " one of the two. Is its data directory a copy of this one? Stop it, delete server_id in its data"
            " directory (a new id is made at its next start) and start it again",
            ip, tcp_port, self.server_id[:8],
        )  # fmt: skip

    def _send(self, data: bytes, target: tuple[str, int], what: str) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            if self._pktinfo:
                sock.sendmsg([data], self._pktinfo, 0, target)  # sent from the chat's bind address
            else:
                sock.sendto(data, target)
        except (BlockingIOError, InterruptedError):
            self._drops("send_buffer_full", target)
            return False
        except OSError as exc:
            self._send_errors.report(what, target, exc, self._loop.time() if self._loop else 0.0)
            return False
        return True


# --- standalone runner -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lanchat.discovery.announcer",
        description="Announce a (possibly imaginary) lanchat server on UDP discovery, for debugging and tests. "
        "Prints one JSON line when ready; SIGTERM or Ctrl-C sends the goodbye and exits.",
    )
    p.add_argument("--name", default=socket.gethostname(), help="server name shown by browsers")
    p.add_argument("--port", type=int, default=const.DEFAULT_PORT, help="TCP chat port to advertise")
    p.add_argument("--host", default="0.0.0.0", help="the chat's bind address (as serve --host; an IP address)")
    p.add_argument("--data-dir", type=Path, default=None, help="where the server id lives")
    p.add_argument("--interface", action="append", default=None, help="repeatable; default: $LANCHAT_INTERFACE or all")
    p.add_argument("--discovery-port", type=int, default=const.DEFAULT_DISCOVERY_PORT)
    p.add_argument("--beacon-interval", type=float, default=DiscoveryConfig().beacon_interval)
    p.add_argument("--beacon-to", action="append", default=[])
    p.add_argument("--no-beacon", action="store_true")
    p.add_argument("--users", type=int, default=0)
    p.add_argument("--rooms", type=int, default=0)
    p.add_argument("--log-level", default=os.environ.get("LANCHAT_LOG_LEVEL", "info"))
    return p


async def _run_standalone(args: argparse.Namespace, config: DiscoveryConfig) -> int:
    server_id = load_or_create_server_id(args.data_dir or default_data_dir())
    info = ServerInfo(users=args.users, rooms=args.rooms, workers=0, load=0.0)
    announcer = Announcer(
        config, server_id=server_id, name=args.name, tcp_port=args.port, info=lambda: info, host=args.host
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await announcer.start()
        if not announcer.active:
            return 1
        ready = {"event": "ready", "server_id": server_id, "name": announcer.name, "port": args.port}
        print(json.dumps({**ready, "discovery_port": announcer.port}), flush=True)
        await stop.wait()
    finally:
        await announcer.stop()
    print(json.dumps({"event": "stopped", **dataclasses.asdict(announcer.stats())}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        bind_host(args.host)
    except ValueError:
        parser.error(f"--host must be an IP address, not {args.host!r}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    interface = args.interface
    if interface is None:
        interface = os.environ.get("LANCHAT_INTERFACE", "").split()
    config = DiscoveryConfig(
        interface=tuple(interface),
        discovery_port=args.discovery_port,
        beacon_interval=args.beacon_interval,
        beacon_to=tuple(args.beacon_to),
        beacon=not args.no_beacon,
    )
    return asyncio.run(_run_standalone(args, config))


if __name__ == "__main__":
    sys.exit(main())
