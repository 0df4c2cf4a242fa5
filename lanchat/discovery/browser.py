"""The client side of discovery: find servers by probing and listening, keep a table of them.

Owns two layers. ``ServerTable`` is a pure state machine (time is an argument): it turns decoded
datagrams into added / updated / removed events, dedups by server id, matches replies to probe nonces
(latency), expires servers silent for EXPIRY_FACTOR beacon intervals, drops them at once on a goodbye
from the address they are shown at, and never holds more than MAX_SERVERS entries. ``Browser`` is the I/O edge:
one ephemeral socket sends probes (to each chosen interface's broadcast address and each --probe target)
and receives the unicast replies; one socket per broadcast address hears beacons and goodbyes.

The beacon sockets are bound to the broadcast address itself (e.g. 127.255.255.255:7272), not to
0.0.0.0: they then receive every broadcast but never a unicast datagram, so a browser running on a
server's host cannot steal a unicast probe meant for that server (SO_REUSEPORT would hash some to it).

It must never crash or grow without bound on what the LAN sends, and never send anywhere but the chosen
interfaces' broadcast addresses and the explicit --probe targets. ``lanchat discover`` and ``lanchat
join`` (no address given) both use ``browse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass
from typing import Final, Literal

from lanchat.config import DiscoveryConfig
from lanchat.discovery.const import (
    EXPIRY_FACTOR,
    INTERFACE_REFRESH,
    MAX_ADDRESSES,
    MAX_PENDING_PROBES,
    MAX_PERIOD,
    MAX_SERVERS,
    MIN_PERIOD,
    PROBE_NONCE_TTL,
    PROBE_RETRY_DELAY,
    READ_BUDGET,
    RECV_SIZE,
    WATCH_PROBE_INTERVAL,
)
from lanchat.discovery.interfaces import (
    Interface,
    broadcast_targets,
    choose_interfaces,
    is_unicast_source,
    list_interfaces,
)
from lanchat.discovery.sockets import Drops, SendErrors, bind_hint, open_udp, resolve_targets
from lanchat.errors import RemoteProtocolError
from lanchat.protocol.beacon import (
    MAX_DATAGRAM,
    NONCE_SIZE,
    Beacon,
    Goodbye,
    Message,
    Probe,
    Reply,
    decode,
    encode,
    is_discovery,
)

log = logging.getLogger("lanchat.discovery")

EventKind = Literal["added", "updated", "removed"]


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """One server as a browser sees it. ``host`` is the address its datagrams came from: reachable from here."""

    server_id: str
    name: str
    host: str
    port: int
    proto: int
    users: int
    rooms: int
    workers: int
    load: float
    latency_ms: float | None  # probe -> reply round trip; None if only heard by beacon

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TableEvent:
    kind: EventKind
    record: ServerRecord
    reason: str = ""  # removed: "goodbye" or "expired"


@dataclass(slots=True)
class _Source:
    """One address a server's datagrams came from, as its own datagrams describe the server."""

    record: ServerRecord  # host: this address
    since: float  # first heard: the longest known address takes over the listing, and is the last evicted
    deadline: float  # dropped as silent after this
    beaconed: bool  # its beacons reach us from here (so its interval, not our probing, says when it is due)


@dataclass(slots=True)
class _Entry:
    """A server by its id, reached through ``host``, one of its ``sources`` (a multi-homed server is heard
    from several). Only the host's own datagrams change what is shown, and the listing moves to another
    source only when the host has expired (see expire): anyone on the LAN can send datagrams with a known
    server's id from its own address, and must not take over the listing (nor its port, nor remove it)
    while the server is heard, however fast it sends and whatever a lost beacon or two let it look like."""

    host: str
    sources: dict[str, _Source]

    @property
    def record(self) -> ServerRecord:
        return self.sources[self.host].record

    @property
    def deadline(self) -> float:
        return min(src.deadline for src in self.sources.values())


