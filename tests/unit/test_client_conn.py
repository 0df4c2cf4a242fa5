"""The client's side: hello and resume, post ids and the outbox, acks, duplicate events, own membership."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanchat import const
from lanchat.client.connection import QUEUED_MAX, ChatClient
from lanchat.errors import RemoteProtocolError
from lanchat.protocol import client_conn as cc
from lanchat.protocol import messages as m
from lanchat.protocol.client_conn import QUESTIONS_KEPT, ClientState


def enc(**frame: Any) -> bytes:
    return m.encode(frame)


def ev(kind: str, seq: int, **fields: Any) -> bytes:
    return m.encode({"type": kind, "seq": seq, "ts": 1.0, **fields})


def welcome(
    seq: int = 10, *, resumed: bool = False, rooms: list[str] | None = None, nick: str = "al", **extra: Any
) -> bytes:
    return enc(
        type="welcome", nick=nick, session="s1", token="tok", seq=seq, resumed=resumed, rooms=rooms or [], **extra
    )


def decoded(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj


def welcomed(nick: str = "al", seq: int = 10) -> ClientState:
    c = ClientState(nick, ["lobby"])
    c.hello()
    c.receive_data(welcome(seq, nick=nick) + ev("join", seq + 1, room="lobby", nick=nick))
    return c


# --- hello ----------------------------------------------------------------------------------------------------


def test_first_hello_has_no_token() -> None:
    c = ClientState("al", ["lobby", "dev"])
    hello = decoded(c.hello())
    assert hello == {"type": "hello", "proto": const.PROTOCOL_VERSION, "nick": "al", "rooms": ["lobby", "dev"]}
    assert m.parse_line(c.hello()[:-1]) == m.Hello("al", ("lobby", "dev"))


def test_default_rooms() -> None:
    assert decoded(ClientState("al").hello())["rooms"] == [const.DEFAULT_ROOM]


def test_hello_after_welcome_resumes_with_token_and_last_seq() -> None:
    c = welcomed()
    c.receive_data(ev("join", 12, room="dev", nick="al"))
    hello = decoded(c.hello())
    assert hello["token"] == "tok"
    assert hello["last_seq"] == 12
    assert hello["rooms"] == ["lobby", "dev"]  # the rooms we are in, not the ones first asked for
    req = m.parse_line(c.hello()[:-1])
    assert isinstance(req, m.Hello) and req.token == "tok" and req.last_seq == 12


def test_token_without_last_seq() -> None:
    c = ClientState("al")
    c.receive_data(enc(type="welcome", nick="al", session="s", token="tok", resumed=False, rooms=[]))
    hello = decoded(c.hello())
    assert hello["token"] == "tok" and "last_seq" not in hello


def test_hello_resets_registration_and_framer() -> None:
    c = welcomed()
    assert c.registered
    c.receive_data(b'{"type":"msg","seq":99')  # a half line from the old connection
    c.hello()
    assert not c.registered
    out = c.receive_data(ev("msg", 12, room="lobby", text="x"))
    assert [f["seq"] for f in out] == [12]  # the half line did not poison the new stream


@pytest.mark.parametrize(
    ("first", "said"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "'SSH-2.0-OpenSSH_9.6'"),
        (b'["type", "welcome"]\n', '\'["type", "welcome"]\''),  # JSON, but not an object
        (b'{"type": 7}\n', "'{\"type\": 7}'"),
        (b"\x1b[2Jbanner\n", "'\ufffd[2Jbanner'"),  # a terminal escape is shown neutralised
        (b"x" * (cc.CLIENT_MAX_FRAME + 1) + b"\n", "a line too long to be ours"),
    ],
)
def test_a_first_line_that_is_not_a_servers_is_refused(first: bytes, said: str) -> None:
    """Another service on the port: its first line says so at once (else the join waited out its timeout)."""
    c = ClientState("al")
    c.hello()
    with pytest.raises(cc.NotLanchat) as exc:
        c.receive_data(first)
    assert str(exc.value) == f"is not a lanchat server (it said {said})"


def test_only_a_connections_first_line_must_be_a_servers() -> None:
    c = ClientState("al")
    c.hello()
    assert [f["type"] for f in c.receive_data(welcome(7) + b"noise\n" + ev("msg", 8, room="lobby"))] == [
        "welcome",
        "msg",
    ]
    c.hello()  # a new connection: its first line is checked again
    with pytest.raises(cc.NotLanchat):
        c.receive_data(b"noise\n")


def test_each_resume_says_which_attempt_it_is() -> None:
    """The server refuses a resume not newer than the last that resumed the session (a hello held back by
    the network, sent on an attempt the client gave up on)."""
    c = welcomed()
    attempts = [int(decoded(c.hello())["attempt"]) for _ in range(3)]
    assert attempts == sorted(set(attempts))
    assert "attempt" not in decoded(ClientState("al").hello())  # a new session: nothing to resume


def test_a_resume_on_a_server_whose_numbers_went_back_shows_its_new_events() -> None:
    """A data directory restored from a copy taken at a stop: the server numbers events from where the copy
    ended, below what its clients saw. Its new events were dropped as replayed duplicates, silently."""
    c = welcomed(seq=10)
    c.receive_data(ev("msg", 15, room="lobby", text="seen before the restore"))
    c.hello()
    c.receive_data(welcome(12, resumed=True, rooms=["lobby"]))
    assert [f["text"] for f in c.receive_data(ev("msg", 13, room="lobby", text="new", ts=2.0))] == ["new"]


def test_welcome_sets_session_fields() -> None:
    c = ClientState("al")
    c.receive_data(enc(type="server", name="kitchen", proto=1, hint="h"))
    assert c.info.server_name == "kitchen"
    frames = c.receive_data(welcome(7, nick="Al"))
    assert frames[0]["type"] == "welcome"
    assert c.registered
    assert (c.info.session, c.info.token, c.info.nick) == ("s1", "tok", "Al")
    assert c.last_seq == 7


def test_welcome_with_a_non_string_token_keeps_none() -> None:
    c = ClientState("al")
    c.receive_data(enc(type="welcome", nick="al", session="s", token=5, seq=1, resumed=False))
    assert c.info.token is None
    assert "token" not in decoded(c.hello())


# --- posts, acks, outbox --------------------------------------------------------------------------------------


def test_post_ids_increase_and_lines_are_valid_requests() -> None:
    c = welcomed()
    ids = []
    posts: list[m.Msg | m.Action | m.PrivMsg] = [m.Msg("lobby", "a"), m.Action("lobby", "b"), m.PrivMsg("bob", "c")]
    for i, req in enumerate(posts):
        rid, line = c.post(req)
        ids.append(rid)
        obj = decoded(line)
        assert obj["id"] == rid
        parsed = m.parse_line(line[:-1])
        assert parsed.id == rid and type(parsed) is type(req)
        assert c.unacked == i + 1
    assert ids == [1, 2, 3]


def test_ack_removes_from_the_outbox() -> None:
    c = welcomed()
    r1, _ = c.post(m.Msg("lobby", "one"))
    r2, _ = c.post(m.Msg("lobby", "two"))
    frames = c.receive_data(enc(type="ack", id=r1, seq=20))
    assert frames == [{"type": "ack", "id": r1, "seq": 20}]
    assert list(c.outbox) == [r2]
    c.receive_data(enc(type="ack", id=r2, seq=None))  # an ack of a resend carries no seq
    assert c.unacked == 0
    c.receive_data(enc(type="ack", id=12345, seq=1))  # unknown ids are harmless
    c.receive_data(enc(type="ack", id="1", seq=1))
    assert c.unacked == 0


def test_an_ack_or_error_whose_id_is_true_settles_no_post() -> None:
    """A review: JSON's true is Python's 1 to isinstance, so a broken server's ack with "id": true took post 1
    out of the outbox (never sent again); the rest of the module already took ids as ints only."""
    c = welcomed()
    rid, _ = c.post(m.Msg("lobby", "one"))
    assert rid == 1
    c.receive_data(enc(type="ack", id=True))
    c.receive_data(enc(type="error", code="bad_text", message="no", id=True))
    assert list(c.outbox) == [1]


def test_acks_carry_seq_but_are_not_events() -> None:
    c = welcomed(seq=10)  # last_seq 11 after the join
    rid, _ = c.post(m.Msg("lobby", "x"))
    c.receive_data(enc(type="ack", id=rid, seq=50))
    assert c.last_seq == 11  # an ack's seq does not move the event cursor
    out = c.receive_data(ev("msg", 12, room="lobby", **{"from": "bo"}, text="still shown"))
    assert [f["seq"] for f in out] == [12]
    out = c.receive_data(enc(type="ack", id=rid, seq=3))  # nor is an ack dropped as a duplicate
    assert out == [{"type": "ack", "id": rid, "seq": 3}]


def test_refused_posts_leave_the_outbox_but_not_registered_keeps_them() -> None:
    c = welcomed()
    r1, _ = c.post(m.Msg("lobby", "bad"))
    r2, _ = c.post(m.Msg("lobby", "early"))
    c.receive_data(enc(type="error", code=m.Err.NOT_IN_ROOM, message="no", id=r1))
    c.receive_data(enc(type="error", code=m.Err.NOT_REGISTERED, message="hello first", id=r2))
    assert list(c.outbox) == [r2]
    c.receive_data(enc(type="error", code=m.Err.BAD_JSON, message="no id"))
    assert list(c.outbox) == [r2]


def test_resend_lists_unacked_posts_in_order_with_original_ids() -> None:
    c = welcomed()
    sent = [c.post(m.Msg("lobby", f"m{i}")) for i in range(5)]
    c.receive_data(enc(type="ack", id=sent[1][0], seq=30) + enc(type="ack", id=sent[3][0], seq=31))
    c.hello()  # the connection dropped; a new one starts
    c.receive_data(welcome(31, resumed=True, rooms=["lobby"]))
    again = [c.post_line(rid) for rid in c.outbox]  # what a resumed connection sends again, in order
    lines = [x for x in again if x is not None]
    assert lines == again == [sent[0][1], sent[2][1], sent[4][1]]
    assert [decoded(x)["id"] for x in lines] == [1, 3, 5]
    assert [decoded(x)["text"] for x in lines] == ["m0", "m2", "m4"]
    rid, _ = c.post(m.Msg("lobby", "new"))
    assert rid == 6  # ids never restart


def test_outbox_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cc, "OUTBOX_MAX", 3)
    c = welcomed()
    for _ in range(3):
        c.post(m.Msg("lobby", "x"))
    with pytest.raises(RemoteProtocolError) as info:
        c.post(m.Msg("lobby", "x"))
    assert info.value.code == "outbox_full"
    assert c.next_id == 4  # the refused post used no id


def test_a_post_longer_than_the_servers_frame_limit_is_refused_before_sending() -> None:
    """The server's frame_too_long names no id (the line was never parsed), so the post would stay in the
    outbox forever: the client checks the limit the welcome told it."""
    c = ClientState("al", ["lobby"])
    c.hello()
    c.receive_data(enc(type="welcome", nick="al", session="s", token="t", seq=1, rooms=[], max_frame=100))
    assert c.max_frame == 100
    rid, line = c.post(m.Msg("lobby", "x" * 45))
    assert len(line) - 1 <= 100  # the limit counts the line without its newline
    edge = 100 - (len(line) - 1) + 45  # the longest text that fits, exactly
    _, line = c.post(m.Msg("lobby", "x" * edge))
    assert len(line) - 1 == 100
    with pytest.raises(RemoteProtocolError) as info:
        c.post(m.Msg("lobby", "x" * (edge + 1)))
    assert info.value.code == m.Err.FRAME_TOO_LONG and "100" in info.value.message
    assert list(c.outbox) == [rid, rid + 1] and c.next_id == rid + 2  # the refused post used no id


def test_posts_waiting_for_a_server_that_came_back_with_a_smaller_limit_are_refused_not_resent() -> None:
    """Posts queued under one --max-frame, resumed with a server restarted with a smaller one: the server
    would answer each with a frame_too_long naming no id, and the post would be sent again after every
    reconnect, forever. The welcome's limit refuses them at once, each with its id; the others go on."""
    c = ClientState("al", ["lobby"])
    c.hello()
    c.receive_data(welcome(rooms=["lobby"], max_frame=1000))
    short, line = c.post(m.Msg("lobby", "x" * 10))
    fits = 200 - (len(line) - 1) + 10  # the longest text that fits a 200-byte limit, exactly
    at_edge, _ = c.post(m.Msg("lobby", "x" * fits))
    over, _ = c.post(m.Msg("lobby", "x" * (fits + 1)))
    c.hello()
    frames = c.receive_data(welcome(seq=10, resumed=True, rooms=["lobby"], max_frame=200))
    assert [f["type"] for f in frames] == ["welcome", "error"]
    assert frames[1]["id"] == over and frames[1]["code"] == m.Err.FRAME_TOO_LONG and "200" in frames[1]["message"]
    assert list(c.outbox) == [short, at_edge]  # the line of exactly 200 bytes is still sent
    assert c.receive_data(welcome(seq=10, resumed=True, rooms=["lobby"])) == [  # no limit said: nothing to refuse
        decoded(welcome(seq=10, resumed=True, rooms=["lobby"]))
    ]


