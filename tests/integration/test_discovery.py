"""Discovery on loopback, in process: announcers and browsers in one event loop, real UDP sockets.

Every socket here is on 127.0.0.0/8 (config interface=("lo",), probes to 127.255.255.255); each test
uses its own free discovery port so tests cannot hear each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from discovery_support import announcer_process, free_udp_port, loopback_config, run_async, until, until_count

from lanchat.config import DiscoveryConfig
from lanchat.discovery import announcer as announcer_module
from lanchat.discovery.announcer import Announcer, ReplyLimiter, ServerInfo
from lanchat.discovery.browser import Browser, ServerTable, browse
from lanchat.discovery.const import REPLY_BURST_PER_SOURCE, REPLY_BURST_TOTAL, REPLY_RATE_PER_SOURCE, REPLY_RATE_TOTAL
from lanchat.protocol import beacon as b

LOOPBACK_BROADCAST = "127.255.255.255"


@pytest.fixture
def port() -> int:
    return free_udp_port()


config = loopback_config


def announcer(cfg: DiscoveryConfig, name: str, tcp_port: int, **kw: object) -> Announcer:
    info = ServerInfo(users=2, rooms=3, workers=1, load=0.5)
    return Announcer(cfg, server_id=uuid.uuid4().hex, name=name, tcp_port=tcp_port, info=lambda: info, **kw)  # type: ignore[arg-type]


@pytest.fixture
def raw() -> Iterator[socket.socket]:
    """A plain UDP socket on 127.0.0.1 for hand-made probes."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    yield s
    s.close()


def drain(sock: socket.socket) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("beacon", [False, True], ids=["probes-only", "beaconing"])
def test_two_servers_on_one_host_both_found(port: int, beacon: bool) -> None:
    """Both share the UDP port (SO_REUSEPORT); broadcast probes reach both, replies come back unicast.

    probes-only: the servers do not beacon, so only the probes (sent to 127.255.255.255) can find them.
    """

    async def scenario() -> None:
        a = announcer(config(port, beacon=beacon), "alpha", 7001)
        c = announcer(config(port, beacon=beacon), "charlie", 7003)
        await a.start()
        await c.start()
        try:
            assert a.active and c.active
            # two browsers at once: each hears every server (broadcast reaches all sockets on the port)
            found, found_too = await asyncio.gather(
                browse(config(port), timeout=0.5), browse(config(port), timeout=0.5)
            )
        finally:
            await a.stop()
            await c.stop()
        assert [(r.name, r.host, r.port) for r in found] == [
            ("alpha", "127.0.0.1", 7001),
            ("charlie", "127.0.0.1", 7003),
        ]
        assert {r.server_id for r in found} == {a.server_id, c.server_id}
        assert [r.server_id for r in found_too] == [r.server_id for r in found]
        for r in found:
            assert r.latency_ms is not None and 0 <= r.latency_ms < 500
            assert (r.users, r.rooms, r.workers, r.load, r.proto) == (2, 3, 1, 0.5, 1)
        assert a.stats().replies >= 1 and c.stats().replies >= 1

    run_async(scenario())


def test_browse_returns_at_its_timeout_when_nothing_answers(port: int) -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await browse(config(port), timeout=0.3) == []
        return loop.time() - t0

    assert 0.3 <= run_async(scenario()) < 5  # at its timeout, not before; the upper bound only guards a hang