class ServerTable:
    """The servers heard so far. Pure: feed it decoded messages with their source and the time."""

    def __init__(
        self,
        *,
        max_servers: int = MAX_SERVERS,
        max_pending: int = MAX_PENDING_PROBES,
        refresh: float | None = WATCH_PROBE_INTERVAL,
        expiry_factor: float = EXPIRY_FACTOR,
    ) -> None:
        if max_servers < 1 or max_pending < 1 or (refresh is not None and refresh <= 0) or expiry_factor <= 0:
            raise ValueError("table limits must be positive")
        self.max_servers = max_servers
        self.max_pending = max_pending
        # Seconds between our own probes (None: we do not probe again): how soon a server whose beacons do not
        # reach us (unicast --probe across a router, or --no-beacon) is heard from again.
        self.refresh = refresh
        self.expiry_factor = expiry_factor
        self._entries: dict[str, _Entry] = {}
        self._pending: dict[bytes, float] = {}  # probe nonce -> when sent (insertion order = age)
        self.drops = Drops("browser")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, server_id: object) -> bool:
        return server_id in self._entries

    def records(self) -> list[ServerRecord]:
        """Every server, sorted by name then address."""
        return sorted((e.record for e in self._entries.values()), key=lambda r: (r.name.casefold(), r.host, r.port))

    def get(self, server_id: str) -> ServerRecord | None:
        entry = self._entries.get(server_id)
        return entry.record if entry else None

    def pending_probes(self) -> int:
        return len(self._pending)

    def probe_sent(self, nonce: bytes, now: float) -> None:
        """Remember a probe's nonce: replies carrying it are genuine and give the latency."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError("bad nonce")
        self._pending[nonce] = now
        while len(self._pending) > self.max_pending:
            del self._pending[next(iter(self._pending))]

    def next_deadline(self) -> float | None:
        """When the next server would expire (None: table empty)."""
        return min((e.deadline for e in self._entries.values()), default=None)

    def expire(self, now: float) -> list[TableEvent]:
        """Drop servers silent past their deadline, and probe nonces past PROBE_NONCE_TTL."""
        while self._pending:
            nonce, sent = next(iter(self._pending.items()))
            if now - sent <= PROBE_NONCE_TTL:
                break
            del self._pending[nonce]
        events: list[TableEvent] = []
        for sid, entry in [(sid, e) for sid, e in self._entries.items() if e.deadline <= now]:
            shown = entry.record
            for ip in [ip for ip, src in entry.sources.items() if src.deadline <= now]:
                del entry.sources[ip]
            if not entry.sources:
                del self._entries[sid]
                events.append(TableEvent("removed", shown, "expired"))
            elif entry.host not in entry.sources:  # still heard through another address: shown through the
                # one known longest (not the sender who came last and sends fastest)
                entry.host = min(entry.sources, key=lambda ip: entry.sources[ip].since)
                events.append(TableEvent("updated", entry.record))
        return events

    def receive(self, message: Message, source: tuple[str, int], now: float) -> list[TableEvent]:
        """The events one decoded datagram from ``source`` causes (often none)."""
        if isinstance(message, Probe):
            return []  # another browser's probe (we listen on the same broadcast address)
        ip, port = source[0], source[1]
        if port == 0 or not is_unicast_source(ip):
            self.drops("spoofed_source", source)
            return []
        if isinstance(message, Goodbye):
            return self._goodbye(message, ip, source)
        latency: float | None = None
        if isinstance(message, Reply):
            sent = self._pending.get(message.nonce)
            if sent is None or now - sent > PROBE_NONCE_TTL:
                self.drops("unknown_nonce", source)
                return []
            latency = max(now - sent, 0.0) * 1000.0
        if message.port == 0:
            self.drops("bad_port", source)
            return []
        return self._heard(message, ip, now, latency)

    def _period(self, message: Beacon | Reply, beaconed: bool) -> float:
        """Seconds until this server should be heard from again, as far as this message tells.

        Beacons come every interval. After a reply, a server whose beacons we have heard is still due every
        interval; one never heard by beacon is due at our next probe: its beacons do not reach us (a server
        killed behind a router, beaconing every minute, stayed 3 minutes in a watch that probed every 5 s: a
        review), and one whose first beacon is yet to come answers the probes meanwhile.
        """
        interval = min(max(message.interval, MIN_PERIOD), MAX_PERIOD) if message.interval_ms else 0.0
        if isinstance(message, Beacon) or (beaconed and interval):
            return interval or MAX_PERIOD
        if self.refresh is None:
            return interval or MAX_PERIOD  # we will not probe again: only its beacons can refresh it
        return self.refresh

    def _heard(self, message: Beacon | Reply, ip: str, now: float, latency: float | None) -> list[TableEvent]:
        entry = self._entries.get(message.server_id)
        src = entry.sources.get(ip) if entry is not None else None
        beaconed = isinstance(message, Beacon) or (src is not None and src.beaconed)
        deadline = now + self.expiry_factor * self._period(message, beaconed)
        if latency is None and src is not None:
            latency = src.record.latency_ms
        heard = _Source(_record(message, ip, latency), src.since if src is not None else now, deadline, beaconed)
        if entry is None:
            if len(self._entries) >= self.max_servers:
                self.drops("table_full", (ip, 0))
                return []
            self._entries[message.server_id] = _Entry(ip, {ip: heard})
            return [TableEvent("added", heard.record)]
        shown = entry.record
        entry.sources[ip] = heard
        if len(entry.sources) > MAX_ADDRESSES:
            newest = max((a for a in entry.sources if a != entry.host), key=lambda a: entry.sources[a].since)
            del entry.sources[newest]  # a flood of new addresses must not push out those known before it
        if entry.record == shown:
            return []
        return [TableEvent("updated", entry.record)]

    def _goodbye(self, message: Goodbye, ip: str, source: tuple[str, int]) -> list[TableEvent]:
        entry = self._entries.get(message.server_id)
        if entry is None:
            return []
        if ip not in entry.sources:  # a goodbye for a server from an address it never used: spoofed-looking
            self.drops("spoofed_goodbye", source)
            return []
        if ip != entry.host:  # that address only (a real server's goodbye comes through the host too)
            del entry.sources[ip]
            return []
        del self._entries[message.server_id]
        return [TableEvent("removed", entry.record, "goodbye")]


def _record(message: Beacon | Reply, host: str, latency: float | None) -> ServerRecord:
    return ServerRecord(
        server_id=message.server_id,
        name=message.name,
        host=host,
        port=message.port,
        proto=message.proto,
        users=message.users,
        rooms=message.rooms,
        workers=message.workers,
        load=message.load,
        latency_ms=None if latency is None else round(latency, 3),
    )


# --- I/O -------------------------------------------------------------------------------------------------


class Browser:
    """Probes and listens inside the running loop; ``wait`` hands out table events as they happen.

    Probes go out at open, PROBE_RETRY_DELAY later, then every ``reprobe`` seconds if given (watching).
    Use as ``async with Browser(config) as b: events = await b.wait(deadline)``.
    """

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        probe: tuple[str, ...] = (),
        reprobe: float | None = None,
        table: ServerTable | None = None,
        interfaces: Callable[[], list[Interface]] = list_interfaces,
        quiet: bool = False,
    ) -> None:
        """``quiet``: what it has to say of interfaces, targets and sends at debug level (a search its caller
        repeats, whose outcome it says itself)."""
        self.config = config
        self.probe = probe
        self.reprobe = reprobe
        self.table = table if table is not None else ServerTable(refresh=reprobe)
        self._list_interfaces = interfaces
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe_sock: socket.socket | None = None
        self._listening: dict[str, socket.socket] = {}  # broadcast address -> the socket bound to it
        self._broadcasts: list[str] | None = None  # the interfaces' broadcast addresses at the last read
        self._explicit: list[tuple[str, int]] = []  # --probe targets, resolved once
        self._refresh_at = math.inf
        self._targets: list[tuple[str, int]] = []
        self._next_probe = math.inf
        self._retry_sent = False
        self._events: list[TableEvent] = []
        self._wakeup = asyncio.Event()
        self._send_errors = SendErrors(quiet=quiet)
        self._warn = log.debug if quiet else log.warning
        self.received = 0  # datagrams read, whatever became of them

    async def __aenter__(self) -> Browser:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def targets(self) -> list[tuple[str, int]]:
        """Where probes go: broadcast addresses, then --probe targets."""
        return list(self._targets)

    @property
    def probe_port(self) -> int:
        """The ephemeral UDP port replies come back to (0 before open)."""
        return self._probe_sock.getsockname()[1] if self._probe_sock is not None else 0

    async def open(self, *, resolve_timeout: float = 1.0) -> None:
        """Open the sockets and send the first probes. OSError if not even the probe socket can be opened."""
        try:
            await self._open(resolve_timeout)
        except BaseException:
            self.close()
            raise

    async def _open(self, resolve_timeout: float) -> None:
        self._loop = loop = asyncio.get_running_loop()
        port = self.config.discovery_port
        chosen, problems = choose_interfaces(self.config.interface, self._list_interfaces())
        for problem in problems:
            self._warn("discovery: %s", problem)
        self._explicit = await resolve_targets(self.probe, port, timeout=resolve_timeout)
        self._probe_sock = open_udp("0.0.0.0", 0, reuse=False, broadcast=True)
        loop.add_reader(self._probe_sock.fileno(), self._on_readable, self._probe_sock)
        self._use_broadcasts([bcast for bcast, _ in broadcast_targets(chosen)])
        if not self._targets:
            self._warn("discovery: nothing to probe (hint: --interface NAME, or --probe HOST)")
        # A browser that keeps running (--watch) re-reads the interfaces as the announcer does: a Wi-Fi that
        # comes up, or an address DHCP changed, after it started is probed and heard then.
        self._refresh_at = loop.time() + INTERFACE_REFRESH if self.reprobe else math.inf
        self._next_probe = loop.time()
        self._tick(loop.time())

    def _use_broadcasts(self, broadcasts: list[str]) -> bool:
        """Listen on and probe exactly these broadcast addresses (and the --probe targets); True if changed."""
        loop, port = self._loop, self.config.discovery_port
        if broadcasts == self._broadcasts or loop is None:
            return False
        for bcast in [b for b in self._listening if b not in broadcasts]:
            sock = self._listening.pop(bcast)
            loop.remove_reader(sock.fileno())
            sock.close()
        for bcast in broadcasts:
            if bcast in self._listening:
                continue
            try:
                sock = open_udp(bcast, port, reuse=True, broadcast=True)
            except OSError as exc:
                self._warn(
                    "discovery: cannot listen for beacons on %s:%d: %s (hint: %s)",
                    bcast,
                    port,
                    exc.strerror,
                    bind_hint(exc),
                )
                continue
            self._listening[bcast] = sock
            loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._broadcasts = broadcasts
        self._targets = list(dict.fromkeys([(b, port) for b in broadcasts] + self._explicit))
        log.debug("browser: probing %s", ", ".join(f"{h}:{p}" for h, p in self._targets) or "nothing")
        return True

    def _refresh_interfaces(self, now: float) -> None:
        self._refresh_at = now + INTERFACE_REFRESH
        chosen, _ = choose_interfaces(self.config.interface, self._list_interfaces())
        if self._use_broadcasts([bcast for bcast, _ in broadcast_targets(chosen)]):
            self._next_probe = now  # a new subnet: ask it at once

    def close(self) -> None:
        """Close every socket (idempotent)."""
        socks = [s for s in [self._probe_sock, *self._listening.values()] if s is not None]
        self._probe_sock = None
        self._listening.clear()
        for sock in socks:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._wakeup.set()

    def send_probes(self) -> None:
        """One probe (one fresh nonce) to every target."""
        sock, loop = self._probe_sock, self._loop
        if sock is None or loop is None:
            return
        nonce = os.urandom(NONCE_SIZE)
        now = loop.time()
        self.table.probe_sent(nonce, now)
        data = encode(Probe(nonce))
        for target in self._targets:
            try:
                sock.sendto(data, target)
            except (BlockingIOError, InterruptedError):
                self.table.drops("probe_not_sent", target)
            except OSError as exc:
                self._send_errors.report("probe", target, exc, now)

    def _tick(self, now: float) -> None:
        """Re-read the interfaces when due, send the probes that are due and collect expiries."""
        if now >= self._refresh_at and self._probe_sock is not None:
            self._refresh_interfaces(now)
        if now >= self._next_probe:
            self.send_probes()
            if not self._retry_sent:
                self._retry_sent = True
                self._next_probe = now + PROBE_RETRY_DELAY
            else:
                self._next_probe = now + self.reprobe if self.reprobe else math.inf
        self._events.extend(self.table.expire(now))

    async def wait(self, until: float = math.inf) -> list[TableEvent]:
        """The next events, as soon as there are some; [] once the loop time reaches ``until``."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("Browser.wait before open")
        while True:
            now = loop.time()
            self._tick(now)
            if self._events:
                events, self._events = self._events, []
                return events
            if now >= until or self._probe_sock is None:
                return []
            deadline = self.table.next_deadline()
            wake = min(until, self._next_probe, self._refresh_at, math.inf if deadline is None else deadline)
            self._wakeup.clear()
            if math.isinf(wake):
                await self._wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), max(wake - now, 0.0))

    def _on_readable(self, sock: socket.socket) -> None:
        loop = self._loop
        if loop is None:
            return
        for _ in range(READ_BUDGET):
            try:
                data, source = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error queued by an earlier probe: nothing to read
                self.table.drops("recv_error", None, str(exc))
                continue
            events = self.handle_datagram(data, source, loop.time())
            if events:
                self._events.extend(events)
                self._wakeup.set()

    def handle_datagram(self, data: bytes, source: tuple[str, int], now: float) -> list[TableEvent]:
        """Decode one datagram and feed it to the table (public for tests)."""
        self.received += 1
        if len(data) > MAX_DATAGRAM:
            self.table.drops("oversized", source)
            return []
        if not is_discovery(data):
            self.table.drops("foreign", source)
            return []
        try:
            message = decode(data)
        except RemoteProtocolError as exc:
            self.table.drops(exc.code, source, exc.message)
            return []
        return self.table.receive(message, source, now)


