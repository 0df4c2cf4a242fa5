"""Interface choice, subnet questions, target parsing and the server id file. Nothing here sends a packet."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from lanchat.config import parse_address
from lanchat.discovery.interfaces import (
    Interface,
    address_for,
    broadcast_targets,
    choose_interfaces,
    interface_for,
    is_directly_connected,
    is_unicast_source,
    list_interface_names,
    list_interfaces,
    unknown_interfaces,
)
from lanchat.discovery.server_id import SERVER_ID_FILE, load_or_create_server_id
from lanchat.discovery.sockets import Drops, split_targets

# A fake host: documentation addresses (RFC 5737) as data only; nothing here sends a packet.
LO = Interface("lo", "127.0.0.1", "255.0.0.0", "127.255.255.255")
ETH = Interface("eth0", "198.51.100.3", "255.255.255.0", "198.51.100.255")
WLAN = Interface("wlan0", "203.0.113.9", "255.255.255.0", "203.0.113.255")
DOWN = Interface("eth1", "192.0.2.9", "255.255.255.0", "192.0.2.255", up=False)
TUN = Interface("tun0", "198.51.100.130", "255.255.255.255", None, peer="198.51.100.129")  # doc example: data only
HOST = [LO, ETH, WLAN, DOWN, TUN]


def test_default_choice_is_up_broadcast_capable_non_loopback() -> None:
    chosen, problems = choose_interfaces((), HOST)
    assert chosen == [ETH, WLAN] and problems == []


def test_explicit_choice_and_problems() -> None:
    chosen, problems = choose_interfaces(("lo", "nope", "eth1", "tun0", "wlan0"), HOST)
    assert chosen == [LO, WLAN]
    assert len(problems) == 3
    assert "nope" in problems[0] and "known" in problems[0]
    assert "down" in problems[1]
    assert "broadcast" in problems[2] and "--probe" in problems[2]


def test_lo_means_loopback_whatever_its_name() -> None:
    lo0 = Interface("lo0", "127.0.0.1", "255.0.0.0", "127.255.255.255")
    assert choose_interfaces(("lo",), [lo0, ETH])[0] == [lo0]


def test_real_loopback_is_listed_with_its_broadcast() -> None:
    lo = [i for i in list_interfaces() if i.name == "lo"]
    assert lo and lo[0].address == "127.0.0.1" and lo[0].broadcast == "127.255.255.255"


def test_broadcast_targets_dedup() -> None:
    twin = Interface("eth0", "198.51.100.4", "255.255.255.0", "198.51.100.255")
    assert broadcast_targets([ETH, twin, TUN, WLAN]) == [
        ("198.51.100.255", "198.51.100.3"),
        ("203.0.113.255", "203.0.113.9"),
    ]


def test_same_subnet_questions() -> None:
    assert address_for("127.0.0.1", HOST) == "127.0.0.1"
    assert address_for("127.5.6.7", []) == "127.0.0.1"  # loopback is always answered
    assert address_for("198.51.100.200", HOST) == "198.51.100.3"
    assert address_for("203.0.113.44", HOST) == "203.0.113.9"
    assert address_for("198.51.100.129", HOST) == "198.51.100.130"  # the tunnel's peer
    assert address_for("100.64.0.1", HOST) is None  # on none of those subnets
    assert address_for("garbage", HOST) is None
    assert is_directly_connected("198.51.100.9", HOST) and not is_directly_connected("198.51.101.9", HOST)
    narrow = Interface("eth2", "203.0.113.65", "255.255.255.192", "203.0.113.127")
    assert interface_for("203.0.113.70", [WLAN, narrow]) == narrow  # the most specific subnet wins


def test_unicast_source() -> None:
    assert is_unicast_source("127.0.0.1")
    for bad in ("0.0.0.0", "255.255.255.255", "224.0.0.251", "nonsense"):  # doc example: data only
        assert not is_unicast_source(bad)


def test_targets_split_into_literals_and_names_and_a_bad_one_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        given = ["127.0.0.9", "lab.example:9000", "a:b", "127.0.0.8:7"]
        literal, names = split_targets(given, 7272, what="--beacon-to")
    assert literal == [("127.0.0.9", 7272), ("127.0.0.8", 7)] and names == [("lab.example", 9000)]
    assert caplog.text.count("ignoring --beacon-to 'a:b'") == 1


def test_a_discovery_target_is_ipv4_or_a_name() -> None:
    assert parse_address(" host.example ", 7272, ipv6=False) == ("host.example", 7272)
    assert parse_address("127.0.0.1:9000", 7272, ipv6=False) == ("127.0.0.1", 9000)
    for bad in ("", ":9000", "a:b", "a:0", "a:70000", "::1", "[::1]:9000", "two words", "two words:9000"):
        with pytest.raises(ValueError):
            parse_address(bad, 7272, ipv6=False)


def test_drops_are_counted_and_logged_sparsely(caplog: pytest.LogCaptureFixture) -> None:
    drops = Drops("test")
    with caplog.at_level(logging.DEBUG, logger="lanchat.discovery"):
        for _ in range(1000):
            drops("garbage", ("127.0.0.1", 1))
    assert drops.counts() == {"garbage": 1000} and drops.total() == 1000
    assert len(caplog.records) == 10  # 1, 2, 4, ... 512


# --- server id -------------------------------------------------------------------------------------------


def test_server_id_created_once_and_stable(tmp_path: Path) -> None:
    data = tmp_path / "deep" / "data"
    first = load_or_create_server_id(data)
    assert len(first) == 32 and int(first, 16) >= 0
    assert load_or_create_server_id(data) == first  # a restart keeps it
    assert (data / SERVER_ID_FILE).read_text().strip() == first
    assert [p.name for p in data.iterdir()] == [SERVER_ID_FILE]  # no temporary file left
    assert load_or_create_server_id(tmp_path / "other") != first


def test_a_server_id_that_cannot_be_written_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's review: a start on a full disk left `.server_id.PID.XXXXXXXX` behind, one per start."""
    real = Path.write_text

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        real(self, "", encoding="ascii")  # (created, then the disk is full)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        load_or_create_server_id(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_damaged_server_id_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / SERVER_ID_FILE).write_text("not an id\n")
    with caplog.at_level(logging.WARNING, logger="lanchat.discovery"):
        new = load_or_create_server_id(tmp_path)
    assert len(new) == 32 and "damaged" in caplog.text
    assert load_or_create_server_id(tmp_path) == new


def test_unknown_interfaces_are_only_names_that_exist_nowhere() -> None:
    """A typo is unknown; an interface that is down or has no IPv4 address exists (choose_interfaces
    says what is wrong with it); `lo` is loopback whatever the system calls it."""
    all_names = {"lo0", "eth0", "eth1", "wlan0", "tun0", "v6only"}
    names = ("lo", "eth1", "v6only", "nosuch", "wlan0", "nosuch", "eht0")
    assert unknown_interfaces(names, HOST, all_names) == ["nosuch", "eht0"]
    assert unknown_interfaces(("lo",), [ETH], {"eth0"}) == ["lo"]  # no loopback address at all
    assert unknown_interfaces((), HOST, set()) == []


def test_real_interface_names_include_loopback() -> None:
    names = list_interface_names()
    assert names is not None and any(i.name in names for i in list_interfaces() if i.is_loopback)