def test_a_long_post_the_server_handled_before_it_restarted_is_not_reported_unsent() -> None:
    """Its ack lost with the drop, a long post reached the server; the server came back with a smaller
    limit. The welcome's last_id covers it: it was posted, and "not sent" would be false (piped mode
    would exit 1 for it). Only those above last_id are refused (review, night)."""
    c = ClientState("al", ["lobby"])
    c.hello()
    c.receive_data(welcome(rooms=["lobby"], max_frame=1000))
    handled, _ = c.post(m.Msg("lobby", "x" * 300))
    topic = decoded(c.request(m.Topic("lobby", "y" * 290)))["id"]
    lost, _ = c.post(m.Msg("lobby", "z" * 300))
    c.hello()
    frames = c.receive_data(welcome(seq=10, resumed=True, rooms=["lobby"], max_frame=256, last_id=topic))
    assert [(f["type"], f.get("id")) for f in frames] == [("welcome", None), ("error", lost)]
    assert c.outbox == {} and c.unconfirmed() == []
    assert handled < topic < lost


def test_without_a_limit_in_the_welcome_posts_are_not_checked() -> None:
    c = welcomed()  # a welcome without max_frame (an older server)
    assert c.max_frame is None
    c.post(m.Msg("lobby", "x" * const.MAX_TEXT))


