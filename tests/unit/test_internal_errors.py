"""A bug of the hub costs one request, answered `internal`; a question's answer names it (its client settles
it), a post's or a change's does not (the bug may have come after it was done: its client sends it again
after a reconnect, and the server's ids settle it)."""

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

    def request(self, _worker: int, _conn: int, obj: dict[str, Any], *_: Any, **__: Any) -> None:
        raise ValueError("a bug") if obj.get("id") == 14 else RuntimeError("a bug")

    def post(self, *_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    def eof(self, *_: Any) -> None:
        raise RuntimeError("a bug")

    def _reply(self, worker: int, conn: int, frame: dict[str, Any]) -> None:
        self.replies.append((worker, conn, frame))


def test_a_hub_bug_is_answered_internal_naming_a_question_only(caplog: pytest.LogCaptureFixture) -> None:
    hub = BuggyHub()
    server: Any = SimpleNamespace(hub=hub, conn_peer={}, _now=lambda: 1.0, _schedule_flush=lambda: None)
    server._internal_error = functools.partial(Server._internal_error, server)
    server._records = functools.partial(Server._records, server)
    server._record = functools.partial(Server._record, server)
    slot: Any = SimpleNamespace(index=2)
    with caplog.at_level(logging.ERROR):
        Server._records(server, slot, [["req", 7, {"type": "who", "room": "dev", "id": 9}]], 1.0)
        Server._records(server, slot, [["req", 8, {"type": "topic", "room": "dev", "id": 10}]], 1.0)
        Server._records(server, slot, [["req", 8, {"type": "topic", "room": "dev", "topic": "x", "id": 11}]], 1.0)
        Server._records(server, slot, [["req", 8, {"type": "join", "room": "dev", "id": 12}]], 1.0)
        Server._records(server, slot, [["req", 8, {"type": "rooms"}]], 1.0)
        Server._records(server, slot, [["req", 9, {"type": "who", "room": "dev", "id": 14}]], 1.0)  # a ValueError
        Server._records(server, slot, [["req", "x", {"type": "who"}], ["req", 9]], 1.0)  # the worker's bugs
        not_records: list[Any] = [["closed", 3], ["pong"], [], "eof"]
        Server._records(server, slot, not_records, 1.0)  # more of them
        Server._records(server, slot, [["eof", 4]], 1.0)  # a hub bug outside a request: logged, not answered
        Server._from_worker(server, slot, [control.PostFrame(5, "msg", "dev", b'"hi"', 13)])
    said = [(conn, frame.get("id"), frame["code"]) for _, conn, frame in hub.replies]
    assert said == [(7, 9, "internal"), (8, 10, "internal"), (8, None, "internal"), (8, None, "internal"),
                    (8, None, "internal"), (9, 14, "internal"), (5, None, "internal")]  # fmt: skip
    assert caplog.text.count("internal error handling") == 8 and caplog.text.count("bad control record") == 6
