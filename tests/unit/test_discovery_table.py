"""The browser's ServerTable state machine: added / updated / removed, expiry, goodbye, caps, latency."""

from __future__ import annotations

import pytest

from lanchat.discovery.browser import ServerTable
from lanchat.discovery.const import EXPIRY_FACTOR, MAX_PERIOD, PROBE_NONCE_TTL
from lanchat.protocol.beacon import Beacon, Goodbye, Probe, Reply

SID_A = "a" * 32
SID_B = "b" * 32
SID_C = "c" * 32
N1 = b"nonce-01"
SRC_A = ("198.51.100.1", 7272)  # documentation addresses (RFC 5737): a pure state machine, nothing is sent


def beacon(sid: str = SID_A, *, users: int = 0, interval_ms: int = 1000, port: int = 7000, name: str = "a") -> Beacon:
    return Beacon(sid, "0.0.0.0", port, 1, interval_ms, users, 0, 1, 0.0, name)


def reply(sid: str = SID_A, nonce: bytes = N1, *, interval_ms: int = 1000) -> Reply:
    return Reply(sid, "0.0.0.0", 7000, 1, interval_ms, 0, 0, 1, 0.0, "a", nonce)


def test_added_then_updated_only_on_change() -> None:
    t = ServerTable()
    [ev] = t.receive(beacon(), SRC_A, 0.0)
    assert ev.kind == "added" and ev.record.host == "198.51.100.1" and ev.record.port == 7000
    assert ev.record.latency_ms is None
    assert t.receive(beacon(), SRC_A, 0.5) == []  # nothing changed: no event
    [ev] = t.receive(beacon(users=5), SRC_A, 1.0)
    assert ev.kind == "updated" and ev.record.users == 5
    assert len(t) == 1 and SID_A in t


def test_dedup_by_server_id_across_addresses() -> None:
    t = ServerTable()
    t.receive(beacon(), SRC_A, 0.0)
    assert t.receive(beacon(), ("203.0.113.2", 7272), 0.1) == []  # same server on a second interface
    assert len(t) == 1 and t.records()[0].host == "198.51.100.1"  # the first address sticks while it is heard


def test_host_moves_when_the_old_address_expires() -> None:
    t = ServerTable()
    t.receive(beacon(), SRC_A, 0.0)
    for now in (1.0, 2.0):  # a lost beacon or two from the first address: still shown there
        assert t.receive(beacon(), ("203.0.113.2", 7272), now) == []
    [ev] = t.expire(EXPIRY_FACTOR)  # silent for EXPIRY_FACTOR intervals: reached through the other now
    assert ev.kind == "updated" and ev.record.host == "203.0.113.2"


def test_a_beacon_with_a_servers_id_from_another_address_does_not_take_over_its_listing() -> None:
    """Anyone on the LAN can send a beacon with a real server's id (ids are in every beacon) from its own
    address, with a 0.1 s interval: the real server's address counted as silent after 0.1 s and the listing
    moved to the sender; or it kept the host and took the sender's port; one such beacon also let the
    sender's goodbye remove the server. Only the address shown changes what is shown."""
    t = ServerTable()
    t.receive(beacon(port=7000), SRC_A, 0.0)
    fake = ("203.0.113.66", 7272)
    for i in range(1, 20):  # ten a second, for two seconds
        assert t.receive(beacon(port=6666, interval_ms=100, users=99), fake, i / 10) == []
        if i % 10 == 0:
            assert t.receive(beacon(port=7000), SRC_A, i / 10) == []  # the real one, every second
    assert t.expire(1.95) == []
    [shown] = t.records()
    assert (shown.host, shown.port, shown.users) == ("198.51.100.1", 7000, 0)
    assert t.receive(Goodbye(SID_A, "0.0.0.0", 6666), fake, 2.0) == []  # its own address only
    assert t.receive(Goodbye(SID_A, "0.0.0.0", 6666), fake, 2.1) == [] and len(t) == 1
    assert t.drops.counts() == {"spoofed_goodbye": 1}  # once forgotten, a stranger's like any other


def test_a_lost_beacon_of_the_real_server_does_not_hand_its_listing_to_a_faster_sender() -> None:
    """A review of the fix above: the listing moved once the address shown was silent for one of its own
    intervals, so one beacon lost on Wi-Fi handed it to a sender of ten a second, for good."""
    t = ServerTable()
    fake = ("203.0.113.66", 7272)
    for tenth in range(0, 60):
        now = tenth / 10
        if tenth % 10 == 0 and tenth != 20:  # the real one, every second; the one at 2 s is lost
            t.receive(beacon(port=7000), SRC_A, now)
        t.receive(beacon(port=6666, interval_ms=100, users=99), fake, now + 0.01)
        assert t.expire(now + 0.02) == []
        assert (t.records()[0].host, t.records()[0].port) == ("198.51.100.1", 7000)


