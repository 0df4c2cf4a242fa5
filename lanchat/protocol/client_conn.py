"""The client's side of a connection, sans-IO: what makes a drop invisible to the user.

Tracks the session (token, nick, rooms), the last event sequence seen (events at or below it are
duplicates from a replay and are dropped), and the outbox: every post carries an increasing id and
stays in the outbox until the server acks it, so after a reconnect it is sent again and the server's
dedup makes sure it is posted exactly once.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any, Final

from lanchat import const
from lanchat.errors import RemoteProtocolError
from lanchat.protocol import messages as m
from lanchat.protocol.framing import Frame, LineFramer
from lanchat.protocol.plain import NicksHad, clean

CLIENT_MAX_FRAME: Final = 32 * 1024 * 1024  # bytes: a history page of 500 large events fits
OUTBOX_MAX: Final = 10_000  # unacknowledged posts kept while disconnected; beyond, typing is refused
QUESTIONS_KEPT: Final = 64  # questions (history, who, ...) awaiting their answers, asked again after a drop
SEEN_KEPT: Final = 2_000  # events remembered as shown (seq, ts): a failed resume's join history leaves them out


class NotLanchat(Exception):
    """The first line from a peer is not a lanchat server's (its greeting, or the error of a refusal: both
    JSON objects with a ``type``): another service on that port, such as ssh or a web server."""

    def __init__(self, line: Frame) -> None:
        if isinstance(line, bytes):  # its first words, cleaned of control characters
            said = repr(clean(line.decode("utf-8", "replace").strip())[:60])
        else:
            said = "a line too long to be ours"
        super().__init__(f"is not a lanchat server (it said {said})")


def server_frame(line: Frame) -> dict[str, Any] | None:
    """The frame a lanchat server's line holds (a JSON object with a string ``type``), else None."""
    if not isinstance(line, bytes):  # FRAME_TOO_LONG
        return None
    try:
        frame = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested [[[...
        return None
    return frame if isinstance(frame, dict) and isinstance(frame.get("type"), str) else None


@dataclass(slots=True)
class SessionInfo:
    session: str = ""
    token: str | None = None
    nick: str = ""
    server_name: str = ""
    # The nicks this client has had: a replay after an expiry or a rename may carry private messages it sent
    # as one of them (plain.sent_by_me).
    nicks: NicksHad = field(default_factory=NicksHad)

    @property
    def had(self) -> dict[str, int]:
        return self.nicks.had


class ClientState:
    """Feed it server bytes; ask it for the bytes to send. Knows nothing of sockets or time."""

    def __init__(self, nick: str, rooms: list[str] | tuple[str, ...] = (const.DEFAULT_ROOM,)) -> None:
        self.info = SessionInfo(nick=nick)
        self.wanted_rooms = list(rooms)
        self.rooms: list[str] = []  # rooms we are in, join order
        self.last_seq: int | None = None
        self.outbox: OrderedDict[int, m.Msg | m.Action | m.PrivMsg] = OrderedDict()
        self.next_id = 1
        self.registered = False
        self.max_frame: int | None = None  # the server's line limit, from its welcome
        self._framer = LineFramer(CLIENT_MAX_FRAME)
        self._greeted = False  # this connection's first line was a lanchat server's
        self._attempts = 0  # hellos sent: a resume says which it is, so that the server refuses a stale one
        # Changes (joins, parts, nick and topic changes) the server has not acknowledged, in the order typed:
        # a link that dies silently takes what was written last with it (and a post to a room joined just
        # before would then be refused). Settled only by id (an ack, a reply, a refusal), never by matching
        # events: a replayed event of an earlier change, or the joins of a new session's hello, look alike.
        self._journal: list[_Asked] = []
        # Questions (history, who, rooms, stats, a topic asked) sent and not answered yet, by id: a drop took
        # their answers (a user's /history showed nothing, and nothing said so); asked again after the welcome.
        self._questions: OrderedDict[int, _Asked] = OrderedDict()
        self._handled_upto = -1  # the highest of our request ids the server handled, from its welcome
        self.last_change_id: int | None = None  # the id ``request`` gave the last change
        self.last_question_id: int | None = None  # ... and the last question
        self._nick_at_drop = nick  # the nick before the last welcome (a replay's events may be under it)
        # The newest events shown, by (seq, ts): after a failed resume the new session's joins send each
        # room's recent history, and what the user saw before the drop is left out of it. Identity, not a
        # high-water mark: a private message or a replay gap raises last_seq past events never shown, and a
        # server with a new data directory reuses numbers (never with the same timestamp).
        self._seen: deque[tuple[int, float]] = deque()
        self._seen_set: set[tuple[int, float]] = set()
        self._hello_rooms: list[str] = []  # the rooms the last hello asked for
        self._new_session = False  # the last welcome was of a session that replaced an expired one
        self._redone: set[int] = set()  # ids of changes done again in such a session, until answered
        self._redo_upto = -1  # that session's first last_id: one above it says the redone ones were handled
        # A resume's welcome's seq: its rooms are the session's after every event up to it, so the replay's
        # own joins and parts (which may be under a nick the client never knew it had) change nothing.
        self._resumed_at = -1
        self._refill: set[str] = set()  # rooms whose join history, in a session that replaced an expired one,
        # is still to come (filtered: see _history)
        # Joins sent whose answers (the room's history, then the room reply) have not come, by id: a drop that
        # took them after the server did the join left the room without its history, and the resume's replay
        # starts at the drop. Once the replay shows the join, the history before it is asked for (take_due).
        self._joins_unanswered: dict[int, str] = {}
        self._history_due: set[str] = set()  # rooms whose replayed join asks for the history before it
        self._due: list[_Asked] = []  # those questions, to be sent (take_due)

    def restore(self, token: str, last_seq: int | None, attempts: int, next_id: int, rooms: list[str]) -> None:
        """A session an earlier run of this client had (``saved_view`` then): the next hello resumes it, from
        the last event that run saw. Its attempts and post ids continue (the server refuses a resume whose
        attempt is not above the last one, and takes a post id it handled already for a resend)."""
        self.info.token = token
        self.last_seq = last_seq
        self._attempts = max(self._attempts, attempts)
        self.next_id = max(self.next_id, next_id)
        self.wanted_rooms = list(rooms)  # (a session expired meanwhile: a new one in the same rooms)

    def saved_view(self) -> tuple[str, int | None, int, int, list[str]] | None:
        """(token, last_seq, attempts, next_id, rooms) for ``restore`` by a later run; None before a token."""
        if self.info.token is None:
            return None
        rooms = self.rooms if self.info.session else self.wanted_rooms
        return self.info.token, self.last_seq, self._attempts, self.next_id, list(rooms)

    # --- output -----------------------------------------------------------------------------------------

    def hello(self, rooms: list[str] | None = None) -> bytes:
        """The hello for a new connection: a resume if we had a session, else a fresh one (in ``rooms``,
        by default the rooms we are in or asked for at the start)."""
        self._framer = LineFramer(CLIENT_MAX_FRAME)
        self._greeted = False
        self.registered = False
        obj: dict[str, Any] = {"type": "hello", "proto": const.PROTOCOL_VERSION, "nick": self.info.nick}
        # Once welcomed, the rooms it is in, none if it left them all (a new session after an expiry must not
        # join the rooms of the start again); before, those it asked for at the start.
        obj["rooms"] = (self.rooms if self.info.session else self.wanted_rooms) if rooms is None else rooms
        self._hello_rooms = list(obj["rooms"])
        self._attempts += 1
        if self.info.token is not None:
            obj["token"] = self.info.token
            obj["attempt"] = self._attempts  # a hello the network delivers late must not take the session
            if self.last_seq is not None:  # from a newer connection (the server refuses attempts not above
                obj["last_seq"] = self.last_seq  # the last one that resumed it)
        return m.encode(obj)

    def post(self, req: m.Msg | m.Action | m.PrivMsg) -> tuple[int, bytes]:
        """Queue a post with the next id; returns (id, line). The line may be sent now or after resume.
        Raises RemoteProtocolError if the outbox is full or the line is longer than the server takes
        (a refusal without an id could not be matched to the post, which would then wait forever)."""
        if len(self.outbox) >= OUTBOX_MAX:
            raise RemoteProtocolError("outbox_full", f"{OUTBOX_MAX} messages are waiting to be sent already")
        line = _post_line(self.next_id, req)
        self._check_size(line)
        rid = self.next_id
        self.next_id += 1
        self.outbox[rid] = req
        return rid, line

    def request(self, req: m.Request) -> bytes:
        """A request's line. A change (join, part, nick, topic set) gets an id (from the posts' counter: the
        server acks it, its replies and refusals echo it, and its welcome says up to which id it handled
        our requests) and is kept until the server acks it (see ``unconfirmed``). A question (history, who,
        rooms, stats, a topic asked) gets an id too (a history reply is then told from a join's), and is kept
        until its answer comes, QUESTIONS_KEPT at most: sent before a drop, it is asked again after the welcome.
        Raises RemoteProtocolError, as ``post`` does, for a line longer than the server takes."""
        change = m.is_change(req)
        question = isinstance(req, m.History | m.Who | m.Rooms | m.Stats | m.Topic) and not change
        if (change or question) and req.id is None:
            req = replace(req, id=self.next_id)
            if question:
                self.next_id += 1
        if question:
            self.last_question_id = req.id
        line = m.encode(req.to_obj())
        self._check_size(line)
        if not change:
            if question:  # (an id of the caller's own, piped mode's last one, leaves the counter as it is)
                assert req.id is not None
                self._questions.pop(req.id, None)
                self._questions[req.id] = _Asked(req.id, line)
                if len(self._questions) > QUESTIONS_KEPT:
                    self._questions.popitem(last=False)
            return line
        assert req.id is not None
        self.next_id = max(self.next_id, req.id + 1)
        self._journal.append(_Asked(req.id, line))
        if isinstance(req, m.Join):
            self._joins_unanswered[req.id] = req.room
        self.last_change_id = req.id
        return line

    def _check_size(self, line: bytes) -> None:
        if self.max_frame is not None and len(line) - 1 > self.max_frame:
            raise RemoteProtocolError(m.Err.FRAME_TOO_LONG, _too_long(len(line) - 1, self.max_frame))

    def sent(self, line: bytes) -> None:
        """``line`` went out on the current connection (queued ones go out after a reconnect)."""
        for asked in (*reversed(self._journal), *reversed(self._questions.values())):
            if asked.line == line:
                asked.sent = True
                return

    def unconfirmed(self) -> list[tuple[int, bytes]]:
        """After a welcome: the changes sent before the drop that the server did not handle (their
        ids are above the welcome's ``last_id``) and the questions it did not answer, as (id, line) to send
        again in id order with the posts of the outbox: the order they were typed in. Those it handled are
        forgotten; those never sent (typed while offline) go out from the client's queue."""
        upto = self._handled_upto
        if self._new_session:  # done again until answered (see _absorb), whatever later welcomes say of their ids
            self._redone |= self._redo(upto)
            self._redo_upto = upto
        self._journal = [a for a in self._journal if a.id > upto or a.id in self._redone]
        return [(a.id, a.line) for a in (*self._journal, *self._questions.values()) if a.sent]

    def _joins_answered_by(self, welcome: dict[str, Any]) -> None:
        """A welcome's ``last_id`` says which joins the server did: those of a resumed session whose answers
        a drop took have their history asked for when the replay shows them (_absorb); a new session's
        joins, and those sent again, bring their own."""
        self._history_due.clear()
        sent = {a.id for a in self._journal if a.sent}
        for rid, room in list(self._joins_unanswered.items()):
            if rid > self._handled_upto:  # not done: sent again, with its answers to come
                continue
            del self._joins_unanswered[rid]
            if welcome.get("resumed") and not welcome.get("resume_failed") and rid in sent:
                self._history_due.add(room)

    def take_due(self) -> list[bytes]:
        """Questions the client asks of itself (a join's history a drop took), to send now."""
        due, self._due = self._due, []
        for asked in due:
            asked.sent = True  # (the caller sends them now: asked again after a drop from here on)
        return [asked.line for asked in due]

    def _redo(self, upto: int) -> set[int]:
        """The changes the expired session handled, but whose answers we never saw, to do again: the new
        session that replaced it was made from our view (the hello's nick and rooms), without them. Joins and
        nicks (one already done is answered without a change), and parts of rooms the new session is in by
        then, in the order typed; not topics, the rooms' and set already. Their ids are below the new
        session's last_id (the old one's): only a post is checked against it, so that none goes out twice."""
        rooms, redo = set(self._hello_rooms), set()
        for asked in self._journal:
            if asked.id > upto or not asked.sent:
                continue
            obj = json.loads(asked.line)
            kind, room = obj.get("type"), obj.get("room")
            if kind == "join":
                rooms.add(room)
            elif kind == "part" and room in rooms:
                rooms.discard(room)
            elif kind != "nick":
                continue
            redo.add(asked.id)
        return redo

    def post_line(self, rid: int) -> bytes | None:
        """The line of an unacknowledged post, with its original id (None once acknowledged or refused)."""
        req = self.outbox.get(rid)
        return None if req is None else _post_line(rid, req)

    # --- input ---------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[dict[str, Any]]:
        """Server bytes -> frames to show (duplicates from a replay are dropped here). NotLanchat if the
        connection's first line is not a lanchat server's: later lines that are not frames are skipped."""
        frames: list[dict[str, Any]] = []
        for line in self._framer.feed(data):
            frame = server_frame(line)
            if not self._greeted:
                if frame is None:
                    raise NotLanchat(line)
                self._greeted = True
            if frame is not None and self._absorb(frame):
                frames.append(frame)
                if frame["type"] == "welcome":
                    frames += self._refused_unseen(frame.get("refused")) + self._too_long_now()
        return frames

    def _too_long_now(self) -> list[dict[str, Any]]:
        """After a welcome: posts in the outbox and changes in the journal longer than this server takes
        (restarted with a smaller --max-frame while we were away) are refused here, as ``post`` and
        ``request`` refuse new ones. Sent, the server could only answer ``frame_too_long`` without their
        id, and they would wait, sent again after every reconnect, forever. Those the welcome's last_id
        covers reached the server before the drop: they are let go without a word."""
        limit = self.max_frame
        if limit is None:
            return []
        lines = [(rid, _post_line(rid, req), repr(_cut(req.text))) for rid, req in self.outbox.items()]
        lines += ((a.id, a.line, _shown(a.line)) for a in self._journal)  # (/topic #dev ..., not its JSON)
        refused: list[dict[str, Any]] = []
        for rid, line, what in lines:
            if len(line) - 1 > limit:
                self.outbox.pop(rid, None)
                self._settle(rid)
                if rid <= self._handled_upto:  # it reached the server before the drop (its ack was lost)
                    continue
                text = f"not sent: {what}: {_too_long(len(line) - 1, limit)} (it restarted with a smaller limit)"
                refused.append(m.error_frame(m.Err.FRAME_TOO_LONG, text, id=rid))
        return sorted(refused, key=lambda f: int(f["id"]))

    def _refused_unseen(self, refused: object) -> list[dict[str, Any]]:
        """After a welcome: the changes sent before the drop that the server refused (its ``refused`` ids), whose
        refusals were lost with the connection. The welcome's last_id covers them, so they are not sent again
        (nor done again after an expiry): without a word they would read as done. The server's reason went
        with its error; a change typed again gets it."""
        listed = refused if isinstance(refused, list) else []
        ids = {i for i in listed if isinstance(i, int) and not isinstance(i, bool)}
        frames: list[dict[str, Any]] = []
        for asked in [a for a in self._journal if a.sent and a.id in ids and a.id <= self._handled_upto]:
            self._settle(asked.id)
            text = f"not done: {_shown(asked.line)}: the server refused it while the connection was down"
            frame = m.error_frame(m.Err.NOT_DONE, text, id=asked.id)
            frame["request"] = {k: v for k, v in json.loads(asked.line).items() if k != "id"}  # (which /join)
            frames.append(frame)
        return frames

    def _absorb(self, frame: dict[str, Any]) -> bool:
        """Update the state from one frame; False if the frame is a duplicate to drop."""
        seq = frame.get("seq")
        kind = frame["type"]  # a string: server_frame let only such frames through
        if kind == "welcome":
            self.registered = True
            self.info.session = str(frame.get("session", ""))
            self.info.token = frame.get("token") if isinstance(frame.get("token"), str) else None
            self.info.nicks.welcome(frame, self.info.nick)
            self._nick_at_drop = self.info.nick
            self.info.nick = str(frame.get("nick", self.info.nick))
            limit = frame.get("max_frame")
            self.max_frame = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
            rooms = frame.get("rooms")
            upto = frame.get("last_id")
            self._handled_upto = upto if isinstance(upto, int) and not isinstance(upto, bool) else -1
            self.next_id = max(self.next_id, self._handled_upto + 1)  # (a restored run's ids went further)
            self._joins_answered_by(frame)
            self._refill = set(self._hello_rooms) if frame.get("resume_failed") else set()
            self._new_session = bool(frame.get("resume_failed"))
            if self._handled_upto > self._redo_upto:  # it handled a request sent after them, so them too (in
                self._redone.clear()  # order): sent again, a redone /nick would undo a later one
            self._resumed_at = seq if frame.get("resumed") and type(seq) is int else -1  # (as the terminal)
            if frame.get("resumed"):
                self.rooms = [str(r) for r in rooms] if isinstance(rooms, list) else []
                if type(seq) is int and self.last_seq is not None and seq < self.last_seq:
                    self.last_seq = seq  # its numbers went back (its data directory restored from a copy):
                    # the events it numbers next are new, not duplicates of those we saw with the same numbers
            else:  # a new session starts at the welcome's seq, wherever an old one ended (even above it: a
                # server with a new data directory counts from 0 again; below the server's, if it replays
                # what we missed since our last_seq). The rooms it names are the session's: their joins come
                # after that replay, and a drop before them must not have our next hello ask for others.
                self.rooms = [str(r) for r in rooms if isinstance(r, str)] if isinstance(rooms, list) else []
                self.last_seq = seq if type(seq) is int else None
            return True
        if type(frame.get("id")) is int and not (kind in m.EVENT_TYPES and type(seq) is int):  # a reply (a
            self._questions.pop(frame["id"], None)  # topic's has no seq: the event's has) answers a question
            if kind in ("room", "error"):  # a join answered: its history came before it, if any was due
                self._joins_unanswered.pop(frame["id"], None)
        if type(seq) is int and kind in m.EVENT_TYPES:
            if self.last_seq is not None and seq <= self.last_seq:
                return False
            self.last_seq = seq
            self._saw(frame)
        elif kind == "history":
            return self._history(frame)
        me = m.nick_key(self.info.nick)
        if kind == "ack":  # a post (or a change) handled: not to be sent again
            rid = frame.get("id")
            if type(rid) is int:
                self.outbox.pop(rid, None)
                self._settle(rid)
        elif kind in ("join", "part") and type(seq) is int and seq <= self._resumed_at:
            room = str(frame.get("room"))  # replayed: the welcome's rooms have it; a join of ours whose answers
            joiner = m.nick_key(str(frame.get("nick", "")))  # (ours now, or as at the drop: a /nick lost too)
            if kind == "join" and room in self._history_due and joiner in (me, m.nick_key(self._nick_at_drop)):
                self._history_due.discard(room)  # were lost: the history a join shows, before it (as asked)
                rid = self.next_id
                self.next_id += 1
                asked = self._questions[rid] = _Asked(rid, m.encode(m.History(room, before=seq, id=rid).to_obj()))
                self._due.append(asked)  # (kept until answered, as a user's question)
        elif kind == "join" and m.nick_key(str(frame.get("nick", ""))) == me and self.info.nicks.mine(me, seq):
            room = str(frame.get("room"))
            self._refill.discard(room)  # its join history comes before it, if any comes (not after a replay)
            if room not in self.rooms:
                self.rooms.append(room)
        elif kind == "part" and m.nick_key(str(frame.get("nick", ""))) == me and self.info.nicks.mine(me, seq):
            room = str(frame.get("room"))
            if room in self.rooms:
                self.rooms.remove(room)
        elif kind == "nick" and self.info.nicks.nick(frame, self.info.nick):
            self.info.nick = str(frame.get("new"))
        elif kind == "server":
            self.info.server_name = str(frame.get("name", ""))
        elif kind == "error" and type(frame.get("id")) is int and frame.get("code") != m.Err.NOT_REGISTERED:
            rid = frame["id"]
            done = rid in self._redone and frame.get("code") == m.Err.NOT_IN_ROOM  # a redone /part the server
            self.outbox.pop(rid, None)  # did before its answer was lost: the room is left, as asked
            self._settle(rid)  # refused for good (bad text, not in room): not sent again; a change: answered
            if done:  # passed on as the ack it stands for (piped mode waits for an answer to each line)
                frame.clear()
                frame.update({"type": "ack", "id": rid})
        return True

    def _saw(self, event: dict[str, Any]) -> None:
        key = _identity(event)
        if key is not None and key not in self._seen_set:
            self._seen.append(key)
            self._seen_set.add(key)
            if len(self._seen) > SEEN_KEPT:
                self._seen_set.discard(self._seen.popleft())

    def _history(self, frame: dict[str, Any]) -> bool:
        """A history page: its events count as shown. The join history of a room the hello asked for, in a
        session that replaced an expired one (no id: our own pages carry one), leaves out those shown
        before the drop: the user reads what they missed, not 50 lines again (``more`` stays the server's:
        older events may never have been shown)."""
        events = frame.get("events")
        if not isinstance(events, list):
            return True
        room = frame.get("room")
        rid = frame.get("id")
        if rid is None and isinstance(room, str):  # a join's history: that join's answer has come
            for jid in [j for j, r in self._joins_unanswered.items() if r == room]:
                del self._joins_unanswered[jid]
        if rid is None and isinstance(room, str) and room in self._refill:  # the hello's join of it
            self._refill.discard(room)  # (a /join typed later shows its history whole, as ever)
            frame["events"] = [e for e in events if not (isinstance(e, dict) and _identity(e) in self._seen_set)]
        for e in frame["events"]:
            if isinstance(e, dict):
                self._saw(e)
        return True

    def _settle(self, rid: int) -> None:
        self._redone.discard(rid)
        if self._journal and self._journal[0].id <= rid:  # usually the oldest: answers come in order
            self._journal = [a for a in self._journal if a.id != rid]

    @property
    def resumed(self) -> bool:
        """The last welcome resumed a session (not a new one)."""
        return self._resumed_at >= 0

    @property
    def unacked(self) -> int:
        return len(self.outbox)


@dataclass(slots=True)
class _Asked:
    id: int
    line: bytes
    sent: bool = False  # written on a connection (else queued while offline)


def _shown(line: bytes) -> str:
    """A change's line as the command that made it: ``/nick al``, ``/join #dev``, ``/topic #dev text``."""
    obj = json.loads(line)
    kind = str(obj.get("type"))
    what = f"/{kind}"
    if "room" in obj:
        what += f" #{obj['room']}"
    for name in ("nick", "topic"):
        if isinstance(obj.get(name), str):
            what += f" {obj[name]}"
    return _cut(what)


def _cut(text: str) -> str:
    """At most 60 characters of ``text``, to quote it in a line of the client's own."""
    return text if len(text) <= 60 else text[:57] + "..."


def _identity(event: dict[str, Any]) -> tuple[int, float] | None:
    """(seq, ts): what tells one event from any other, on this server or one that reuses its numbers
    (None for a frame without them: a server's values are checked, never trusted to be hashable)."""
    seq, ts = event.get("seq"), event.get("ts")
    if type(seq) is int and isinstance(ts, int | float) and not isinstance(ts, bool):
        try:
            return seq, float(ts)
        except OverflowError:  # an integer of 400 digits
            return None
    return None


def _too_long(size: int, limit: int) -> str:
    """Said in bytes over, which is what to cut: the limit counts the whole line (the JSON fields and the
    UTF-8 of the text), so "it takes 256" would leave a user counting characters to guess."""
    return f"{size - limit} bytes too long for this server (it takes lines of {limit} bytes, fields included)"


def _post_line(rid: int, req: m.Msg | m.Action | m.PrivMsg) -> bytes:
    obj = req.to_obj()
    obj["id"] = rid
    return m.encode(obj)