def test_post_line_is_the_original_line_until_acknowledged() -> None:
    c = welcomed()
    rid, line = c.post(m.Msg("lobby", "hi"))
    assert c.post_line(rid) == line
    c.receive_data(enc(type="ack", id=rid, seq=12))
    assert c.post_line(rid) is None


def test_request_is_encoded_as_is() -> None:
    c = ClientState("al")
    assert decoded(c.request(m.History("lobby", before=5, limit=3, id=2))) == {
        "type": "history", "room": "lobby", "before": 5, "limit": 3, "id": 2}  # fmt: skip
    assert c.unacked == 0


# --- events and duplicates ------------------------------------------------------------------------------------


def test_duplicate_events_are_dropped() -> None:
    c = welcomed(seq=10)
    data = b"".join(ev("msg", s, room="lobby", text=str(s)) for s in (12, 13, 12, 11, 14, 13, 10, 15))
    out = c.receive_data(data)
    assert [f["seq"] for f in out] == [12, 13, 14, 15]
    assert c.last_seq == 15


def test_replay_after_resume_drops_what_was_seen() -> None:
    c = welcomed(seq=10)
    c.receive_data(ev("msg", 12, room="lobby", text="a") + ev("msg", 13, room="lobby", text="b"))
    c.hello()
    out = c.receive_data(
        welcome(20, resumed=True, rooms=["lobby"]) + ev("msg", 13, room="lobby", text="b") + ev("msg", 14, text="c")
    )
    assert [(f["type"], f.get("seq")) for f in out] == [("welcome", 20), ("msg", 14)]
    assert c.last_seq == 14  # a resumed welcome does not move the cursor to its own seq


def test_non_events_are_never_dropped() -> None:
    c = welcomed(seq=10)
    for frame in (
        {"type": "room", "room": "lobby", "nicks": []},
        {"type": "history", "seq": 1, "events": []},
        {"type": "who", "seq": 2},
        {"type": "error", "code": "x", "message": "y", "seq": 1},
        {"type": "pong"},
        {"type": "gap", "after": 1},
        {"type": "topic", "room": "lobby", "topic": ""},
    ):
        assert c.receive_data(m.encode(frame)) == [frame]
    assert c.last_seq == 11


def test_events_without_int_seq_pass_through() -> None:
    c = welcomed(seq=10)
    out = c.receive_data(enc(type="msg", seq="5", text="x") + enc(type="msg", text="y") + enc(type="msg", seq=1.5))
    assert len(out) == 3
    assert c.last_seq == 11


def test_first_event_without_a_welcome_sets_the_cursor() -> None:
    c = ClientState("al")
    out = c.receive_data(ev("msg", 5) + ev("msg", 5) + ev("msg", 6))
    assert [f["seq"] for f in out] == [5, 6]


def test_garbage_from_the_server_is_skipped() -> None:
    c = welcomed()
    out = c.receive_data(b'not json\n[1,2]\n"s"\n' + b"[" * 100_000 + b"\n\xff\xfe\n" + ev("msg", 12))
    assert [f.get("seq") for f in out] == [12]


