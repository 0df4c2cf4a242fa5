"""The connect throttle: new connections a second from one address, after a burst (pure: time is given)."""

from __future__ import annotations

import pytest

from lanchat.server.admission import ConnectThrottle


def test_an_address_connects_its_burst_at_once_then_at_the_rate() -> None:
    throttle = ConnectThrottle(rate=2.0, burst=3)
    assert [throttle.wait("192.0.2.5", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst, at once
    assert throttle.wait("192.0.2.5", 100.0) == pytest.approx(0.5)  # one more: half a second to wait
    assert throttle.wait("192.0.2.6", 100.0) == 0.0  # another address has its own bucket
    assert throttle.wait("192.0.2.5", 100.49) > 0.0  # refused attempts take nothing: still due at 100.5
    assert throttle.wait("192.0.2.5", 100.5) == 0.0
    assert throttle.wait("192.0.2.5", 100.5) == pytest.approx(0.5)


def test_addresses_whose_bucket_filled_again_are_forgotten() -> None:
    throttle = ConnectThrottle(rate=2.0, burst=4)
    throttle.wait("a", 0.0)
    for _ in range(4):
        throttle.wait("b", 0.0)
    throttle.prune(0.4)  # a: 3.8 of 4 tokens; b: 0.8
    assert len(throttle) == 2
    throttle.prune(0.5)  # a is full again (4.0): as if never seen
    assert len(throttle) == 1
    throttle.prune(2.0)
    assert len(throttle) == 0
    assert [throttle.wait("b", 2.0) for _ in range(5)][-1] > 0.0  # a whole burst again, not more


def test_a_rate_of_zero_is_no_limit() -> None:
    throttle = ConnectThrottle(rate=0.0, burst=1)
    assert all(throttle.wait("a", 0.0) == 0.0 for _ in range(1000))
    assert len(throttle) == 0