async def browse(
    config: DiscoveryConfig,
    *,
    timeout: float,
    probe: tuple[str, ...] = (),
    enough: Callable[[list[ServerRecord]], bool] | None = None,
    quiet: bool = False,
) -> list[ServerRecord]:
    """The servers found within ``timeout`` seconds (sorted by name): probe, listen, return at the deadline,
    or ENOUGH_GRACE after ``enough`` says the servers found will do (`join NAME`: that one answered; the
    grace lets a second of that name answer too). Probes go out every PROBE_RETRY_DELAY until then: on a
    lossy network two probes were often both lost (a review: 30 % loss, 1 search in 4 found nothing)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    # (the table as a one-off search has it: the repeated probes do not stretch its entries' lives)
    browser = Browser(config, probe=probe, reprobe=PROBE_RETRY_DELAY, table=ServerTable(refresh=None), quiet=quiet)
    await browser.open(resolve_timeout=timeout)  # a slow name lookup eats into the timeout, never beyond it
    try:
        if not browser.targets:
            return []
        while await browser.wait(until):  # [] only once the deadline has passed
            if enough is not None and enough(browser.table.records()):
                until = min(until, loop.time() + ENOUGH_GRACE)
                enough = None
        return browser.table.records()
    finally:
        browser.close()


ENOUGH_GRACE: Final = 0.3  # seconds a search goes on once what it looked for answered (see browse)


async def watch(
    config: DiscoveryConfig, *, probe: tuple[str, ...] = (), reprobe: float = WATCH_PROBE_INTERVAL
) -> AsyncGenerator[TableEvent, None]:
    """Table events until the consumer stops; wrap in ``contextlib.aclosing`` so the sockets close at once."""
    async with Browser(config, probe=probe, reprobe=reprobe) as browser:
        while True:
            for event in await browser.wait():
                yield event
