"""A real multi-host LAN from network namespaces (scripts/testlan.sh): broadcast discovery across a bridge.

Two `lanchat serve` processes run on hosts a and b, the browser on host c; all three are namespaces
joined by a bridge that lives in a fourth (switch) namespace, so nothing of this LAN touches the machine's
own network. Every process gets explicit ``--interface`` names that exist only inside the namespaces.
Skipped (with the reason) only where namespaces cannot be created (not root, no `ip`, no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from discovery_support import PROCESS_START_TIMEOUT, lanchat_cmd, run_cli, spawn

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testlan.sh"
ADDR = {"a": "10.72.0.1", "b": "10.72.0.2", "c": "10.72.0.3"}  # netns-only addresses (scripts/testlan.sh)
A_SECOND = "10.72.9.1"  # netns-only: host a's second subnet, which c is not on
OFF_SUBNET = "10.72.5.3"  # netns-only: an address on c that is on no subnet of b's


@dataclass(frozen=True)
class Lan:
    prefix: str
    env: dict[str, str]

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def iface(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def on(self, host: str, *cmd: str) -> list[str]:
        return [str(SCRIPT), "exec", host, *cmd]


def _namespaces_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"lctchk{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


@pytest.fixture
def lan() -> Iterator[Lan]:
    reason = _namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    prefix = f"lct{uuid.uuid4().hex[:5]}"
    env = {**os.environ, "LANCHAT_TESTLAN_PREFIX": prefix}
    # LANCHAT_INTERFACE=lo stays set (conftest): every command below names its namespace-only interfaces
    # explicitly, and one that forgot would fall back to loopback, never to every interface.
    try:
        up = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, env=env, timeout=30, check=False)
        assert up.returncode == 0, f"testlan up failed: {up.stderr}"
        yield Lan(prefix, env)
    finally:
        subprocess.run([str(SCRIPT), "down"], capture_output=True, env=env, timeout=30, check=False)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False)
        assert prefix not in left.stdout, "namespaces left behind"


def serve(lan: Lan, host: str, data_dir: Path, *interfaces: str) -> list[str]:
    flags = [arg for name in interfaces for arg in ("--interface", name)]
    return lan.on(
        host,
        *lanchat_cmd("serve", "--workers", "1", "--name", f"server-{host}", "--data-dir", str(data_dir), *flags),
    )


def discover_on(lan: Lan, *extra: str, host: str = "c") -> list[dict[str, Any]]:
    done = run_cli(lan.on(host, *lanchat_cmd("discover", "--json", "--timeout", "0.7", *extra)), env=lan.env)
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


PROBE_FROM = """
import os, socket, sys
from lanchat.protocol import beacon
source, target = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((source, 0))
s.settimeout(0.7)
s.sendto(beacon.encode(beacon.Probe(os.urandom(8))), (target, 7272))
try:
    data, addr = s.recvfrom(2048)
    print("reply", addr[0], type(beacon.decode(data)).__name__)
except socket.timeout:
    print("silence")