def test_when_the_shown_address_expires_the_listing_goes_to_the_address_known_longest() -> None:
    """A second review: it went to the address heard last, a fast fake sender's, not the server's other
    address; and a flood of new addresses pushed the server's other address out of the table."""
    t = ServerTable()
    second, fake = ("203.0.113.2", 7272), ("203.0.113.66", 7272)
    t.receive(beacon(port=7000), SRC_A, 0.0)
    t.receive(beacon(port=7000), second, 0.5)
    for tenth in range(10, 60):  # from 1 s on the first address is silent, a fake sends ten a second
        now = tenth / 10
        if tenth % 10 == 5:
            t.receive(beacon(port=7000), second, now)
        t.receive(beacon(port=6666, interval_ms=100), fake, now)
        t.expire(now)
    [shown] = t.records()
    assert (shown.host, shown.port) == ("203.0.113.2", 7000)
    t = ServerTable()
    t.receive(beacon(port=7000), SRC_A, 0.0)
    t.receive(beacon(port=7000), second, 0.5)
    for i in range(20):  # new addresses, each heard more recently than the second one
        t.receive(beacon(port=6666), (f"203.0.113.{100 + i}", 7272), 1.0 + i / 100)
    assert "203.0.113.2" in t._entries[SID_A].sources  # the newcomers were evicted, not the one known before


def test_a_beacon_from_another_address_does_not_shorten_a_probed_servers_life() -> None:
    """A server heard only by replies (--probe across a router) lives until our next probes; one fake beacon
    with its id marked the whole server as beaconed, and its real address expired between probes."""
    t = ServerTable(refresh=5.0)
    for i, now in enumerate((0.0, 5.0, 10.0, 15.0)):
        nonce = b"nonce-%02d" % i
        t.probe_sent(nonce, now)
        t.receive(reply(nonce=nonce, interval_ms=1000), SRC_A, now + 0.01)
        if i == 0:
            t.receive(beacon(interval_ms=60_000, port=6666), ("203.0.113.66", 7272), 0.1)
        assert t.expire(now + 4.9) == [] and t.records()[0].host == "198.51.100.1"


def test_a_server_heard_through_two_addresses_is_shown_through_the_other_when_one_expires() -> None:
    t = ServerTable()
    t.receive(beacon(interval_ms=1000), SRC_A, 0.0)
    t.receive(beacon(interval_ms=1000), ("203.0.113.2", 7272), 0.5)  # then nothing more from either
    assert t.expire(EXPIRY_FACTOR - 0.01) == []
    [ev] = t.expire(EXPIRY_FACTOR)  # the first address is silent past its deadline, the other not yet
    assert ev.kind == "updated" and ev.record.host == "203.0.113.2" and len(t) == 1
    [ev] = t.expire(0.5 + EXPIRY_FACTOR)
    assert ev.kind == "removed" and ev.record.host == "203.0.113.2"


def test_expiry_after_three_intervals_not_before() -> None:
    t = ServerTable()
    t.receive(beacon(interval_ms=1000), SRC_A, 10.0)
    assert t.next_deadline() == pytest.approx(10.0 + EXPIRY_FACTOR * 1.0)
    assert t.expire(10.0 + EXPIRY_FACTOR - 0.01) == []
    [ev] = t.expire(10.0 + EXPIRY_FACTOR)
    assert ev.kind == "removed" and ev.reason == "expired" and len(t) == 0
    assert t.next_deadline() is None


def test_each_beacon_pushes_the_deadline() -> None:
    t = ServerTable()
    for now in range(10):
        t.receive(beacon(), SRC_A, float(now))
        assert t.expire(float(now) + 2.9) == []


def test_interval_is_clamped() -> None:
    t = ServerTable()
    t.receive(beacon(interval_ms=86_400_000), SRC_A, 0.0)  # a beacon claiming a one-day interval
    assert t.next_deadline() == pytest.approx(EXPIRY_FACTOR * MAX_PERIOD)


def test_goodbye_removes_at_once() -> None:
    t = ServerTable()
    t.receive(beacon(), SRC_A, 0.0)
    [ev] = t.receive(Goodbye(SID_A, "0.0.0.0", 7000), SRC_A, 0.1)
    assert ev.kind == "removed" and ev.reason == "goodbye" and len(t) == 0
    assert t.receive(Goodbye(SID_A, "0.0.0.0", 7000), SRC_A, 0.2) == []  # unknown now: nothing


def test_goodbye_from_a_foreign_address_is_ignored() -> None:
    t = ServerTable()
    t.receive(beacon(), SRC_A, 0.0)
    assert t.receive(Goodbye(SID_A, "0.0.0.0", 7000), ("192.0.2.99", 7272), 0.1) == []
    assert len(t) == 1 and t.drops.counts() == {"spoofed_goodbye": 1}