def test_browse_probes_again_until_its_timeout_and_stops_early_once_enough_answered(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LAN review: two probes (at 0 and 0.25 s) whatever the timeout, so at 30 % loss a search in four
    found nothing; and `join NAME` waited its whole --timeout though that server answered at once."""
    sent: list[float] = []
    send = Browser.send_probes

    def counted(self: Browser) -> None:
        sent.append(time.monotonic())
        send(self)

    monkeypatch.setattr(Browser, "send_probes", counted)

    async def scenario() -> tuple[int, float, list[str]]:
        assert await browse(config(port), timeout=1.0) == []
        probes = len(sent)
        a = announcer(config(port), "quick", 7001)
        await a.start()
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            found = await browse(config(port), timeout=10.0, enough=lambda rs: any(r.name == "quick" for r in rs))
            return probes, loop.time() - t0, [r.name for r in found]
        finally:
            await a.stop()

    probes, took, names = run_async(scenario(), timeout=20)
    assert probes >= 4  # every 0.25 s, not twice
    assert names == ["quick"] and took < 5  # the answer and a short grace, not the 10 s (a bound on a hang)


def test_no_discovery_binds_nothing(port: int) -> None:
    async def scenario() -> None:
        a = announcer(config(port, discovery=False), "off", 7001)
        await a.start()
        assert not a.active
        assert await browse(config(port), timeout=0.2) == []
        await a.stop()

    run_async(scenario())


def test_goodbye_removes_a_server_from_a_watching_browser(port: int) -> None:
    async def scenario() -> None:
        a = announcer(config(port, beacon_interval=30.0), "alpha", 7001)  # expiry would take 90 s
        async with Browser(config(port), reprobe=None) as watcher:
            await a.start()
            [added] = await watcher.wait()
            assert added.kind == "added" and added.record.name == "alpha"
            await a.stop()
            await a.stop()  # idempotent
            events = await asyncio.wait_for(watcher.wait(), 1.0)
            removed = [e for e in events if e.kind == "removed"]
            assert removed and removed[0].reason == "goodbye" and removed[0].record.server_id == a.server_id
            assert len(watcher.table) == 0

    run_async(scenario())


def test_a_watching_browser_hears_an_interface_that_comes_up_after_it_started(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review on a real LAN: `discover --watch` started before the link came up (or before DHCP moved
    it to another subnet) probed nothing and listed nothing, ever. It re-reads the interfaces every
    INTERFACE_REFRESH, as the server does, probing a new subnet at once; one that went is let go."""
    from lanchat.discovery import browser as browser_module
    from lanchat.discovery.interfaces import Interface

    monkeypatch.setattr(browser_module, "INTERFACE_REFRESH", 0.1)
    lo = Interface("lo", "127.0.0.1", "255.0.0.0", LOOPBACK_BROADCAST)
    up: list[Interface] = []

    async def scenario() -> None:
        a = announcer(config(port, beacon_interval=30.0), "late", 7003)  # no beacon during the test
        await a.start()
        try:
            async with Browser(config(port), probe=("127.0.0.1",), interfaces=lambda: []) as only_probing:
                assert only_probing.targets == [("127.0.0.1", port)]  # (--probe needs no interface)
            async with Browser(config(port), reprobe=30.0, interfaces=lambda: list(up)) as watcher:
                assert watcher.targets == []
                assert await watcher.wait(asyncio.get_running_loop().time() + 0.3) == []  # nothing to hear
                up.append(lo)  # the link comes up
                [added] = await asyncio.wait_for(watcher.wait(), 2.0)  # probed at the next re-read
                assert added.kind == "added" and added.record.name == "late"
                assert watcher.targets == [(LOOPBACK_BROADCAST, port)]
                up.clear()  # and goes: its socket closed at the next re-read
                assert await watcher.wait(asyncio.get_running_loop().time() + 0.3) == []
                assert watcher.targets == []
        finally:
            await a.stop()

    run_async(scenario())


def test_beacons_alone_are_heard_and_updates_seen(port: int) -> None:
    """A server that starts after the browser's first probe is learnt from its beacon (no latency then)."""
    users = [1]

    async def scenario() -> None:
        cfg = config(port, beacon_interval=0.1)
        a = Announcer(
            cfg, server_id=uuid.uuid4().hex, name="busy", tcp_port=7001, info=lambda: ServerInfo(users=users[0])
        )
        async with Browser(config(port), reprobe=None) as watcher:
            await a.start()
            try:
                [added] = await watcher.wait()
                assert added.kind == "added" and added.record.users == 1 and added.record.latency_ms is None
                users[0] = 5
                while True:
                    [event] = await watcher.wait()
                    if event.record.users == 5:
                        assert event.kind == "updated"
                        break
            finally:
                await a.stop()

    run_async(scenario())


def test_silent_server_expires_after_three_intervals(tmp_path: Path, port: int) -> None:
    """A server killed without goodbye disappears after 3 beacon intervals (0.2 s each here)."""
    with announcer_process(
        name="doomed", port=7009, data_dir=tmp_path, discovery_port=port, extra=["--beacon-interval", "0.2"]
    ) as (proc, ready):

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            async with Browser(config(port), reprobe=None) as watcher:
                [added] = await watcher.wait(loop.time() + 5)
                assert added.record.server_id == ready["server_id"]
                proc.kill()
                killed = loop.time()
                [removed] = await watcher.wait(loop.time() + 5)
                assert removed.kind == "removed" and removed.reason == "expired"
                assert loop.time() - killed > 0.2  # not before 3 x 0.2 s after the last beacon (less the last gap)

        run_async(scenario())
        proc.wait(5)


def test_reply_is_never_larger_than_its_probe(port: int, raw: socket.socket) -> None:
    name = "n" * b.NAME_MAX_BYTES  # the longest name: the largest reply
    limiter = ReplyLimiter(rate_per_source=1e6, burst_per_source=1e6, rate_total=1e6, burst_total=1e6)
    sizes = [*range(b.PROBE_MIN_SIZE, b.PROBE_SIZE + 3), 600, b.MAX_DATAGRAM]

    async def scenario() -> None:
        a = announcer(config(port, beacon=False), name, 7001, limiter=limiter)
        await a.start()
        try:
            probes: dict[bytes, int] = {}
            for size in sizes:
                nonce = os.urandom(b.NONCE_SIZE)
                probes[nonce] = size
                raw.sendto(b.encode(b.Probe(nonce, size=size)), ("127.0.0.1", port))
            await until(lambda: a.stats().probes == len(sizes), what="all probes handled")
        finally:
            await a.stop()
        replies = [b.decode(d) for d in drain(raw)]
        answered = {}
        for reply in replies:
            assert isinstance(reply, b.Reply)
            size = len(b.encode(reply))
            assert size <= probes[reply.nonce], "amplification!"
            answered[probes[reply.nonce]] = reply.name
        smallest_reply = b.REPLY_MAX_SIZE - b.NAME_MAX_BYTES
        assert min(answered) == smallest_reply  # smaller probes got nothing at all
        assert a.stats().dropped["probe_too_small"] == smallest_reply - b.PROBE_MIN_SIZE
        assert answered[b.PROBE_SIZE] == name and answered[b.MAX_DATAGRAM] == name
        assert answered[smallest_reply] == ""

    run_async(scenario())


def test_probe_flood_from_one_source_is_answered_at_a_bounded_rate(port: int, raw: socket.socket) -> None:
    count = 1000

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a = announcer(config(port, beacon=False), "flooded", 7001)
        await a.start()
        try:
            t0 = loop.time()
            probe = b.encode(b.Probe(os.urandom(b.NONCE_SIZE)))
            for i in range(count):
                raw.sendto(probe, ("127.0.0.1", port))
                if i % 50 == 49:
                    await until_count(lambda: a.stats().probes, i + 1, what="probes read")
            elapsed = loop.time() - t0
        finally:
            await a.stop()
        replies = len(drain(raw))
        assert a.stats().probes == count
        assert REPLY_BURST_PER_SOURCE <= replies <= REPLY_BURST_PER_SOURCE + REPLY_RATE_PER_SOURCE * elapsed + 1
        assert a.stats().dropped["rate_limited"] == count - replies

    run_async(scenario())


def test_probes_from_many_sources_are_bounded_in_total(port: int) -> None:
    """Distinct sources (127.0.0.2 ... 127.0.0.201) each stay under their own limit; the total does not."""
    socks = []
    try:
        for i in range(200):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.0.{i + 2}", 0))
            s.setblocking(False)
            socks.append(s)

        async def scenario() -> tuple[int, float]:
            loop = asyncio.get_running_loop()
            a = announcer(config(port, beacon=False), "popular", 7001)
            await a.start()
            try:
                t0 = loop.time()
                for rnd in range(5):
                    for s in socks:
                        s.sendto(b.encode(b.Probe(os.urandom(b.NONCE_SIZE))), ("127.0.0.1", port))
                    await until_count(lambda: a.stats().probes, 200 * (rnd + 1), what="probes read")
                return a.stats().replies, loop.time() - t0
            finally:
                await a.stop()

        replies, elapsed = run_async(scenario())
        received = sum(len(drain(s)) for s in socks)
        assert received == replies
        assert REPLY_BURST_TOTAL <= replies <= REPLY_BURST_TOTAL + REPLY_RATE_TOTAL * elapsed + 1
    finally:
        for s in socks:
            s.close()


def _garbage(rng: random.Random, real_id: str) -> bytes:
    """One hostile or broken datagram."""
    other_id = "f" * 32  # beacons never claim the real id: whoever can beacon as a server can say goodbye for it
    valid: list[b.Message] = [
        b.Beacon(other_id, "127.0.0.1", 7001, 1, 1000, 1, 1, 1, 0.0, "other"),
        b.Reply(other_id, "127.0.0.1", 7001, 1, 1000, 1, 1, 1, 0.0, "other", os.urandom(8)),  # unknown nonce
        b.Goodbye(real_id, "127.0.0.1", 7001),  # from an address the real server never used: spoofed
        b.Probe(os.urandom(8)),
    ]
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    if kind == 1:
        return b.MAGIC + bytes([rng.choice([0, 1, 2, 255]), rng.randrange(256)]) + rng.randbytes(rng.randrange(200))
    if kind == 2:
        data = b.encode(rng.choice(valid))
        return data[: rng.randrange(len(data))]
    if kind == 3:
        mutated = bytearray(b.encode(rng.choice(valid)))
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return bytes(mutated)
    if kind == 4:
        return b.MAGIC + bytes([1, 1]) + rng.randbytes(rng.randrange(b.MAX_DATAGRAM, 2000))  # oversized
    if kind == 5:  # a valid beacon of a server that does not exist: fills the table up to its cap
        fake = b.Beacon(rng.randbytes(16).hex(), "127.0.0.1", rng.randrange(1, 65536), 1, 60_000, 0, 0, 0, 0.0, "fake")
        return b.encode(fake)
    if kind == 6:
        return b.encode(rng.choice(valid))
    return bytes(rng.randrange(256) for _ in range(rng.randrange(6, 40)))


def test_ten_thousand_random_datagrams_leave_both_sides_alive_and_bounded(port: int) -> None:
    rng = random.Random(20240604)
    cap = 32
    senders = []
    try:
        for i in range(16):  # 127.0.0.2 ... 127.0.0.17: the real server is only ever heard at 127.0.0.1
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.bind((f"127.0.0.{i + 2}", 0))
            s.setblocking(False)
            senders.append(s)

        async def scenario() -> None:
            a = announcer(config(port, beacon_interval=0.5), "alpha", 7001)
            await a.start()
            try:
                async with Browser(config(port), reprobe=1.0, table=ServerTable(max_servers=cap)) as browser:
                    [added] = await browser.wait()
                    assert added.record.server_id == a.server_id
                    targets = [("127.0.0.1", port), ("127.0.0.1", browser.probe_port), (LOOPBACK_BROADCAST, port)]
                    sent_to_announcer = sent_to_browser = 0
                    base_a, base_b = a.stats().received, browser.received
                    for i in range(10_000):
                        target = targets[i % 3]
                        senders[i % len(senders)].sendto(_garbage(rng, a.server_id), target)
                        sent_to_announcer += target[1] == port
                        sent_to_browser += target != ("127.0.0.1", port)
                        if i % 100 == 99:  # let both sides read before the kernel's buffers overflow
                            await until_count(lambda: a.stats().received - base_a, sent_to_announcer * 0.99)
                            await until_count(lambda: browser.received - base_b, sent_to_browser * 0.99)
                    # both alive: the real server is still listed, the table never outgrew its cap
                    assert len(browser.table) <= cap
                    assert browser.table.get(a.server_id) is not None
                    drops = browser.table.drops.counts()
                    assert drops.get("table_full", 0) > 0 and drops.get("spoofed_goodbye", 0) > 0
                    assert drops.get("unknown_nonce", 0) > 0 and drops.get("oversized", 0) > 0
                found = await browse(config(port), timeout=0.3)
                assert a.server_id in {r.server_id for r in found}  # the announcer still answers
                assert a.stats().dropped.get("bad_beacon", 0) > 0
            finally:
                await a.stop()

        run_async(scenario(), timeout=25)
    finally:
        for s in senders:
            s.close()


def test_beacon_to_a_unicast_target_gets_beacons_and_the_goodbye(port: int, raw: socket.socket) -> None:
    """--beacon-to HOST:PORT (here a plain socket on loopback) receives every beacon and the goodbye."""
    target = f"127.0.0.1:{raw.getsockname()[1]}"

    async def scenario() -> None:
        a = announcer(config(port, beacon_interval=0.05, beacon_to=(target,)), "alpha", 7001)
        await a.start()
        try:
            await until_count(lambda: a.stats().beacons, 6, what="beacons")  # 3 rounds x (lo broadcast + target)
        finally:
            await a.stop()
        got = [b.decode(d) for d in drain(raw)]
        beacons = [m for m in got if isinstance(m, b.Beacon)]
        assert len(beacons) >= 3 and all(m.server_id == a.server_id and m.address == "127.0.0.1" for m in beacons)
        assert isinstance(got[-1], b.Goodbye) and got[-1].server_id == a.server_id

    run_async(scenario())


def test_a_beacon_to_name_that_cannot_be_a_name_does_not_silence_the_server(port: int, raw: socket.socket) -> None:
    """`--beacon-to a..b` raised UnicodeError from the resolver (locally: no DNS query is sent): the beacon
    task died after its first beacon, and stop() re-raised it: no goodbye, the socket left open."""
    target = f"127.0.0.1:{raw.getsockname()[1]}"

    async def scenario() -> None:
        a = announcer(config(port, beacon_interval=0.05, beacon_to=(target, "a..b")), "alpha", 7001)
        await a.start()
        try:
            await until_count(lambda: a.stats().beacons, 6, what="beacons")  # it goes on beaconing
        finally:
            await a.stop()
        got = [b.decode(d) for d in drain(raw)]
        assert isinstance(got[-1], b.Goodbye) and got[-1].server_id == a.server_id

    run_async(scenario())


def count_rereads(a: Announcer) -> list[float]:
    """When ``a`` re-reads the interfaces, from now on (a list that grows)."""
    rereads: list[float] = []
    real = a._refresh_interfaces

    def counted() -> None:
        rereads.append(time.monotonic())
        real()

    a._refresh_interfaces = counted  # type: ignore[method-assign]
    return rereads


def test_a_bad_beacon_to_is_warned_about_once_however_often_names_are_resolved(
    port: int, raw: socket.socket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The names among --beacon-to are resolved again at each re-read of the interfaces; the literals and the
    bad values were split again with them, and a bad one warned about each time."""
    monkeypatch.setattr(announcer_module, "INTERFACE_REFRESH", 0.05)
    listening = raw.getsockname()[1]

    async def scenario() -> None:
        targets = (f"127.0.0.1:{listening}", f"localhost:{listening}", "a:b")
        a = announcer(config(port, beacon_interval=0.05, beacon_to=targets), "alpha", 7001)
        rereads = count_rereads(a)
        with caplog.at_level(logging.WARNING):
            await a.start()
            try:
                await until(lambda: len(rereads) >= 4, what="three re-reads after the start's")
            finally:
                await a.stop()
        assert a._beacon_to == [("127.0.0.1", listening)]  # the literal and the name: one target
        assert caplog.text.count("ignoring --beacon-to 'a:b'") == 1

    run_async(scenario())


def test_a_failed_beacon_task_still_lets_stop_say_goodbye(port: int, raw: socket.socket) -> None:
    target = f"127.0.0.1:{raw.getsockname()[1]}"

    async def scenario() -> None:
        a = announcer(config(port, beacon_interval=0.05, beacon_to=(target,)), "alpha", 7001)
        await a.start()
        assert a._task is not None
        a._task.cancel()  # stands for any failure of the beacon task: replaced by one that raised

        async def failed() -> None:
            raise RuntimeError("boom")

        a._task = asyncio.ensure_future(failed())
        await asyncio.sleep(0)
        await a.stop()
        assert [m for m in map(b.decode, drain(raw)) if isinstance(m, b.Goodbye)]

    run_async(scenario())


def test_interfaces_are_reread_on_time_whatever_the_beacon_interval(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-reading the interfaces (a Wi-Fi that comes back) used to happen only on a beacon round: every
    minute with --beacon-interval 60, never more often than the beacons."""
    monkeypatch.setattr(announcer_module, "INTERFACE_REFRESH", 0.05)

    async def scenario() -> None:
        a = announcer(config(port, beacon_interval=60.0), "alpha", 7001)
        rereads = count_rereads(a)
        await a.start()
        beacons = a.stats().beacons
        try:
            await until(lambda: len(rereads) >= 3, what="three re-reads")
        finally:
            await a.stop()
        assert a.stats().beacons == beacons  # and no beacon before its minute

    run_async(scenario())
