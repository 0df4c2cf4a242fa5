"""Plain mode's current room, a worker's connection state driven by the real hub.

A plain-text (nc) client's lines go to its current room, which `/nick`, `/join`, `/part` and `/switch` move as
the worker reads them, before the hub has answered: a paste or a `printf` is read at once. Whatever the moment
the hub's answers arrive, the lines must go where they would have gone had every command been answered before
the next line was read; so must the rooms and the current room end. Here a ServerConnection and a real Hub
are wired as a worker and the main process are, the hub's records held back and let through at random points,
and the same lines are run again with every answer let through at once.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lanchat import const
from lanchat.protocol import control
from lanchat.protocol.server_conn import Close, Forward, ServerConnection
from lanchat.server.hub import Hub
from lanchat.storage.history import HistoryStore

W, C = 1, 1  # the plain connection's worker and connection
ROOMS = ["lobby", "dev", "ops", "qa"]


@dataclass
class Run:
    """One plain connection: what it sent the hub, and how it ended."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    rooms: list[str] = field(default_factory=list)
    current: str | None = None
    hub_rooms: list[str] | None = None
    moves_left: int = 0
    refused: bool = False  # the hub refused a hello or a join: lines read before its answer went elsewhere


@contextlib.contextmanager
def limits(per_session: int, per_address: int) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:  # (a function-scoped fixture would span all the examples)
        patch.setattr(const, "MAX_ROOMS_PER_SESSION", per_session)
        patch.setattr(const, "MAX_ROOMS_PER_ADDRESS", per_address)
        yield


def run(lines: list[str], others: list[tuple[str, list[str], str]], peer: str, answers: list[int]) -> Run:
    """``lines`` read one by one, ``answers[i]`` of the hub's records let through after line i (then all)."""
    out = Run()
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore(Path(tmp), history_limit=1000)
        try:
            hub = Hub(store, resume_grace=60.0)
            for i, (nick, rooms, by) in enumerate(others):  # sessions of other connections, on worker 2
                hub.request(2, 100 + i, {"type": "hello", "nick": nick, "rooms": rooms}, 0.5, peer=by)
            conn = ServerConnection(C, max_frame=4096, rate=1e9, burst=10**9, now=0.0)
            held: list[list[Any]] = []

            def pump() -> None:
                for frame in control.ControlDecoder().feed(hub.drain(W)):
                    if isinstance(frame, control.JsonFrame):
                        held.extend(rec for rec in frame.records if rec[1] == C)

            def let_through(k: int) -> None:
                while k > 0 and held:
                    k -= 1
                    kind, _, *args = held.pop(0)
                    if kind == "member":
                        (conn.joined if args[1] else conn.parted)(args[0])
                    elif kind == "answer":
                        out.refused |= args[1] is False and out.sent[-1]["type"] != "part"
                        conn.answered(args[0], args[1])
                    elif kind == "bind":
                        conn.bound(args[0])

            for i, text in enumerate(lines):
                for action in conn.receive_data(text.encode() + b"\n", 1.0 + i / 1000):
                    if isinstance(action, Forward):
                        out.sent.append(action.request.to_obj())
                        hub.request(W, C, out.sent[-1], 1.0 + i / 1000, peer=peer)
                    elif isinstance(action, Close):
                        break
                pump()
                let_through(answers[i])
            let_through(len(held))
            session = hub.conns.get((W, C))
            out.rooms, out.current, out.moves_left = list(conn.rooms), conn.current, len(conn._moves)
            out.hub_rooms = list(session.rooms) if session else None
        finally:
            store.close()
    return out


def said(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests, a /nick read before the session was bound (a hello to the hub, a rename there) as a rename;
    a /nick of the nick asked for just before left out (the hub changes nothing; read after the answer, the
    connection says so itself: `* you are me already`)."""
    out: list[dict[str, Any]] = []
    asked = None
    for r in sent:
        if r["type"] in ("hello", "nick"):
            if r["nick"] == asked:
                continue
            asked = r["nick"]
            r = {"type": "nick", "nick": r["nick"]}
        out.append(r)
    return out


def _line(kind: str, room: str, nick: str) -> str:
    return {
        "join": f"/join {room}", "part": f"/part {room}", "part here": "/part", "part why": f"/part {room} bye",
        "part Word": f"/part {room.capitalize()}", "switch": f"/switch {room}", "talk": "hi", "nick": f"/nick {nick}",
    }[kind]  # fmt: skip


_nicks = st.sampled_from(["me", "me", "you", "bob"])  # bob is taken when another session holds it
_lines = st.lists(
    st.builds(
        _line,
        st.sampled_from(
            ["join", "join", "part", "part here", "part why", "part Word", "switch", "talk", "talk", "nick"]
        ),
        st.sampled_from(ROOMS),
        _nicks,
    ),
    max_size=14,
)


@settings(max_examples=150, deadline=None)
@example(  # the last note's: /join dev, /part dev, /join dev pasted ended in #lobby
    ["/nick me", "/join dev", "/part dev", "/join dev", "hi"], [], 50, 500, [0, 0, 0, 0, 0]
)
@example(  # a review: a /part before the session was answered, and its answer taken for a later /join's
    ["/nick bob", "/part ops", "/nick ann", "/join ops", "hi"], [("bob", ["lobby", "ops"], "")], 50, 500, [0] * 5
)
@example(  # a review: a /nick made no #lobby (the address's rooms were all used): a later /part of it hung
    ["/nick zed", "/join qa", "/part lobby", "/join dev", "/join lobby", "hi", "/part dev", "hi"],
    [("filler", ["f1", "f2"], "127.0.9.9")],
    50,
    2,
    [9] * 8,
)
@example(  # a review: a second /nick after a refused one, behind a /part, was swallowed
    ["/nick bob", "/part", "/nick ann", "hi"], [("bob", [], "")], 50, 500, [0] * 4
)
@given(
    _lines.map(lambda ls: ["/nick me", *ls]),
    st.lists(st.tuples(st.sampled_from(["bob", "filler"]), st.lists(st.sampled_from(["lobby", "dev", "f1", "f2"]),
             unique=True, max_size=2), st.sampled_from(["", "127.0.9.9"])), max_size=2, unique_by=lambda o: o[0]),
    st.sampled_from([2, 3, 50]),
    st.sampled_from([2, 3, 500]),
    st.lists(st.sampled_from([0, 0, 0, 1, 2, 5]), min_size=15, max_size=15),
)  # fmt: skip
def test_plain_lines_pasted_ahead_of_the_hub_go_where_answers_in_turn_send_them(
    lines: list[str], others: list[tuple[str, list[str], str]], per_session: int, per_address: int, answers: list[int]
) -> None:
    peer = "127.0.9.9"  # the filler's address, when it has one: the rooms it made count against ours
    with limits(per_session, per_address):
        pasted = run(lines, others, peer, answers)
        in_turn = run(lines, others, peer, [10**6] * len(lines))
    if said(pasted.sent) == said(in_turn.sent):  # the same requests, to the same rooms: the same end
        assert (pasted.rooms, pasted.current, pasted.hub_rooms) == (in_turn.rooms, in_turn.current, in_turn.hub_rooms)
    else:  # only after a refusal: the lines read before its answer went to the refused room (unavoidable)
        assert in_turn.refused
    assert pasted.hub_rooms is None or pasted.rooms == pasted.hub_rooms  # the worker's rooms are the hub's
    assert pasted.moves_left == 0  # every move answered