def test_frames_split_at_every_byte() -> None:
    data = welcome(3) + ev("join", 4, room="lobby", nick="al") + ev("msg", 5, text="é")
    c = ClientState("al")
    out = []
    for i in range(len(data)):
        out += c.receive_data(data[i : i + 1])
    assert [f["type"] for f in out] == ["welcome", "join", "msg"]


# --- own membership and nick ----------------------------------------------------------------------------------


def test_own_join_part_are_tracked_case_insensitively() -> None:
    c = welcomed(nick="Al")
    assert c.rooms == ["lobby"]
    c.receive_data(ev("join", 12, room="dev", nick="aL") + ev("join", 13, room="games", nick="bob"))
    assert c.rooms == ["lobby", "dev"]
    c.receive_data(ev("join", 14, room="dev", nick="Al"))  # no duplicate
    assert c.rooms == ["lobby", "dev"]
    c.receive_data(ev("part", 15, room="lobby", nick="AL", reason="") + ev("part", 16, room="dev", nick="bob"))
    assert c.rooms == ["dev"]
    c.receive_data(ev("part", 17, room="nowhere", nick="al"))
    assert c.rooms == ["dev"]


def test_own_nick_change_is_tracked() -> None:
    c = welcomed(nick="al")
    c.receive_data(ev("nick", 12, old="bob", new="robert"))
    assert c.info.nick == "al"
    c.receive_data(ev("nick", 13, old="AL", new="alan"))
    assert c.info.nick == "alan"
    c.receive_data(ev("join", 14, room="dev", nick="alan"))
    assert "dev" in c.rooms
    assert decoded(c.hello())["nick"] == "alan"


def test_fresh_welcome_forgets_old_rooms_and_resumed_welcome_restores_them() -> None:
    c = welcomed()
    c.receive_data(ev("join", 12, room="dev", nick="al"))
    c.hello()
    c.receive_data(welcome(30, resumed=True, rooms=["dev", "games"]))
    assert c.rooms == ["dev", "games"]
    c.hello()
    c.receive_data(welcome(40, resumed=False))  # the session expired: a new one, rooms come back as joins
    assert c.rooms == []
    assert c.last_seq == 40  # a new session's events are those after its welcome


def test_a_fresh_welcome_below_the_old_cursor_moves_it_back() -> None:
    """A server that lost its data directory counts from 0 again: its events are not duplicates."""
    c = welcomed(seq=5000)
    c.hello()
    c.receive_data(welcome(3, resumed=False))
    frames = c.receive_data(ev("join", 4, room="lobby", nick="al") + ev("msg", 5, room="lobby", text="hi"))
    assert [f["seq"] for f in frames] == [4, 5]
    assert c.rooms == ["lobby"] and c.last_seq == 5


def test_duplicate_own_join_does_not_alter_membership_after_part() -> None:
    c = welcomed(seq=10)
    c.receive_data(ev("part", 12, room="lobby", nick="al"))
    c.receive_data(ev("join", 11, room="lobby", nick="al"))  # a stale replay of the old join
    assert c.rooms == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=40))
def test_every_event_is_delivered_once_in_increasing_order(seqs: list[int]) -> None:
    c = ClientState("al")
    out = c.receive_data(b"".join(ev("msg", s) for s in seqs))
    got = [f["seq"] for f in out]
    assert got == sorted(set(got))
    expected, top = [], -1
    for s in seqs:
        if s > top:
            expected.append(s)
            top = s
    assert got == expected


def test_a_join_or_part_lost_with_the_link_is_sent_again_after_the_welcome() -> None:
    """A link that dies silently takes what was written last with it: a join lost so, and the post to that
    room after it, was refused as not in the room after the resume (the post came back from the outbox,
    the join did not). Joins and parts are kept, in order, until the server confirms them; the welcome
    says up to which id it handled our requests."""
    st = welcomed()
    join = st.request(m.Join("b"))
    st.sent(join)
    rid, _ = st.post(m.Msg("b", "hello b"))
    part = st.request(m.Part("b"))  # join, post, part: the last one must not hide the first
    st.sent(part)
    assert decoded(join)["id"] < rid < decoded(part)["id"]  # one counter: the order typed
    st.hello()
    st.receive_data(welcome(resumed=True, rooms=["lobby"]))  # nothing of the three reached the server
    assert st.unconfirmed() == [(decoded(join)["id"], join), (decoded(part)["id"], part)]  # with the post between
    st.hello()
    st.receive_data(welcome(resumed=True, rooms=["lobby"], last_id=decoded(part)["id"]))  # all three handled
    assert st.unconfirmed() == []


def test_changes_are_forgotten_once_acked_refused_or_handled() -> None:
    st = welcomed()
    dev, full, lobby, gone = (st.request(r) for r in (m.Join("dev"), m.Join("full"), m.Join("lobby"), m.Part("x")))
    for line in (dev, full, lobby, gone):
        st.sent(line)
    st.receive_data(enc(type="error", code=m.Err.TOO_MANY_ROOMS, message="no", id=decoded(full)["id"]))  # refused
    st.receive_data(enc(type="ack", id=decoded(lobby)["id"]))
    st.receive_data(ev("join", 12, room="dev", nick="al") + enc(type="ack", id=decoded(dev)["id"]))  # done
    later = st.request(m.Join("later"))  # typed while offline: the client's queue sends it, in typed order
    st.hello()
    st.receive_data(welcome(resumed=True, rooms=["lobby", "dev"]))
    assert st.unconfirmed() == [(decoded(gone)["id"], gone)]  # the part's answer was lost with the link
    st.sent(later)  # sent after the reconnect, and lost with the next drop
    st.hello()
    st.receive_data(welcome(resumed=True, rooms=["lobby", "dev"], last_id=decoded(gone)["id"]))
    assert st.unconfirmed() == [(decoded(later)["id"], later)]


