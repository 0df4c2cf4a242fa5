"""CurrentRoom: where a typed line goes, in the terminal UI and in piped mode alike (sans-IO)."""

from __future__ import annotations

import pytest

from lanchat.client.current import CurrentRoom
from lanchat.protocol import messages as m


def test_switch_may_go_to_a_room_whose_join_is_not_confirmed_yet() -> None:
    """A script's /join dev, /switch lobby, /switch dev, TEXT: the text is for #dev, even though the server
    has not answered the join when the second /switch is read (it went to #lobby)."""
    cur = CurrentRoom("lobby")
    cur.typed(m.Join("dev"), ["lobby"])
    assert cur.room == "dev"
    assert cur.switch("lobby", ["lobby"]) is None and cur.room == "lobby"
    assert cur.switch("dev", ["lobby"]) is None and cur.room == "dev"
    assert cur.switch("", ["lobby"]) is None and cur.room == "lobby"  # F2 cycles through it too
    assert cur.switch("ops", ["lobby"]) == "you are not in #ops: /join ops"


def test_a_confirmed_or_parted_room_is_no_longer_pending() -> None:
    cur = CurrentRoom("lobby")
    cur.typed(m.Join("dev"), ["lobby"])
    cur.typed(m.Part("dev"), ["lobby"])  # parted before the server confirmed it
    assert cur.room == "lobby"
    assert cur.switch("dev", ["lobby"]) == "you are not in #dev: /join dev"
    cur.typed(m.Join("ops"), ["lobby"])
    assert cur.switch("ops", ["lobby", "ops"]) is None  # confirmed: joined, not pending
    cur.typed(m.Part("ops"), ["lobby", "ops"])
    assert cur.room == "lobby"
    assert cur.switch("ops", ["lobby"]) == "you are not in #ops: /join ops"


@pytest.mark.parametrize("code", [m.Err.TOO_MANY_ROOMS, m.Err.BAD_ROOM, m.Err.NOT_DONE])
def test_a_refused_join_goes_back_and_is_forgotten(code: str) -> None:
    """NOT_DONE: refused while the link was down (its code lost with it; the client's own code)."""
    cur = CurrentRoom("lobby")
    cur.typed(m.Join("r50"), ["lobby"])
    cur.refused(code, ["lobby"], {"type": "join", "room": "r50"})
    assert cur.room == "lobby"
    assert cur.switch("r50", ["lobby"]) == "you are not in #r50: /join r50"
    cur.refused(m.Err.NO_SUCH_NICK, ["lobby"])  # not about a join: nothing moves
    assert cur.room == "lobby"


def test_a_refused_join_forgets_every_join_still_unanswered() -> None:
    """Errors do not say which /join they refuse: a refusal that is not the current room's must not leave
    that room pending for good (/switch there, then text to a room we are not in)."""
    cur = CurrentRoom("lobby")
    cur.typed(m.Join("dev"), ["lobby"])
    assert cur.switch("lobby", ["lobby"]) is None
    cur.refused(m.Err.TOO_MANY_ROOMS, ["lobby"])
    assert cur.room == "lobby" and cur.rooms(["lobby"]) == ["lobby"]
    assert cur.switch("dev", ["lobby"]) == "you are not in #dev: /join dev"
    assert cur.rooms(["lobby", "dev"]) == ["lobby", "dev"]  # confirmed after all: joined


def test_a_command_the_client_could_not_take_is_undone() -> None:
    """1,000 commands already waiting for a reconnect: the /join is refused aloud (queue_full) and never
    sent, so the room it made current must not stay current (text typed next would go to #dev, refused)."""
    cur = CurrentRoom("lobby")
    join = m.Join("dev")
    cur.typed(join, ["lobby"])
    cur.not_sent(join)
    assert cur.room == "lobby" and cur.rooms(["lobby"]) == ["lobby"]
    cur.typed(m.Join("ops"), ["lobby"])
    assert cur.switch("lobby", ["lobby"]) is None
    part = m.Part("lobby")
    cur.typed(part, ["lobby"])  # parts the current room: the last other one (ops, pending) becomes current
    assert cur.room == "ops"
    cur.not_sent(part)
    assert cur.room == "lobby" and cur.rooms(["lobby"]) == ["lobby", "ops"]


