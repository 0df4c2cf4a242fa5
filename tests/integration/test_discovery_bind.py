"""A server bound to one address (`lanchat serve --host 127.0.0.2`) is announced at that address.

Browsers take a server's address from the source of its datagrams: that was 127.0.0.1 (the loopback
interface's address), where nothing listens, so `lanchat join NAME` failed. Every socket here is on
127.0.0.0/8 (interface lo); each test has its own discovery port. The policy for an address discovery
must not announce everywhere (a loopback one) is checked without a socket (fake interfaces, no start).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from discovery_support import (
    PROCESS_START_TIMEOUT,
    announcer_process,
    free_tcp_port,
    free_udp_port,
    lanchat_cmd,
    loopback_config,
    run_async,
    run_cli,
    spawn,
    until_count,
)

from lanchat.config import DiscoveryConfig
from lanchat.discovery.announcer import Announcer, BindHost, ServerInfo, bind_host
from lanchat.discovery.browser import browse
from lanchat.discovery.interfaces import Interface
from lanchat.protocol import beacon as b

LOOPBACK_BROADCAST = "127.255.255.255"
BOUND = "127.0.0.2"  # on lo with 127.0.0.1 (127.0.0.0/8 is all local on Linux), but not the interface's address


@pytest.fixture
def port() -> int:
    return free_udp_port()


config = loopback_config


def announcer(cfg: DiscoveryConfig, **kw: Any) -> Announcer:
    info = ServerInfo(users=1, rooms=1, workers=1, load=0.0)
    return Announcer(cfg, server_id=uuid.uuid4().hex, name="alt", tcp_port=7306, info=lambda: info, **kw)


@pytest.fixture
def beacon_ear(port: int) -> Iterator[socket.socket]:
    """A socket that hears the loopback broadcasts of ``port`` (as a browser's beacon socket does)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((LOOPBACK_BROADCAST, port))
    s.settimeout(5.0)
    yield s
    s.close()


def test_bind_host_meaning() -> None:
    assert bind_host("0.0.0.0") == bind_host("::") == bind_host("") == BindHost(None, None)
    assert bind_host("127.0.0.2") == BindHost("127.0.0.2", None) and bind_host("127.0.0.2").loopback_only
    assert bind_host("::ffff:192.0.2.7") == BindHost("192.0.2.7", None)  # IPv4-mapped: that IPv4 address
    assert not bind_host("192.0.2.7").loopback_only
    assert bind_host("::1") == BindHost(None, "::1")
    assert bind_host("fe80::1%lo") == BindHost(None, "fe80::1%lo")
    with pytest.raises(ValueError):
        bind_host("localhost")


def test_probe_replies_and_beacons_come_from_the_bound_address(port: int, beacon_ear: socket.socket) -> None:
    async def scenario() -> None:
        a = announcer(config(port), host=BOUND)
        await a.start()
        try:
            data, source = beacon_ear.recvfrom(2048)  # the first beacon, sent at start
            beacon = b.decode(data)
            assert isinstance(beacon, b.Beacon) and beacon.server_id == a.server_id
            assert (source[0], beacon.address) == (BOUND, BOUND)
            [record] = await browse(config(port), timeout=0.5)  # found by its probe reply
            assert (record.host, record.port, record.latency_ms is not None) == (BOUND, 7306, True)
        finally:
            await a.stop()
        while True:  # the goodbye, from the same address (a browser accepts it only from one it heard)
            data, source = beacon_ear.recvfrom(2048)
            message = b.decode(data)
            if isinstance(message, b.Goodbye):
                break
        assert (message.server_id, message.address, source[0]) == (a.server_id, BOUND, BOUND)

    run_async(scenario())


def test_a_wildcard_server_is_still_announced_at_the_interface_address(port: int, beacon_ear: socket.socket) -> None:
    async def scenario() -> None:
        a = announcer(config(port), host="0.0.0.0")
        await a.start()
        try:
            data, source = beacon_ear.recvfrom(2048)
            beacon = b.decode(data)
            assert isinstance(beacon, b.Beacon) and (source[0], beacon.address) == ("127.0.0.1", "127.0.0.1")
            [record] = await browse(config(port), timeout=0.5)
            assert record.host == "127.0.0.1"
        finally:
            await a.stop()

    run_async(scenario())


def test_a_loopback_bound_server_is_announced_on_loopback_only(port: int) -> None:
    """Nobody elsewhere can connect to 127.0.0.2: no beacon for other interfaces, no reply to their probes.
    Without start() there is no socket: only what would be sent is looked at."""
    lo = Interface("lo", "127.0.0.1", "255.0.0.0", "127.255.255.255")
    eth = Interface("eth0", "198.51.100.3", "255.255.255.0", "198.51.100.255")  # documentation addresses, data only
    cfg = config(port, interface=("lo", "eth0"), beacon_to=("127.0.0.9:7000", "198.51.100.7:7000"))
    a = announcer(cfg, host=BOUND, interfaces=lambda: [lo, eth])
    a._refresh_interfaces()
    a._set_beacon_to([("127.0.0.9", 7000), ("198.51.100.7", 7000)])
    assert a._targets_with_address() == [((LOOPBACK_BROADCAST, port), BOUND), (("127.0.0.9", 7000), BOUND)]
    probe = b.encode(b.Probe(b"12345678"))
    a.handle_datagram(probe, ("198.51.100.7", 40000), 0.0)
    assert a.stats().dropped == {"loopback_only": 1}
    a.handle_datagram(probe, ("198.51.100.3", 40000), 0.0)  # a browser on this host, probing eth0: answered
    assert a.stats().dropped == {"loopback_only": 1} and a.stats().probes == 2

    public = announcer(cfg, host="198.51.100.3", interfaces=lambda: [lo, eth])  # any other address: everywhere
    public._refresh_interfaces()
    assert [address for _, address in public._targets_with_address()] == ["198.51.100.3", "198.51.100.3"]


def test_a_server_bound_to_its_address_on_one_lan_is_not_announced_on_another(port: int) -> None:
    """A host on two LANs, serving on its address on one (--host 198.51.100.3): its beacons and replies on
    the other LAN told browsers there an address they cannot reach (join: network unreachable)."""
    lo = Interface("lo", "127.0.0.1", "255.0.0.0", "127.255.255.255")
    lan_a = Interface("eth0", "198.51.100.3", "255.255.255.0", "198.51.100.255")  # documentation addresses
    lan_b = Interface("eth1", "203.0.113.3", "255.255.255.0", "203.0.113.255")
    a = announcer(
        config(port, interface=("lo", "eth0", "eth1")), host="198.51.100.3", interfaces=lambda: [lo, lan_a, lan_b]
    )
    a._refresh_interfaces()
    a._set_beacon_to([("203.0.113.50", 7000)])  # routed there by the operator's word: kept
    assert [t for t, _ in a._targets_with_address()] == [
        (LOOPBACK_BROADCAST, port), ("198.51.100.255", port), ("203.0.113.50", 7000),
    ]  # fmt: skip
    probe = b.encode(b.Probe(b"12345678"))
    a.handle_datagram(probe, ("203.0.113.7", 40000), 0.0)
    assert a.stats().dropped == {"unreachable_bind": 1}
    for prober in ("198.51.100.7", "203.0.113.3", "203.0.113.50"):  # its LAN, this host, a --beacon-to host
        a.handle_datagram(probe, (prober, 40000), 0.0)
    assert a.stats().dropped == {"unreachable_bind": 1} and a.stats().probes == 4


def test_a_loopback_bound_server_beacons_on_loopback_without_being_told(port: int) -> None:
    """--host 127.0.0.1 without --interface lo: the default interfaces leave loopback out, so it beaconed to
    nobody (no goodbye either) while its log said "announced on loopback only"."""
    lo = Interface("lo", "127.0.0.1", "255.0.0.0", "127.255.255.255")
    eth = Interface("eth0", "198.51.100.3", "255.255.255.0", "198.51.100.255")
    a = announcer(config(port, interface=()), host=BOUND, interfaces=lambda: [lo, eth])
    a._refresh_interfaces()
    assert a._targets_with_address() == [((LOOPBACK_BROADCAST, port), BOUND)]


def test_an_ipv6_only_server_warns_that_discovery_cannot_announce_it(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        a = announcer(config(port), host="2001:db8::7")  # a documentation address: only compared, never bound
        await a.start()
        try:
            await until_count(lambda: a.stats().beacons, 1, what="beacons")  # discovery itself goes on
        finally:
            await a.stop()

    with caplog.at_level(logging.WARNING, logger="lanchat.discovery"):
        run_async(scenario())
    [warning] = [r.getMessage() for r in caplog.records if "IPv6" in r.getMessage()]
    assert "2001:db8::7" in warning and "[2001:db8::7]:7306" in warning and "IPv4" in warning


def test_a_server_on_ipv6_loopback_only_is_not_announced(port: int, caplog: pytest.LogCaptureFixture) -> None:
    """--host ::1: only this host can connect, and not at the IPv4 addresses discovery carries; it announced
    this host's LAN address to the LAN all the same."""

    async def scenario() -> None:
        a = announcer(config(port), host="::1")
        await a.start()
        try:
            assert a._targets() == []
            a.handle_datagram(b.encode(b.Probe(nonce=b"n" * 8)), ("127.0.0.1", 40000), 0.0)
            assert a.stats().replies == 0 and a.stats().beacons == 0
        finally:
            await a.stop()

    with caplog.at_level(logging.INFO, logger="lanchat.discovery"):
        run_async(scenario())
    assert any("::1 only: not announced" in r.getMessage() for r in caplog.records)


def test_the_standalone_announcer_takes_host(tmp_path: Path, port: int) -> None:
    with announcer_process(
        name="alt", port=7306, data_dir=tmp_path, discovery_port=port, extra=["--host", BOUND, "--no-beacon"]
    ) as (_, ready):
        done = run_cli(lanchat_cmd("discover", "--interface", "lo", "--discovery-port", str(port), "--json"))
        assert done.returncode == 0, done.stderr
        [row] = [json.loads(line) for line in done.stdout.splitlines()]
        assert (row["server_id"], row["host"]) == (ready["server_id"], BOUND)


def test_lanchat_serve_on_one_address_is_found_there_and_joined_by_name(tmp_path: Path, port: int) -> None:
    """The reviewer's case: `lanchat serve --host 127.0.0.2 --name alt`, `lanchat discover`, `lanchat join alt`."""
    tcp = free_tcp_port()
    serve = lanchat_cmd(
        "serve", "--workers", "1", "--host", BOUND, "--port", str(tcp), "--name", "alt",
        "--interface", "lo", "--discovery-port", str(port), "--data-dir", str(tmp_path),
    )  # fmt: skip
    with spawn(serve) as (server, _):
        deadline = time.monotonic() + PROCESS_START_TIMEOUT
        rows: list[dict[str, Any]] = []
        discover = lanchat_cmd(
            "discover", "--interface", "lo", "--discovery-port", str(port), "--json", "--timeout", "0.3"
        )
        while not rows:  # the server boots its worker first: ask until it answers (each try lasts 0.3 s)
            assert time.monotonic() < deadline, "the server was never found"
            assert server.poll() is None, "the server died"
            done = run_cli(discover)
            rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert [(r["name"], r["host"], r["port"]) for r in rows] == [("alt", BOUND, tcp)]
        join = subprocess.run(
            lanchat_cmd("join", "alt", "--nick", "bob", "--interface", "lo", "--discovery-port", str(port)),
            input="hello alt\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert join.returncode == 0, join.stderr
        assert "<bob> hello alt" in join.stdout