def test_changes_the_expired_session_handled_are_done_again_in_the_new_one() -> None:
    """/nick anna and /join s reached the server, which handled them, and the link died before their
    answers came. When the session then expired, the new one was made from the client's view (ann, #r) and
    the welcome's last_id (the old session's) said they were handled: they were forgotten, and the next
    line to #s was refused. A join, a nick and a part of a room the hello asked for are done again."""
    st = welcomed()
    st.receive_data(ev("join", 12, room="r", nick="al"))
    lines = [st.request(r) for r in (m.Nick("anna"), m.Join("s"), m.Topic("r", "plans"), m.Part("r"), m.Part("x"))]
    for line in lines:
        st.sent(line)
    hello = decoded(st.hello())
    assert hello["rooms"] == ["lobby", "r"] and hello["nick"] == "al"  # nothing of it was answered
    last = decoded(lines[-1])["id"]
    st.receive_data(welcome(20, resume_failed="session expired or unknown", last_id=last))
    nick, join, _, part, _ = lines
    assert st.unconfirmed() == [(decoded(line)["id"], line) for line in (nick, join, part)]  # not the topic
    st.hello()  # the link died again before the server answered them: a resume of the new session
    st.receive_data(welcome(21, resumed=True, last_id=last))  # whose last_id covers their ids all the same
    assert st.unconfirmed() == [(decoded(line)["id"], line) for line in (nick, join, part)]  # still to do
    for line in (nick, join, part):
        st.receive_data(enc(type="ack", id=decoded(line)["id"]))
    st.hello()
    st.receive_data(welcome(22, resumed=True, last_id=last))
    assert st.unconfirmed() == []  # answered: done


def test_changes_the_server_refused_unseen_are_shown_once_as_not_done() -> None:
    """A resume's welcome lists the refused ids: the changes among them below its last_id, whose refusals
    were lost with the link, are shown as not done (they would read as done) and not done again after an
    expiry. Ids above last_id (not handled yet: sent again), of changes never sent, of posts, and
    malformed entries are nothing of the kind."""
    st = welcomed()
    sent = [st.request(r) for r in (m.Nick("anna"), m.Join("s"), m.Topic("lobby", "plans " * 20))]
    for line in sent:
        st.sent(line)
    post, _ = st.post(m.Msg("lobby", "hi"))
    offline = decoded(st.request(m.Part("lobby")))["id"]  # typed while offline: not sent yet
    nick, join, topic = (decoded(line)["id"] for line in sent)
    st.hello()
    refused = [nick, topic, offline, post, True, "3", -1]
    frames = st.receive_data(welcome(20, resume_failed="session expired or unknown", last_id=join, refused=refused))
    away = "the server refused it while the connection was down"
    errors = [f for f in frames if f["type"] == "error"]
    not_done = m.error_frame(m.Err.NOT_DONE, f"not done: /nick anna: {away}", id=nick)
    assert errors == [{**not_done, "request": {"type": "nick", "nick": "anna"}}]
    assert st.unconfirmed() == [(join, sent[1]), (topic, sent[2])]  # the join done again, the topic resent
    assert st.unacked == 1  # the post: resent from the outbox, and refused again with the server's reason
    st.hello()
    frames = st.receive_data(welcome(21, resumed=True, last_id=topic, refused=refused))
    shown = f"not done: /topic #lobby plans plans plans plans plans plans plans p...: {away}"
    assert [(f["message"], f["id"]) for f in frames if f["type"] == "error"] == [(shown, topic)]
    assert st.unconfirmed() == []  # the redone join: handled before the topic


def test_a_refused_change_now_too_long_is_still_shown_as_not_done() -> None:
    """A review: the too-long check ran first and let a change below last_id go without a word, so a
    refused long /topic (its refusal lost, the server back with a smaller --max-frame) was never told."""
    st = welcomed()
    line = st.request(m.Topic("lobby", "plans " * 40))
    st.sent(line)
    rid = decoded(line)["id"]
    st.hello()
    frames = st.receive_data(welcome(12, resumed=True, rooms=["lobby"], max_frame=100, last_id=rid, refused=[rid]))
    errors = [f for f in frames if f["type"] == "error"]
    assert [(f["code"], f["request"]) for f in errors] == [
        (m.Err.NOT_DONE, {"type": "topic", "room": "lobby", "topic": "plans " * 40})
    ]
    assert st.unconfirmed() == []


def test_a_client_that_left_every_room_asks_for_none_in_its_next_hello() -> None:
    """A model test (a helper's): the hello asked for ``rooms or wanted_rooms``, so a client that had left
    every room and came back after an expiry joined the rooms it started with. Before any welcome it asks
    for those; after one, for the rooms it is in."""
    st = ClientState("al", ["lobby", "dev"])
    assert decoded(st.hello())["rooms"] == ["lobby", "dev"]
    st.receive_data(welcome(rooms=["lobby"]) + ev("join", 11, room="lobby", nick="al"))
    st.receive_data(ev("part", 12, room="lobby", nick="al"))
    assert st.rooms == [] and decoded(st.hello())["rooms"] == []


def test_a_redone_part_the_server_did_already_is_not_shown_as_refused() -> None:
    """/part r handled, its answer lost, and the session expired: the new session, made in #r from the
    client's view, leaves #r again. That answer lost in turn, the resume sends the part once more, and the
    server, which did it, refuses it (not in #r). The room is left, as the user asked: no error to show
    (piped mode counted it in its exit code), but an ack (a review: dropped, it left piped mode's input
    line unanswered, holding back the refusals of later lines). A part the user types is refused as ever."""
    st = welcomed()
    st.receive_data(ev("join", 12, room="r", nick="al"))
    part = st.request(m.Part("r"))
    st.sent(part)
    rid = decoded(part)["id"]
    st.hello()
    st.receive_data(welcome(20, resume_failed="session expired or unknown", last_id=rid, rooms=["lobby", "r"]))
    assert st.unconfirmed() == [(rid, part)]  # done again in the new session
    st.hello()
    st.receive_data(welcome(21, resumed=True, last_id=rid, rooms=["lobby"]))  # done, and its answer lost
    assert st.unconfirmed() == [(rid, part)]
    refused = enc(type="error", code=m.Err.NOT_IN_ROOM, message="you are not in #r", id=rid)
    assert st.receive_data(refused) == [{"type": "ack", "id": rid}]  # (piped mode's line is answered)
    assert st.unconfirmed() == []  # answered all the same
    typed = st.request(m.Part("r"))
    st.sent(typed)
    refusal = enc(type="error", code=m.Err.NOT_IN_ROOM, message="you are not in #r", id=decoded(typed)["id"])
    assert [f["code"] for f in st.receive_data(refusal)] == [m.Err.NOT_IN_ROOM]


