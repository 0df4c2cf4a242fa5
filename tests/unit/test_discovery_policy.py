"""The announcer's reply policy: token buckets per source and in total (bounded), and whom it answers."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from lanchat.config import DiscoveryConfig
from lanchat.discovery.announcer import Announcer, ReplyLimiter, ServerInfo, reply_address
from lanchat.discovery.const import MAX_PERIOD
from lanchat.discovery.interfaces import Interface
from lanchat.discovery.sockets import resolve_targets
from lanchat.protocol.beacon import Beacon, Goodbye, encode


def test_burst_then_rate_per_source() -> None:
    lim = ReplyLimiter(rate_per_source=2, burst_per_source=3, rate_total=1000, burst_total=1000)
    assert [lim.allow("a", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert lim.allow("b", 0.0)  # another source has its own bucket
    assert not lim.allow("a", 0.4)  # 0.8 token
    assert lim.allow("a", 0.5)  # 1 token after 0.5 s at 2/s
    assert not lim.allow("a", 0.5)


def test_flood_from_one_source_is_answered_at_the_rate() -> None:
    lim = ReplyLimiter(rate_per_source=5, burst_per_source=10, rate_total=1000, burst_total=1000)
    allowed = sum(lim.allow("a", i * 0.001) for i in range(10_000))  # 10 000 probes in 10 s
    assert allowed <= 10 + 5 * 10 + 1
    assert allowed >= 10 + 5 * 10 - 1


def test_global_bucket_bounds_many_sources() -> None:
    lim = ReplyLimiter(rate_per_source=100, burst_per_source=100, rate_total=10, burst_total=20)
    allowed = sum(lim.allow(f"src{i}", 0.0) for i in range(1000))
    assert allowed == 20
    assert sum(lim.allow(f"src{i}", 1.0) for i in range(1000)) == 10


def test_source_table_is_bounded_lru() -> None:
    lim = ReplyLimiter(rate_per_source=1, burst_per_source=1, rate_total=1e9, burst_total=1e9, max_sources=8)
    for i in range(1000):
        lim.allow(f"src{i}", 0.0)
    assert len(lim) == 8
    assert not lim.allow("src999", 0.0)  # recent sources are still remembered (bucket empty)


def test_clock_going_backwards_grants_nothing() -> None:
    lim = ReplyLimiter(rate_per_source=1, burst_per_source=1, rate_total=10, burst_total=10, now=100.0)
    assert lim.allow("a", 100.0)
    assert not lim.allow("a", 50.0)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ReplyLimiter(rate_per_source=0)
    with pytest.raises(ValueError):
        ReplyLimiter(max_sources=0)


# --- which probes are answered, with which address ----------------------------------------------------

LAN = Interface("eth0", "198.51.100.3", "255.255.255.0", "198.51.100.255")  # documentation addresses, data only


def test_reply_address_policy() -> None:
    trusted = frozenset({"203.0.113.50"})
    assert reply_address(("127.0.0.1", 40000), [LAN], trusted, 7272) == ("127.0.0.1", "")
    assert reply_address(("198.51.100.77", 40000), [LAN], trusted, 7272) == ("198.51.100.3", "")
    assert reply_address(("203.0.113.50", 40000), [LAN], trusted, 7272) == ("0.0.0.0", "")  # a --beacon-to host
    assert reply_address(("203.0.113.51", 40000), [LAN], trusted, 7272) == (None, "not_directly_connected")
    assert reply_address(("198.51.100.77", 7272), [LAN], trusted, 7272) == (None, "spoofed_source")  # a server
    assert reply_address(("198.51.100.77", 0), [LAN], trusted, 7272) == (None, "spoofed_source")
    spoofed = ("255.255.255.255", 40000)  # doc example: data only
    assert reply_address(spoofed, [LAN], trusted, 7272) == (None, "spoofed_source")
    assert reply_address(("198.51.100.77", 40000), [], trusted, 7272) == (None, "not_directly_connected")
    for subnet_broadcast in ("198.51.100.255", "198.51.100.0"):  # the reply would go to the whole subnet
        assert reply_address((subnet_broadcast, 40000), [LAN], trusted, 7272) == (None, "spoofed_source")
    point_to_point = Interface("tun0", "192.0.2.1", "255.255.255.254", None)  # a /31: both ends are hosts
    assert reply_address(("192.0.2.0", 40000), [point_to_point], trusted, 7272) == ("192.0.2.1", "")


def test_resolve_targets_without_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names go through the loop's resolver (faked here: a test must not send a DNS query)."""

    async def scenario() -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()

        async def fake_getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
            if host == "kitchen.example":
                return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.51.100.9", port))]
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
        return await resolve_targets(
            ("127.0.0.1", "kitchen.example:9000", "nowhere.example", "bad:port:x", "127.0.0.1"), 7272, timeout=1
        )

    assert asyncio.run(scenario()) == [("127.0.0.1", 7272), ("198.51.100.9", 9000)]


