"""A bug of the hub costs one request, answered `internal` with the request's id (its client can tell
which: a post is not left waiting for an ack that never comes, nor resent)."""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from lanchat.protocol import control
from lanchat.server.main import Server


class BuggyHub:
    def __init__(self) -> None:
        self.replies: list[tuple[int, int, dict[str, Any]]] = []

    def request(self, *_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    def post(self, *_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    def _reply(self, worker: int, conn: int, frame: dict[str, Any]) -> None:
        self.replies.append((worker, conn, frame))


def test_a_hub_bug_is_answered_internal_with_the_requests_id(caplog: pytest.LogCaptureFixture) -> None:
    hub = BuggyHub()
    server: Any = SimpleNamespace(hub=hub, conn_peer={}, _now=lambda: 1.0, _schedule_flush=lambda: None)
    server._internal_error = functools.partial(Server._internal_error, server)
    server._records = functools.partial(Server._records, server)
    slot: Any = SimpleNamespace(index=2)
    with caplog.at_level(logging.ERROR):
        Server._records(server, slot, [["req", 7, {"type": "join", "room": "dev", "id": 9}]], 1.0)
        Server._records(server, slot, [["req", 8, {"type": "who", "room": "dev"}]], 1.0)
        Server._from_worker(server, slot, [control.PostFrame(5, "msg", "dev", b'"hi"', 12)])
    said = [(conn, frame.get("id"), frame["code"]) for _, conn, frame in hub.replies]
    assert said == [(7, 9, "internal"), (8, None, "internal"), (5, 12, "internal")]
    assert caplog.text.count("internal error handling") == 3