def test_a_change_done_again_is_not_sent_once_more_after_a_later_one_was_handled() -> None:
    """A review: the redone /nick bob was handled, then the user's /nick al; both answers were lost, and the
    resume resent /nick bob (kept until answered), which the server did again: back to bob. A last_id above
    the new session's first says everything sent before it was handled, the redone changes too."""
    st = welcomed()
    bob = st.request(m.Nick("bob"))
    st.sent(bob)
    st.hello()
    st.receive_data(welcome(20, resume_failed="session expired or unknown", last_id=decoded(bob)["id"]))
    assert st.unconfirmed() == [(decoded(bob)["id"], bob)]  # done again in the new session
    al = st.request(m.Nick("al"))
    st.sent(al)
    st.hello()
    st.receive_data(welcome(21, resumed=True, last_id=decoded(al)["id"]))  # both handled, answers lost
    assert st.unconfirmed() == []


def test_a_room_joined_and_left_before_an_expiry_is_left_in_the_new_session_too() -> None:
    """A review: /join y then /part y, both handled, both answers lost: the join was done again, the part
    not (#y was not in the hello), and the user found itself in #y. Changes are done again in order."""
    st = welcomed()
    join, part = st.request(m.Join("y")), st.request(m.Part("y"))
    for line in (join, part):
        st.sent(line)
    st.hello()
    st.receive_data(welcome(20, resume_failed="session expired or unknown", last_id=decoded(part)["id"]))
    assert st.unconfirmed() == [(decoded(join)["id"], join), (decoded(part)["id"], part)]


def test_changes_are_kept_until_acked_and_questions_until_answered() -> None:
    """/nick and /topic lost with a link that died silently were not sent again; they are changes, kept
    like joins and parts. A question (a topic without text, who, rooms, history) was not kept: a drop took
    its answer, and nothing came or said so (a LAN review: /history and /who typed just before a cut). It
    is kept until answered (any frame with its id), and asked again after the welcome."""
    st = welcomed()
    topic, nick = st.request(m.Topic("lobby", "plans")), st.request(m.Nick("alice"))
    asked = [st.request(r) for r in (m.Topic("lobby"), m.Who("lobby"), m.Rooms(), m.History("lobby"))]
    ids = [decoded(line)["id"] for line in asked]
    assert len(set(ids)) == 4 and min(ids) > decoded(nick)["id"]
    for line in (topic, nick, *asked):
        st.sent(line)
    st.hello()
    st.receive_data(welcome(resumed=True, rooms=["lobby"]))  # none of it reached the server
    again = [(decoded(line)["id"], line) for line in asked]
    assert st.unconfirmed() == [(decoded(topic)["id"], topic), (decoded(nick)["id"], nick), *again]
    st.receive_data(ev("topic", 12, room="lobby", nick="al", topic="plans") + enc(type="ack", id=decoded(topic)["id"]))
    assert st.unconfirmed() == [(decoded(nick)["id"], nick), *again]
    st.receive_data(ev("nick", 13, old="al", new="alice"))  # the event alone settles nothing: only its ack
    assert st.info.nick == "alice" and st.unconfirmed() == [(decoded(nick)["id"], nick), *again]
    st.receive_data(enc(type="ack", id=decoded(nick)["id"]))
    st.receive_data(enc(type="who", room="lobby", nicks=["alice"], id=ids[1]))  # answers, or a refusal
    st.receive_data(enc(type="error", code="busy", message="later", id=ids[2]))
    st.receive_data(enc(type="history", room="lobby", events=[], more=False, id=ids[3]))
    assert st.unconfirmed() == [again[0]]
    st.receive_data(enc(type="topic", room="lobby", topic="plans", id=ids[0]))
    assert st.unconfirmed() == []
    unsent = st.request(m.Who("lobby"))  # typed while offline: not asked again from here (the queue sends it)
    st.hello()
    st.receive_data(welcome(resumed=True, rooms=["lobby"]))
    assert st.unconfirmed() == [] and unsent


def test_a_join_whose_history_a_drop_took_asks_for_it_after_the_resume() -> None:
    """A /join the server did just before a silent cut: the resume's welcome lists the room and its replay
    brings the join and what followed, but the room's history before the join (its reply) was lost, and
    the room began with nothing (a LAN review, an MTU black hole). Once the replay shows the join, the
    history before it is asked for: what a join shows, however much was said in the room since."""
    st = welcomed()
    join = st.request(m.Join("dev"))
    st.sent(join)
    jid = decoded(join)["id"]
    st.hello()
    st.receive_data(welcome(resumed=True, seq=74, rooms=["lobby", "dev"], last_id=jid))
    assert st.unconfirmed() == [] and st.take_due() == []  # (the join was done)
    replay = ev("join", 13, room="dev", nick="al") + b"".join(
        ev("msg", seq, room="dev", **{"from": "bo"}, text=f"busy {seq}") for seq in range(14, 75)
    )  # 61 lines said in the room during the outage: more than a page
    assert len(st.receive_data(replay)) == 62
    (line,) = st.take_due()
    asked = decoded(line)
    assert asked == {"type": "history", "room": "dev", "before": 13, "limit": const.HISTORY_ON_JOIN, "id": asked["id"]}
    assert asked["id"] > jid and st.take_due() == []
    st.hello()  # a drop before its answer: asked again, as any question
    st.receive_data(welcome(resumed=True, seq=74, rooms=["lobby", "dev"], last_id=asked["id"]))
    assert st.unconfirmed() == [(asked["id"], line)]
    old = {"type": "msg", "seq": 12, "ts": 0.5, "room": "dev", "from": "bo", "text": "before"}
    (page,) = st.receive_data(enc(type="history", room="dev", events=[old], more=False, id=asked["id"]))
    assert page["events"] == [old]
    st.hello()  # answered: not asked again
    st.receive_data(welcome(resumed=True, seq=74, rooms=["lobby", "dev"], last_id=asked["id"]))
    assert st.unconfirmed() == [] and st.take_due() == []