def test_another_server_with_our_id_is_told_to_the_operator(caplog: pytest.LogCaptureFixture) -> None:
    """Two hosts serving from a copied data directory (a cloned VM, `cp -a`) share a server id: browsers list
    one of them and never the other, and neither server said so though each heard the other's beacons (a
    review on a LAN of namespaces). Our own beacons, heard back from this host's addresses, are not it.
    Without start() there is no socket: nothing is sent."""
    lo = Interface("lo", "127.0.0.1", "255.0.0.0", "127.255.255.255")
    info = ServerInfo(users=1, rooms=1, workers=1, load=0.0)
    cfg = DiscoveryConfig(interface=("lo", "eth0"))
    sid = "5" * 32
    a = Announcer(cfg, server_id=sid, name="lab", tcp_port=7306, info=lambda: info, interfaces=lambda: [lo, LAN])
    a._refresh_interfaces()

    def beacon(server_id: str = sid, port: int = 7306, kind: type[Beacon | Goodbye] = Beacon) -> bytes:
        if kind is Goodbye:
            return encode(Goodbye(server_id, "0.0.0.0", port))
        return encode(Beacon(server_id, "0.0.0.0", port, 1, 5000, 0, 0, 1, 0.0, "lab"))

    with caplog.at_level(logging.WARNING, logger="lanchat"):
        for own in (("127.0.0.1", 7272), ("198.51.100.3", 7272)):  # ours, heard back on loopback and on eth0
            a.handle_datagram(beacon(), own, 0.0)
        a.handle_datagram(beacon("6" * 32), ("198.51.100.9", 7272), 0.0)  # another server: none of our business
        assert not caplog.records and a.stats().dropped == {}
        a.handle_datagram(beacon(), ("198.51.100.9", 7272), 1.0)  # another host with our id
        [said] = caplog.records
        assert "another server at 198.51.100.9 (chat port 7306) announces this server's id 55555555" in said.message
        assert "delete server_id" in said.message
        a.handle_datagram(beacon(port=7307), ("127.0.0.1", 7272), 2.0)  # this host, another chat port: a copy
        a.handle_datagram(beacon(kind=Goodbye), ("198.51.100.9", 7272), 60.9)
        assert len(caplog.records) == 1 and a.stats().dropped == {"twin_id": 3}  # said once a minute
        a.handle_datagram(beacon(port=7307), ("127.0.0.1", 7272), 61.0)
        assert len(caplog.records) == 2 and "another server at 127.0.0.1 (chat port 7307)" in caplog.records[1].message
    # A server bound to one address sends from it: another address of this host with our port is a copy bound
    # there (a later review: two servers on 127.0.0.1 and 127.0.0.2, one port, said nothing)
    bound = Announcer(cfg, server_id=sid, name="lab", tcp_port=7306, info=lambda: info, interfaces=lambda: [lo, LAN],
                      host="127.0.0.1")  # fmt: skip
    bound._refresh_interfaces()
    bound.handle_datagram(beacon(), ("127.0.0.1", 7272), 0.0)  # its own
    assert bound.stats().dropped == {}
    bound.handle_datagram(beacon(), ("127.0.0.2", 7272), 0.0)
    assert bound.stats().dropped == {"twin_id": 1}
    # Where it cannot send from the bound address (no IP_PKTINFO: not Linux), its beacons leave from the
    # interface's: its own, not a copy's (a later review)
    bound._pktinfo = []
    bound.handle_datagram(beacon(), ("127.0.0.3", 7272), 0.0)
    assert bound.stats().dropped == {"twin_id": 1}


def test_a_beacon_interval_longer_than_browsers_wait_is_shortened(caplog: pytest.LogCaptureFixture) -> None:
    """Browsers count at most a minute of an interval: a server beaconing every 250 s came and went in a
    watch every few minutes (a review). It beacons every 60 s, and says so; a service file with more starts."""
    info = ServerInfo()
    with caplog.at_level(logging.WARNING, logger="lanchat"):
        a = Announcer(DiscoveryConfig(beacon_interval=250.0), server_id="5" * 32, name="lab", tcp_port=7306,
                      info=lambda: info)  # fmt: skip
        assert (a.config.beacon_interval, a._interval_ms) == (MAX_PERIOD, 60_000)
        assert "--beacon-interval 250 is more than browsers wait for: beacons every 60 s" in caplog.text
        edge = Announcer(DiscoveryConfig(beacon_interval=MAX_PERIOD), server_id="5" * 32, name="lab", tcp_port=7306,
                         info=lambda: info)  # fmt: skip
        assert edge._interval_ms == 60_000 and len(caplog.records) == 1