def test_only_the_last_command_typed_is_undone() -> None:
    """A paste: /join dev, then text meant for #dev. If the join is not taken, what was typed after it
    already went where it made current; undoing it then would move the room under later lines."""
    cur = CurrentRoom("lobby")
    join = m.Join("dev")
    cur.typed(join, ["lobby"])
    cur.typed(m.Join("ops"), ["lobby"])
    cur.not_sent(join)
    assert cur.room == "ops" and cur.rooms(["lobby"]) == ["lobby", "dev", "ops"]


def test_a_room_parted_but_not_yet_let_go_is_no_place_for_lines() -> None:
    """A script's /join dev, /part lobby, /part, TEXT: the /part of #dev made the still-confirmed #lobby
    current again, and the text went there (refused: "you are not in #lobby"). The terminal UI, reading
    slower, said "you are in no room"; now both do, whatever the server has answered."""
    cur = CurrentRoom("lobby")
    cur.typed(m.Join("dev"), ["lobby"])
    cur.typed(m.Part("lobby"), ["lobby"])  # the server has answered neither
    assert cur.room == "dev" and cur.rooms(["lobby"]) == ["dev"]
    cur.typed(m.Part("dev"), ["lobby"])
    assert cur.room is None
    assert cur.switch("lobby", ["lobby"]) == "you are not in #lobby: /join lobby"
    cur.typed(m.Join("lobby"), ["lobby"])  # back in before the part was answered: a place again
    assert cur.room == "lobby" and cur.rooms(["lobby"]) == ["lobby"]
    cur.typed(m.Part("lobby"), ["lobby", "dev"])
    assert cur.rooms([]) == [] and cur.rooms(["dev"]) == ["dev"]  # let go: forgotten as parting


def test_a_change_not_done_moves_the_current_room_only_if_it_was_a_join_and_only_for_its_room() -> None:
    """A review: a NOT_DONE /nick (told after a resume) was taken for a refused join: the /join dev typed
    while offline was forgotten and #lobby made current again, so the next lines went there. It says which
    change it was: a /nick, /part or /topic moves nothing, and a /join lets go of its own room only."""
    cur = CurrentRoom("lobby")
    cur.typed(m.Join("dev"), ["lobby"])
    for request in ({"type": "nick", "nick": "alx"}, {"type": "part", "room": "dev"}, None):
        cur.refused(m.Err.NOT_DONE, ["lobby"], request)
        assert cur.room == "dev" and cur.rooms(["lobby"]) == ["lobby", "dev"]
    cur.typed(m.Join("ops"), ["lobby"])
    cur.refused(m.Err.NOT_DONE, ["lobby"], {"type": "join", "room": "dev"})  # an earlier /join dev, not done
    assert cur.room == "ops" and cur.rooms(["lobby"]) == ["lobby", "ops"]
    cur.refused(m.Err.NOT_DONE, ["lobby"], {"type": "join", "room": "ops"})
    assert cur.room == "lobby" and cur.rooms(["lobby"]) == ["lobby"]


def test_a_join_not_done_leaves_the_same_join_typed_again_offline() -> None:
    """A review: /join dev was refused with its answer lost, and typed again while offline; the first's
    NOT_DONE let go of #dev altogether, so the second, done after the resume, left #lobby current."""
    cur = CurrentRoom("lobby")
    cur.typed(m.Join("dev"), ["lobby"])
    cur.typed(m.Join("dev"), ["lobby"])
    assert cur.rooms(["lobby"]) == ["lobby", "dev"]
    cur.refused(m.Err.NOT_DONE, ["lobby"], {"type": "join", "room": "dev"})
    assert cur.room == "dev" and cur.rooms(["lobby"]) == ["lobby", "dev"]
    cur.typed(m.Part("dev"), ["lobby"])  # a /part lets go of every /join of it
    assert cur.room == "lobby" and cur.rooms(["lobby"]) == ["lobby"]