def test_a_joins_lost_history_is_asked_also_when_a_lost_rename_followed_it() -> None:
    """A review: /join dev and /nick bo both lost their answers; the replayed join is under al, the nick at
    the drop, not bo, the welcome's: it is ours all the same."""
    st = welcomed()
    join, nick = st.request(m.Join("dev")), st.request(m.Nick("bo"))
    st.sent(join)
    st.sent(nick)
    st.hello()
    st.receive_data(welcome(resumed=True, seq=14, nick="bo", rooms=["lobby", "dev"], last_id=decoded(nick)["id"]))
    st.receive_data(ev("join", 13, room="dev", nick="al") + ev("nick", 14, old="al", new="bo"))
    (line,) = st.take_due()
    assert decoded(line)["before"] == 13


@pytest.mark.parametrize("answered", ["history", "room", "not handled", "never sent", "new session", "already in"])
def test_a_join_answered_or_not_done_asks_for_no_history(answered: str) -> None:
    st = welcomed()
    join = st.request(m.Join("lobby" if answered == "already in" else "dev"))
    jid = decoded(join)["id"]
    if answered != "never sent":
        st.sent(join)
    if answered == "history":  # the history came, the room reply and the ack were lost: nothing missing
        st.receive_data(enc(type="history", room="dev", events=[], more=False))
    if answered == "room":  # no history reply (--history-on-join 0), then the room reply
        st.receive_data(enc(type="room", room="dev", nicks=["al"], id=jid))
    st.hello()
    handled = -1 if answered == "not handled" else jid
    extra: dict[str, Any] = {"resume_failed": "expired"} if answered == "new session" else {"resumed": True}
    st.receive_data(welcome(seq=14, rooms=["lobby", "dev"], last_id=handled, **extra))
    if answered != "already in":  # (already in the room: the server makes no join event)
        st.receive_data(ev("join", 13, room="dev", nick="al"))
    assert st.take_due() == []
    again = answered in ("not handled", "new session")  # sent again (done again in a new session): its own history
    assert st.unconfirmed() == ([(jid, join)] if again else [])


def test_questions_kept_are_bounded() -> None:
    st = welcomed()
    for _ in range(QUESTIONS_KEPT + 5):
        st.sent(st.request(m.Rooms()))
    st.hello()
    st.receive_data(welcome(resumed=True, rooms=["lobby"]))
    assert len(st.unconfirmed()) == QUESTIONS_KEPT


def test_the_joins_of_a_new_sessions_hello_settle_no_change() -> None:
    """The session expired while away: the new session joins the hello's rooms at once, and those join
    events (in the welcome's read) looked like confirmations of changes typed before the drop: a pending
    /join dev settled, and with it the /nick and /part typed before it, never handled (review, night)."""
    st = welcomed()
    st.receive_data(ev("join", 12, room="dev", nick="al"))
    lines = [st.request(r) for r in (m.Topic("lobby", "plans"), m.Nick("bob"), m.Part("dev"), m.Join("dev"))]
    for line in lines:
        st.sent(line)
    st.hello()
    st.receive_data(
        welcome(seq=40, rooms=["lobby", "dev"], resume_failed="session expired or unknown")
        + ev("join", 41, room="lobby", nick="al")
        + ev("join", 42, room="dev", nick="al")
        + enc(type="room", room="dev", topic="", users=1, nicks=["al"])
    )
    assert st.unconfirmed() == [(decoded(line)["id"], line) for line in lines]  # all four, in the order typed


def test_a_replayed_event_of_a_handled_change_settles_no_newer_one() -> None:
    """A topic set was handled (its event missed), a nick and a second topic set were not: the replay of
    the first topic's event, read after the resends went out, settled the second (same room) and the nick
    typed before it; a second drop then lost both (review, night)."""
    st = welcomed()
    t1, nick, t2 = (st.request(r) for r in (m.Topic("lobby", "plnas"), m.Nick("bob"), m.Topic("lobby", "plans")))
    for line in (t1, nick, t2):
        st.sent(line)
    st.hello()
    st.receive_data(welcome(seq=12, resumed=True, rooms=["lobby"], last_id=decoded(t1)["id"]))
    assert [rid for rid, _ in st.unconfirmed()] == [decoded(nick)["id"], decoded(t2)["id"]]  # resent
    st.receive_data(ev("topic", 12, room="lobby", nick="al", topic="plnas"))  # the replay, in the next read
    st.hello()  # the link dies again before the resends were handled
    st.receive_data(welcome(seq=12, resumed=True, rooms=["lobby"], last_id=decoded(t1)["id"]))
    assert [rid for rid, _ in st.unconfirmed()] == [decoded(nick)["id"], decoded(t2)["id"]]


def test_a_change_longer_than_the_servers_limit_is_refused_and_not_kept() -> None:
    """A /topic of 300 characters is longer than a --max-frame of 256: the server's frame_too_long names no
    id, so it was kept and sent again after every resume. Refused before sending, as a post is; one kept
    from before a restart with a smaller limit is refused at the welcome."""
    st = ClientState("al", ["lobby"])
    st.hello()
    st.receive_data(welcome(rooms=["lobby"], max_frame=256) + ev("join", 11, room="lobby", nick="al"))
    next_id = st.next_id
    with pytest.raises(RemoteProtocolError) as info:
        st.request(m.Topic("lobby", "x" * 300))
    assert info.value.code == m.Err.FRAME_TOO_LONG and st.next_id == next_id  # no id used, nothing kept
    st.hello()
    st.receive_data(welcome(seq=11, resumed=True, rooms=["lobby"], max_frame=1000))
    line = st.request(m.Topic("lobby", "x" * 300))
    st.sent(line)
    st.hello()  # the server restarts with a smaller limit
    frames = st.receive_data(welcome(seq=11, resumed=True, rooms=["lobby"], max_frame=256))
    assert [(f["type"], f.get("id")) for f in frames] == [("welcome", None), ("error", decoded(line)["id"])]
    assert frames[1]["message"].startswith("not sent: /topic #lobby xxx")  # the command, not its JSON line
    assert st.unconfirmed() == []