def test_reply_needs_a_known_nonce_and_gives_latency() -> None:
    t = ServerTable()
    assert t.receive(reply(nonce=N1), SRC_A, 1.0) == []  # we never sent that probe
    assert t.drops.counts() == {"unknown_nonce": 1}
    t.probe_sent(N1, 1.0)
    [ev] = t.receive(reply(nonce=N1), SRC_A, 1.012)
    assert ev.kind == "added" and ev.record.latency_ms == pytest.approx(12.0)
    # a beacon later keeps the measured latency
    assert t.receive(beacon(), SRC_A, 1.5) == [] or t.records()[0].latency_ms == pytest.approx(12.0)
    assert t.records()[0].latency_ms == pytest.approx(12.0)


def test_one_probe_many_replies_and_nonce_ttl() -> None:
    t = ServerTable()
    t.probe_sent(N1, 0.0)
    assert len(t.receive(reply(SID_A), SRC_A, 0.01)) == 1
    assert len(t.receive(reply(SID_B), ("198.51.100.2", 7272), 0.02)) == 1
    t.expire(PROBE_NONCE_TTL + 1)
    assert t.pending_probes() == 0
    assert t.receive(reply(SID_A), SRC_A, PROBE_NONCE_TTL + 2) == []


def test_reply_only_servers_live_until_the_next_probes() -> None:
    t = ServerTable(refresh=5.0)
    t.probe_sent(N1, 0.0)
    t.receive(reply(interval_ms=0), SRC_A, 0.0)  # a --no-beacon server
    assert t.next_deadline() == pytest.approx(EXPIRY_FACTOR * 5.0)
    t.receive(reply(SID_B, interval_ms=200), SRC_A, 0.0)  # beacons fast, but they may not reach us
    assert t.expire(EXPIRY_FACTOR * 5.0 - 0.01) == []
    # and beacons slow, that do not reach us either (behind a router): gone after three unanswered probes,
    # not after three of its beacon intervals (it stayed 3 minutes in a watch: a review)
    t.receive(reply(SID_C, interval_ms=60_000), SRC_A, 0.0)
    assert {e.record.server_id for e in t.expire(EXPIRY_FACTOR * 5.0 + 0.01)} == {SID_A, SID_B, SID_C}


def test_reply_from_a_server_heard_by_beacon_keeps_its_interval() -> None:
    t = ServerTable(refresh=5.0)
    t.probe_sent(N1, 0.0)
    t.receive(beacon(interval_ms=200), SRC_A, 0.0)
    t.receive(reply(interval_ms=200), SRC_A, 0.1)  # its beacons reach us: silent for 3 x 0.2 s means gone
    assert t.next_deadline() == pytest.approx(0.1 + EXPIRY_FACTOR * 0.2)


def test_without_reprobing_a_reply_counts_one_interval() -> None:
    t = ServerTable(refresh=None)
    t.probe_sent(N1, 0.0)
    t.receive(reply(interval_ms=200), SRC_A, 0.0)
    assert t.next_deadline() == pytest.approx(EXPIRY_FACTOR * 0.2)


def test_pending_probes_are_capped() -> None:
    t = ServerTable(max_pending=4)
    for i in range(100):
        t.probe_sent(i.to_bytes(8, "big"), float(i))
    assert t.pending_probes() == 4


def test_table_is_capped() -> None:
    t = ServerTable(max_servers=10)
    for i in range(50):
        t.receive(beacon(f"{i:032x}"), SRC_A, 0.0)
    assert len(t) == 10 and t.drops.counts()["table_full"] == 40
    # a known server is still updated when the table is full
    [ev] = t.receive(beacon(f"{0:032x}", users=9), SRC_A, 0.1)
    assert ev.kind == "updated"


def test_spoofed_looking_sources_and_probes_are_ignored() -> None:
    t = ServerTable()
    assert t.receive(beacon(), ("0.0.0.0", 7272), 0.0) == []
    assert t.receive(beacon(), ("198.51.100.1", 0), 0.0) == []
    assert t.receive(beacon(), ("255.255.255.255", 7272), 0.0) == []  # doc example: data only
    assert t.receive(beacon(port=0), SRC_A, 0.0) == []
    assert t.receive(Probe(N1), SRC_A, 0.0) == []  # other browsers' probes: not servers
    assert len(t) == 0


def test_records_sorted_by_name() -> None:
    t = ServerTable()
    t.receive(beacon(SID_B, name="zeta"), SRC_A, 0.0)
    t.receive(beacon(SID_A, name="Alpha"), SRC_A, 0.0)
    assert [r.name for r in t.records()] == ["Alpha", "zeta"]