"""


def test_broadcast_discovery_across_namespaces(lan: Lan, tmp_path: Path) -> None:
    # host a is on two subnets; its beacons on the second one (10.72.9.0/24, netns) reach nobody
    with (
        spawn(serve(lan, "a", tmp_path / "a", lan.iface("a"), f"{lan.prefix}-a2"), env=lan.env) as (srv_a, _),
        spawn(serve(lan, "b", tmp_path / "b", lan.iface("b")), env=lan.env) as (srv_b, _),
    ):
        deadline = time.monotonic() + PROCESS_START_TIMEOUT
        rows: list[dict[str, Any]] = []
        while len(rows) < 2:  # the servers boot their workers first
            assert time.monotonic() < deadline, f"found only {rows}"
            assert srv_a.poll() is None and srv_b.poll() is None, "a server died"
            rows = discover_on(lan, "--interface", lan.iface("c"))
        rows = discover_on(lan, "--interface", lan.iface("c"))  # both up now: both answer the probes
        found = {r["name"]: r for r in rows}
        assert sorted(found) == ["server-a", "server-b"]
        assert found["server-a"]["host"] == ADDR["a"]  # the address on c's side, not A_SECOND
        assert found["server-b"]["host"] == ADDR["b"]
        assert A_SECOND not in json.dumps(rows)
        assert all(r["port"] == 7272 and r["latency_ms"] is not None for r in rows)
        # on a server's own host too, through its LAN interface (loopback is not among the defaults)
        own = discover_on(lan, "--interface", lan.iface("b"), host="b")
        assert sorted(r["name"] for r in own) == ["server-a", "server-b"], own

        # listed addresses are really reachable from c: a TCP connect to each succeeds
        for row in rows:
            code = f"import socket; socket.create_connection(({row['host']!r}, {row['port']}), 3).close()"
            done = run_cli(lan.on("c", sys.executable, "-c", code), env=lan.env)
            assert done.returncode == 0, done.stderr

        # a unicast --probe reaches one server without any broadcast (c's lo has no lanchat server)
        rows = discover_on(lan, "--interface", "lo", "--probe", ADDR["b"])
        assert [r["name"] for r in rows] == ["server-b"]

        # b answers c's subnet, but not a source that is on none of its subnets, even with a route back
        subprocess.run(
            ["ip", "-n", lan.ns("c"), "addr", "add", f"{OFF_SUBNET}/32", "dev", lan.iface("c")],  # netns address
            check=True,
            timeout=10,
        )
        subprocess.run(
            ["ip", "-n", lan.ns("b"), "route", "add", "10.72.5.0/24", "dev", lan.iface("b")],  # netns route
            check=True,
            timeout=10,
        )
        on_subnet = run_cli(lan.on("c", sys.executable, "-c", PROBE_FROM, ADDR["c"], ADDR["b"]), env=lan.env)
        assert on_subnet.stdout.split() == ["reply", ADDR["b"], "Reply"], on_subnet.stderr
        off_subnet = run_cli(lan.on("c", sys.executable, "-c", PROBE_FROM, OFF_SUBNET, ADDR["b"]), env=lan.env)
        assert off_subnet.stdout.split() == ["silence"], off_subnet.stderr

        # c's address added again without a broadcast (`ip addr add …/24`, no `brd +`, as a LAN party's hand-set
        # addresses are): psutil reports the address itself as the broadcast; the probes must still go to the
        # subnet's (a review on a real LAN: discovery found nothing, `join` exited 6)
        for change in ("del", "add"):
            cmd = ["ip", "-n", lan.ns("c"), "addr", change, f"{ADDR['c']}/24", "dev", lan.iface("c")]  # netns
            subprocess.run(cmd, check=True, timeout=10)
        rows = discover_on(lan, "--interface", lan.iface("c"))
        assert sorted(r["name"] for r in rows) == ["server-a", "server-b"], rows


def test_default_interfaces_inside_a_namespace(lan: Lan) -> None:
    """The default choice (up, IPv4 broadcast, not loopback), read from psutil on host a. Lists only: no packet.
    A /31 or /32 address has no broadcast, whatever the system reports for it (its own address, or `peer`'s:
    a review found beacons sent to ourselves, and a browser bound to our address taking a server's probes)."""
    for extra in (["10.72.7.1/32"], ["10.72.8.0/31"], ["10.72.6.1/32", "peer", "10.72.6.254"]):  # netns addresses
        subprocess.run(
            ["ip", "-n", lan.ns("a"), "addr", "add", *extra, "dev", f"{lan.prefix}-a2"], check=True, timeout=10
        )
    code = (
        "from lanchat.discovery.interfaces import choose_interfaces, list_interfaces\n"
        "every = list_interfaces()\n"
        "chosen, _ = choose_interfaces((), every)\n"
        "print(' '.join(f'{i.name}={i.address}/{i.broadcast}' for i in chosen))\n"
        "print(' '.join(f'{i.address}/{i.broadcast}/{i.peer}' for i in every if i.address.startswith('10.72.')))"
    )
    done = run_cli(lan.on("a", sys.executable, "-c", code), env=lan.env)
    assert done.returncode == 0, done.stderr
    chosen, every = done.stdout.splitlines()
    assert chosen.split() == [
        f"{lan.prefix}-a={ADDR['a']}/10.72.0.255",  # netns
        f"{lan.prefix}-a2={A_SECOND}/10.72.9.255",  # netns
    ]
    assert {"10.72.7.1/None/None", "10.72.8.0/None/None", "10.72.6.1/None/10.72.6.254"} <= set(every.split()), every