def test_after_a_failed_resume_a_joins_history_leaves_out_what_was_shown() -> None:
    """The session expired while away: the new session's joins send each room's last events, and the user
    read again what they had seen before the drop (a walkthrough: 50 lines). Events are matched by (seq,
    ts), not by last_seq: a private message or a replay gap raises last_seq past events never shown."""
    st = welcomed()
    st.receive_data(ev("msg", 12, room="lobby", **{"from": "bo"}, text="seen"))
    st.receive_data(enc(type="gap", reason="history too short"))
    st.receive_data(ev("privmsg", 40, **{"from": "bo"}, to="al", text="psst"))  # last_seq 40: 13..39 unseen
    st.hello()
    frames = st.receive_data(welcome(seq=50, rooms=["lobby"], resume_failed="session expired or unknown"))
    page = [
        decoded(ev("join", 11, room="lobby", nick="al")),  # shown: at the start (welcomed)
        decoded(ev("msg", 12, room="lobby", **{"from": "bo"}, text="seen")),
        decoded(ev("msg", 13, room="lobby", **{"from": "bo"}, text="never shown")),
        decoded(ev("quit", 45, nick="al")),  # the old session's end: after the drop
    ]
    [hist] = st.receive_data(enc(type="history", room="lobby", more=True, events=page))
    assert [e["seq"] for e in hist["events"]] == [13, 45]
    assert hist["more"] is True  # the server's: events before the page may never have been shown
    asked = decoded(st.request(m.History("lobby", limit=4)))  # the user's own /history: everything
    [own] = st.receive_data(enc(type="history", room="lobby", more=False, events=page, id=asked["id"]))
    assert len(own["events"]) == 4
    [later] = st.receive_data(enc(type="history", room="lobby", more=True, events=page))  # a /join typed later
    assert len(later["events"]) == 4  # only the hello's joins are filtered, once each
    st.hello()
    st.receive_data(welcome(seq=60, resumed=True, rooms=["lobby"]))  # a resume: joins send no history anyway
    [again] = st.receive_data(enc(type="history", room="lobby", more=True, events=page))
    assert len(again["events"]) == 4  # filtered only in a session that replaced an expired one
    assert frames[0]["type"] == "welcome"


def test_odd_values_in_events_and_history_pages_are_ignored_not_a_crash() -> None:
    """A list as a timestamp is not hashable, an integer of 400 digits overflows a float: remembering or
    looking up such an event must not raise (it killed the client's read task)."""
    st = welcomed()
    st.receive_data(enc(type="msg", seq=12, ts=[1], room="lobby", text="x"))
    st.receive_data(enc(type="msg", seq=13, ts={"a": 1}, room="lobby", text="x"))
    st.hello()
    st.receive_data(welcome(seq=50, rooms=["lobby"], resume_failed="expired"))
    huge = b"1" + b"0" * 400  # a JSON integer that overflows a float
    st.receive_data(b'{"type":"msg","seq":14,"ts":' + huge + b',"room":"lobby","text":"x"}\n')
    page = [{"seq": 12, "ts": [1]}, {"seq": [1], "ts": 1.0}, "junk", decoded(ev("msg", 15, room="lobby", text="y"))]
    page.append({"seq": 16, "ts": 10**400})
    [hist] = st.receive_data(enc(type="history", room="lobby", events=page))
    assert len(hist["events"]) == 5


def test_the_events_remembered_as_shown_are_bounded() -> None:
    st = welcomed()
    for seq in range(12, 12 + cc.SEEN_KEPT + 10):
        st.receive_data(ev("msg", seq, room="lobby", **{"from": "bo"}, text="x"))
    assert len(st._seen) == len(st._seen_set) == cc.SEEN_KEPT


def test_commands_queued_while_reconnecting_are_bounded_and_the_one_too_many_is_refused_aloud() -> None:
    """Past QUEUED_MAX commands typed while the client reconnects, more were dropped without a word."""
    client = ChatClient("127.0.0.1", 9, "al")  # never connected: everything typed is queued
    for i in range(QUEUED_MAX):
        client.send(m.Join(f"r{i % 50}"))
    with pytest.raises(RemoteProtocolError) as info:
        client.send(m.Who("lobby"))
    assert info.value.code == "queue_full"
    client.send(m.Msg("lobby", "posts have their own bound (the outbox)"))


def test_the_goodbye_hello_asks_for_no_rooms() -> None:
    """Quitting between reconnects resumes only to say goodbye; if the session had expired meanwhile, a
    hello with the old rooms made a new session that joined them and quit again, in front of everyone."""
    st = welcomed()
    goodbye = decoded(st.hello(rooms=[]))
    assert goodbye["rooms"] == [] and goodbye["token"] == "tok"
    assert decoded(st.hello())["rooms"] == ["lobby"]


def test_a_new_sessions_rooms_are_the_welcomes_before_their_joins_come() -> None:
    """A drop after #lobby's join but before #dev's had the next hello ask for #lobby alone: a second
    expiry then left the user out of #dev without a word (a review). The welcome names the session's rooms."""
    st = welcomed(seq=10)
    st.receive_data(ev("join", 12, room="dev", nick="al"))
    st.hello()
    st.receive_data(welcome(seq=12, rooms=["lobby", "dev"], resume_failed="session expired or unknown"))
    st.receive_data(ev("join", 41, room="lobby", nick="al"))
    assert decoded(st.hello())["rooms"] == ["lobby", "dev"]
