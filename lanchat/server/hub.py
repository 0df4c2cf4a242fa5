"""The hub: the global truth of a server. Lives in the main process; knows no socket and no clock (time
is passed in). Its one I/O is its history store (SQLite): commits at ticks, and reads on its loop for a
history page, a room's topic or a resume from disk; its tests use a real file.

Owns the nick directory (unique, case-insensitive), rooms and their members, the one global event
sequence, sessions (resume tokens, detached sessions in their grace period, dedup of client message ids)
and routing: each event is encoded once and queued, per worker, as a room fan-out or a list of
connections. The I/O edge feeds requests in (``post`` for chat lines, the hot path; ``request``, ``eof``,
``closed``, ``worker_lost``, ``tick``, ``commit``) and drains one batch of bytes per worker per loop tick
(``drain``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, islice, takewhile
from typing import Any, Final, NamedTuple

from lanchat import const
from lanchat.errors import RemoteProtocolError
from lanchat.protocol import control
from lanchat.protocol import messages as m
from lanchat.protocol.bucket import TokenBucket
from lanchat.protocol.plain import count_of
from lanchat.storage.history import HistoryStore, SessionRow

log = logging.getLogger("lanchat.hub")
# The bytes m.encode() writes for {"type": "ack", "id": rid, "seq": seq} (seq None: a resend's ack).
_ACK: Final = b'{"type":"ack","id":%d,"seq":%d}\n'
_ACK_NO_SEQ: Final = b'{"type":"ack","id":%d,"seq":null}\n'
# How the lines of events that say something begin (m.encode and the hub's templates write "type" first).
_SAID: Final = (b'{"type":"msg",', b'{"type":"action",', b'{"type":"topic",', b'{"type":"privmsg",')

# Bytes of one client's lines, or of one room's, per control frame (a long replay is several): the worker
# refuses a frame of more than control.MAX_CONTROL_FRAME as a broken pipe, and a smaller frame is parsed sooner.
REPLAY_FRAME: Final = 256 * 1024
# Events a replay looks at, sent or not: a catch-up after an expiry skips the presence events from before its
# session (joins, parts, quits), which its byte budget does not count. Without this bound one hello with a
# token and last_seq 0 had the hub read every stored event of 50 rooms (0.5 s at 10,000 each: a stall for
# everyone; the token a made-up one then, an expired session's since). A full budget of chat lines is ~4,000.
REPLAY_EXAMINED_MAX: Final = 10_000
# A session record's last_join while its hello's joins are to come (see Hub._hello): a restart that finds it
# makes the joins then, as the crash that lost them never told the rooms.
JOINS_LOST: Final = -2


@dataclass(slots=True, eq=False)
class Session:
    sid: str
    token: str
    nick: str
    plain: bool
    rooms: list[str] = field(default_factory=list)
    last_id: int = -1  # highest client request id handled (posts, changes: m.is_change): lower or equal post ids are
    # resends, dropped, unless refused (below); the welcome of a resume tells it, so the client resends the rest
    refused: set[int] | None = None  # refused post ids, and ~id of refused changes (see _remember_refused)
    # Rooms left -> the seq of the part: a resume from before it still replays their events up to it (the
    # connection may have dropped with them and the part in flight). PARTED_KEPT at most, newest kept.
    parted: dict[str, int] | None = None
    worker: int | None = None
    conn: int | None = None
    detached_at: float | None = None
    held_for: str = ""  # the address whose held sessions count it (see Hub.closed), while it is held
    attempt: int = -1  # the newest of its client's connection attempts that resumed it (see Hub._resume)
    peer: str = ""  # its connection's address as --max-per-ip counts it ('' not counted): rooms it makes count
    # The key (_token_key) of the remembered token it was made from, if any: it resumes this one too until the
    # client has shown it knows the new token (the welcome that told it may have been lost). One, or for a
    # client that sends no attempts every token that named the expired session (Hub._hello).
    aliases: tuple[str, ...] = ()
    nick_since: int = -1  # the seq from which it holds its nick (told in its welcomes: plain.sent_by_me)
    start: int = -1  # the server's seq where the answer to its hello ended (-1: not known): see Hub._replay
    # The seq of the last event before the latest room replies (nick lists) the session was sent, and their
    # room ("": all of its rooms): a resume from before it, or at it, may have lost them (Hub._resume). The
    # latest join, or a resume that sent them again (kept on disk with the session).
    # Two fields, not a seq per room: 250 bytes a session in a dict, against a 4 KiB goal per idle connection.
    last_join: int = -1
    last_join_room: str = ""
    renames: TokenBucket | None = None  # what its nick changes paid: an event per room each (Hub._nick)
    _nick_src: str | None = field(default=None, init=False, repr=False)
    _nick_lit: bytes = field(default=b"", init=False, repr=False)

    def nick_literal(self) -> bytes:
        """The nick as a JSON string literal, made once per nick: every message the session posts carries it."""
        if self._nick_src is not self.nick:
            self._nick_src, self._nick_lit = self.nick, m.json_str(self.nick)
        return self._nick_lit

    @property
    def convs(self) -> list[str]:
        return [*self.rooms, "@" + self.sid]

    def row(self) -> SessionRow:
        return SessionRow(
            self.sid, self.token, self.nick, tuple(self.rooms), self.last_id, self.plain, self.start,
            " ".join(self.aliases), self.last_join, self.last_join_room, self.nick_since,
        )  # fmt: skip


@dataclass(slots=True, eq=False)
class Room:
    name: str
    topic: str = ""
    members: dict[str, Session] = field(default_factory=dict)  # sid -> session, in join order
    workers: Counter[int] = field(default_factory=Counter)  # attached members per worker
    # The newest events, for the history a joiner gets without a database read (loaded on first join).
    tail: deque[bytes] = field(default_factory=deque)
    tail_loaded: bool = False
    tail_more: bool = False  # the database has older events than the tail
    tail_bytes: int = 0  # at most ROOM_TAIL_BYTES (but one line): 10,000 rooms of big lines must not take GBs
    made_by: str = ""  # the address that made it (see MAX_ROOMS_PER_ADDRESS; '' not counted)
    # The first ROOM_INFO_NICKS nicks as a JSON array, for the reply to every join: made again after a
    # member leaves or renames, or a join within the first ROOM_INFO_NICKS; not per join (a join to a big
    # room appends past them: 20,000 joins would encode 500 nicks each).
    _nicks_lit: bytes | None = field(default=None, init=False, repr=False)
    # The reply to `who` as its line without an id, until a member joins, leaves or renames: a 10,000-member
    # room's took 5 ms to make, and every connection may ask two a second (an adversarial review)
    _who: bytes | None = field(default=None, init=False, repr=False)

    @property
    def large(self) -> bool:
        return len(self.members) > const.LARGE_ROOM

    def keep(self, line: bytes) -> None:
        """A new event of the room, for the history joiners get."""
        tail = self.tail
        if len(tail) == tail.maxlen:  # the oldest goes: there is history before the tail now
            self.tail_bytes -= len(tail[0])
            self.tail_more = True
        tail.append(line)
        self.tail_bytes += len(line)
        while self.tail_bytes > const.ROOM_TAIL_BYTES and len(tail) > 1:
            self.tail_bytes -= len(tail.popleft())
            self.tail_more = True

    def add(self, s: Session) -> None:
        self.members[s.sid] = s
        self._who = None
        if len(self.members) <= const.ROOM_INFO_NICKS:
            self._nicks_lit = None

    def remove(self, sid: str) -> None:
        if self.members.pop(sid, None) is not None:
            self._nicks_lit = self._who = None

    def nick_changed(self) -> None:
        self._nicks_lit = self._who = None

    def who_line(self, budget: int) -> bytes:
        """The `who` reply (without an id): the first members whose nicks fit ``budget``, and ``more``."""
        if self._who is None:
            nicks = [x.nick for x in self.members.values()]
            frame: dict[str, Any] = {"type": "who", "room": self.name, "users": len(nicks)}
            shown = _fitting((len(json.dumps(n)) for n in nicks), budget)  # 10,000 long nicks
            frame["nicks"] = nicks[:shown]
            if shown < len(nicks):
                frame["more"] = True
            self._who = m.encode(frame)
        return self._who

    def nicks_literal(self) -> bytes:
        if self._nicks_lit is None:
            first = islice(self.members.values(), const.ROOM_INFO_NICKS)
            self._nicks_lit = b"[" + b",".join(x.nick_literal() for x in first) + b"]"
        return self._nicks_lit


@dataclass(slots=True)
class _Backlog:
    """What a hello's answer sends of its rooms' history (their join tails) and their room replies: within
    ``left`` bytes for all of its rooms together (half of --sendq, as a resume's replay: 50 rooms' tails
    of long lines were 3 MiB, and a client on a link with small buffers was dropped as too slow)."""

    left: int

    def fit(self, page: list[bytes]) -> list[bytes]:
        """The newest lines of ``page`` (oldest first) that fit in what is left, which they use up (none,
        once it is used up: a line each for 50 rooms could be 50 times --max-frame)."""
        start = len(page)
        while start and len(page[start - 1]) + 1 <= self.left:
            start -= 1
            self.left -= len(page[start]) + 1
        return page[start:]


@dataclass(slots=True)
class _Run:
    """Consecutive lines for one room in one batch: sent as one ROOM frame, fanned out as one chunk."""

    room: str
    lines: list[bytes]


def _chunks(lines: list[bytes]) -> Iterator[bytes]:
    """``lines`` joined into chunks of at most about REPLAY_FRAME bytes (a longer line is a chunk alone)."""
    start = size = 0
    for i, line in enumerate(lines):
        if size and size + len(line) > REPLAY_FRAME:
            yield b"".join(lines[start:i])
            start, size = i, 0
        size += len(line)
    if size:
        yield b"".join(lines[start:])


class _Expired(NamedTuple):
    """An expired session's token remembered (Hub._expired)."""

    last_id: int  # the highest client id it posted (-1: none, a reader's)
    at: float  # when it expired (wall time: kept across restarts)
    refused: tuple[int, ...]  # its refused client ids
    sid: str
    attempt: int  # the newest of its client's connection attempts (Session.attempt)


# An event of the resume ring: (seq, convs, line). A plain tuple, not a class: the garbage collector stops
# tracking a tuple of ints, strings and bytes (at its first collection of the middle generation), so the
# ring's 50,000 events, replaced at the message rate, never reach the oldest generation. As objects they did,
# and set off full collections of the main process mid-load, 12-35 ms each with nothing relayed
# (docs/benchmarks.md, "Levers"; see also heap.py).
_Recent = tuple[int, tuple[str, ...], bytes]


class Hub:
    def __init__(
        self,
        store: HistoryStore,
        *,
        resume_grace: float = const.RESUME_GRACE,
        history_on_join: int = const.HISTORY_ON_JOIN,
        max_frame: int = const.MAX_FRAME,
        replay_max: int = const.SENDQ // 2,
        held_per_ip: int = const.MAX_PER_IP,
        stats: Callable[[], dict[str, Any]] | None = None,
        recent_max: int = const.RECENT_EVENTS,
        recent_bytes: int = const.RECENT_BYTES,
        rate: float = const.RATE,
        burst: int = const.BURST,
        now: float = 0.0,
        wall_offset: float = 0.0,
    ) -> None:
        self.store = store
        self.rate, self.burst = rate, burst  # a connection's --rate and --burst: what renames pay (_nick)
        # Every ``now`` given to the hub is monotonic: the grace and the store's retries are durations, which a
        # step of the wall clock (NTP's first sync on a board without a clock chip) must not cut short or
        # stretch. The wall time (events' ts, tokens remembered across restarts) is now + wall_offset, which
        # the I/O edge keeps current.
        self.wall_offset = wall_offset
        self._start_wall = now + wall_offset  # this run's start, by the wall clock
        self.resume_grace = resume_grace
        self.history_on_join = history_on_join
        self.max_frame = max_frame  # told in the welcome: a client refuses longer posts before sending them
        self.replay_max = replay_max  # bytes a resume replays at most (see _replay)
        self._stats = stats
        self.seq = store.start_seq
        self.sessions: dict[str, Session] = {}  # sid ->
        self.by_token: dict[str, Session] = {}
        self.nicks: dict[str, Session] = {}  # nick_key -> (the identity: routing, uniqueness)
        self.lookalikes: dict[str, Session] = {}  # nick_skeleton -> (nicks that read alike: refused too)
        self.conns: dict[tuple[int, int], Session] = {}  # (worker, conn) ->
        self.rooms: dict[str, Room] = {}
        store.live_topics = lambda: [(r.name, r.topic) for r in self.rooms.values() if r.topic]  # (see put_topic)
        self._listing: bytes | None = None  # the rooms reply's line without its id, until a room changes
        self.recent: deque[_Recent] = deque(maxlen=recent_max)
        self.recent_bytes = recent_bytes  # the ring's bytes at most (its lines')
        self._recent_bytes = 0
        self._out: dict[int, list[bytes | _Run]] = {}
        # Released by the next commit: acks (worker, conn, id, seq), then the closes of quit connections
        self._acks: list[tuple[int, int, int, int | None]] = []
        self._closes: list[tuple[int, int, str]] = []  # (worker, conn, reason)
        self._now_src, self._now_ms = -1.0, -1.0  # the last clock reading stamped, rounded to ms
        self._ts_src, self._ts_lit = -1.0, b"-1.0"  # the last timestamp formatted for a line, and its JSON text
        self.msgs_in = 0
        self.events_out = 0
        self.busy: set[int] = set()  # workers with more than PIPE_HIGH_WATER queued: their listings are refused
        # An expired session's token key (_token_key) -> _Expired, oldest first; kept in the database too, with
        # the ids of its refused posts; the same with the refused ids of the sessions below
        refused = store.load_refused()
        # Posters' and readers' (last_id -1) apart, each EXPIRED_TOKENS_MAX at most: a host saying hello and
        # dropping again and again must not push out the tokens that keep a poster's resend from going twice.
        self._expired: dict[str, _Expired] = {}
        self._expired_readers: dict[str, _Expired] = {}
        self._naming: dict[str, tuple[str, ...]] = {}  # sid -> the keys above naming it (its private messages kept)
        # Address -> the sids it remembers tokens of, oldest first (EXPIRED_TOKENS_PER_ADDRESS), and back; this
        # run's only (the file keeps no address: a restart's loaded tokens count in the global bounds alone)
        self._remembered_by: dict[str, dict[str, None]] = {}
        self._remembered_at: dict[str, str] = {}
        self._alias: dict[str, Session] = {}  # a token key -> the session it resumes (Session.aliases)
        self._expired_loaded = False
        self._load_expired(refused)
        self.held_per_ip = held_per_ip
        self._made: Counter[str] = Counter()  # address -> rooms in use that it made (MAX_ROOMS_PER_ADDRESS)
        self._held: dict[str, deque[Session]] = {}  # address -> its sessions held for a resume, oldest first
        lost_joins: list[Session] = []
        for row in store.load_sessions():  # sessions of the previous run wait for their clients
            s = Session(row.sid, row.token, row.nick, row.plain, list(row.rooms), row.last_id, detached_at=now)
            if row.last_join == JOINS_LOST:
                lost_joins.append(s)
            s.start = row.start
            # (a record of an older lanchat: the end of the answer to its hello stands for its latest join)
            s.last_join, s.last_join_room = (
                (row.last_join, row.last_join_room) if row.last_join >= 0 else (row.start, "")
            )
            s.aliases = tuple(row.aliases.split())  # (after a restart too)
            s.nick_since = row.nick_since
            if ids := refused.pop("s:" + row.sid, ()):
                s.refused = set(ids)
            self._add_session(s)
            for name in s.rooms:
                self._room(name).add(s)
        for s in lost_joins:  # a crash inside its hello took its joins: made now (others' resumes replay them)
            for name in s.rooms:
                self._presence(s, self.rooms[name], "join", {"room": name, "nick": s.nick}, now)
            s.last_join, s.last_join_room = self.seq, ""  # (its resume sends every room's reply)
            store.put_session(s.row())
        self._forget_expired(now)  # (those past the bounds while the server was down)
        for owner in refused:  # of sessions that ended while the disk failed, or tokens forgotten since
            store.put_refused(owner, ())
        self.end_plain_sessions("connection lost", now)  # left by a crash: their nicks are free at once
        if self.sessions:
            log.info("%s of the last run held %s for their clients to resume",
                     count_of(len(self.sessions), "session"), self._grace_words())  # fmt: skip

    def _load_expired(self, refused: dict[str, tuple[int, ...]], last_run: Sequence[SessionRow] = ()) -> None:
        """The tokens remembered on disk, older than any of this run's (the database may open late). Those
        past the bounds are forgotten at the next tick, with the private messages they kept.

        ``last_run``: the last run's session records, when the database opened only after the start. They
        expire now, as if their grace had run out with this run's start (older than this run's expiries).
        Their clients could not resume them meanwhile (nothing was loaded) and may have taken their nicks as
        new sessions: loaded as held sessions, a nick would be had twice. Remembered as tokens, a client that
        comes back with one gets what it missed, its private messages included, and a resend is not posted
        twice."""
        if self._expired_loaded or not self.store.opens:
            return
        self._expired_loaded = True
        posters: dict[str, _Expired] = {}
        readers: dict[str, _Expired] = {}
        for k, i, t, sid, attempt in self.store.load_expired():
            if k not in self._expired and k not in self._expired_readers:
                (posters if i >= 0 else readers)[k] = _Expired(i, t, refused.pop("t:" + k, ()), sid, attempt)
                self._naming[sid] = (*self._naming.get(sid, ()), k)
        expired = [row for row in last_run if row.sid not in self.sessions]  # (this run's own are written first)
        for row in expired:
            ids = refused.pop("s:" + row.sid, ())
            if not row.plain:
                entry = _Expired(row.last_id, self._start_wall, ids, row.sid, -1)
                for key in (_token_key(row.token), *row.aliases.split()):
                    self._remember_expired(key, entry, (posters, readers))
            self.store.drop_session(row.sid, keep_conv=not row.plain)
            if ids:
                self.store.put_refused("s:" + row.sid, ())
        if expired:
            log.info("%s of the last run expired: the database opened only now", count_of(len(expired), "session"))
        self._expired, self._expired_readers = posters | self._expired, readers | self._expired_readers

    def end_plain_sessions(self, reason: str, now: float) -> None:
        """End the plain-text (nc) sessions: they cannot resume, so holding their nicks for the resume grace
        (as a restart does for JSON clients) would only keep the nicks from their owners when they come back."""
        for s in [s for s in self.sessions.values() if s.plain]:
            self._end_session(s, reason, now)

    # --- inputs from the I/O edge --------------------------------------------------------------------------

    def request(self, worker: int, conn: int, obj: object, now: float, *, peer: str = "", address: str = "") -> None:
        """One validated request a worker forwarded, validated again (requests are rare; posts, the hot path, are
        taken as their worker checked them: ``post``). ``peer``: the connection's address as --max-per-ip counts
        it ('' if not counted), for the rooms it makes; ``address``: the address itself, for the log."""
        try:
            req = m.parse_obj(obj, allow_plain=True)
        except RemoteProtocolError as exc:
            self._reply(worker, conn, m.error_frame(exc.code, exc.message, id=exc.request_id))
            return
        self.msgs_in += 1
        session = self.conns.get((worker, conn))
        try:
            if worker in self.busy and isinstance(req, m.History | m.Who | m.Rooms):  # replies of up to 256 KiB,
                # while this worker is behind taking what we send it: else they pile up here without bound
                raise RemoteProtocolError(m.Err.BUSY, "the server is busy: ask again in a moment", request_id=req.id)
            if isinstance(req, m.Hello):
                self._hello(worker, conn, session, req, now, peer, address)
            elif isinstance(req, m.Stats):
                self._reply(worker, conn, self._stats_frame(req))
            elif isinstance(req, m.Rooms):  # also before a hello: an nc user may look around first
                self._out.setdefault(worker, []).append(control.conns_frame([conn], self._rooms_line(req.id)))
            elif session is None:
                if not isinstance(req, m.Quit):
                    raise RemoteProtocolError(m.Err.NOT_REGISTERED, "send a hello first", request_id=req.id)
                self._closes.append((worker, conn, req.reason or "quit"))  # its worker waits for the word
            else:
                self._dispatch(session, req, now)
        except RemoteProtocolError as exc:
            self._reply(worker, conn, m.error_frame(exc.code, exc.message, id=exc.request_id or req.id))
        finally:
            if isinstance(req, m.Hello | m.Join | m.Part):
                self._answer_plain(worker, conn, session, req)

    def _answer_plain(self, worker: int, conn: int, before: Session | None, req: m.Hello | m.Join | m.Part) -> None:
        """A plain connection's worker moves its current room as it reads a /nick, /join or /part, ahead of us
        (ServerConnection.answered): each gets one answer, in order, refused or not. ``before``: the session
        the request came to (a plain hello to one is a rename); a join or part without one is answered too,
        whoever sent it (its connection's mode is not known here: a JSON connection has no moves to answer)."""
        if isinstance(req, m.Hello):
            room, plain = const.DEFAULT_ROOM, req.plain
        else:
            room, plain = req.room, before is None or before.plain
        if not plain:
            return
        s = self.conns.get((worker, conn))
        member = None if isinstance(req, m.Hello) and before is not None else s is not None and room in s.rooms
        self._json(worker, control.answer(conn, room, member))

    def post(self, worker: int, p: control.PostFrame, now: float) -> None:
        """A chat message a worker parsed and validated (the hot path: see control.POST)."""
        self.msgs_in += 1
        s = self.conns.get((worker, p.conn))
        try:
            if s is None:
                raise RemoteProtocolError(m.Err.NOT_REGISTERED, "send a hello first", request_id=p.id)
            if p.kind == "privmsg":
                self._privmsg(s, p.to, p.text, p.id, now)
            else:
                self._post_room(s, p.kind, p.to, p.text, p.id, now)
        except RemoteProtocolError as exc:
            self._reply(worker, p.conn, m.error_frame(exc.code, exc.message, id=exc.request_id or p.id))

    def eof(self, worker: int, conn: int) -> None:
        """A connection's input ended (a half-close) after requests that are answered by now: its worker
        closes it after the next commit (the acks of its last posts come first), and reports the close."""
        self._closes.append((worker, conn, "connection closed by peer"))

    def closed(
        self, worker: int, conn: int, clean: bool, reason: str, now: float, *, peer: str = "", quiet: bool = False
    ) -> None:
        """A worker lost a connection. Unclean: the session waits ``resume_grace`` for its client. ``peer``:
        the client's address as --max-per-ip counts it; one address holds at most ``held_per_ip`` sessions
        (else a host that says hello with 50 new rooms and drops, again and again, would fill the server's
        rooms with sessions nobody uses), the oldest ending when another is held."""
        session = self.conns.pop((worker, conn), None)
        if session is None or session.conn != conn or session.worker != worker:
            return
        self._detach(session, now)
        if clean or session.plain or self.resume_grace <= 0:
            said = f"quit ({reason})" if clean and reason and reason != "quit" else None  # not "ended: bye"
            self._end_session(session, reason or "quit", now, resumable=not clean, logged=said)
            return
        if not quiet:
            log.info(  # why it dropped (an idle timeout, too slow a reader...): the end or the resume follows
                "session %s (%s) lost its connection (%s); held %s for a resume",
                session.sid[:8], session.nick, reason or "connection lost", self._grace_words(),
            )  # fmt: skip
        if peer:
            held = self._held.setdefault(peer, deque())
            held.append(session)
            session.held_for = peer
            while len(held) > self.held_per_ip:
                self._end_session(held[0], "too many sessions held for this address", now, resumable=True)

    def _unhold(self, s: Session) -> None:
        """``s`` resumed or ended: its address holds one session fewer."""
        held = self._held.get(s.held_for)
        if held is not None:
            held.remove(s)
            if not held:
                del self._held[s.held_for]
        s.held_for = ""

    def worker_lost(
        self, worker: int, now: float, peers: dict[int, str] | None = None, *, stopping: bool = False
    ) -> None:
        """A worker died: its connections are gone; their sessions wait for a resume like any drop, counted
        per address (``peers``: connection -> address, as ``closed`` takes it) like any other held session.
        ``stopping``: it exited at the server's stop (each session's drop is not worth a line of the log)."""
        peers = peers or {}
        for w, conn in list(self.conns):
            if w == worker:
                self.closed(w, conn, False, "connection lost", now, peer=peers.get(conn, ""), quiet=stopping)
        self._out.pop(worker, None)
        self.busy.discard(worker)

    def _grace_words(self) -> str:
        """How long a dropped session is held, for the log: "60 s", or (--resume-grace inf) "until the stop"."""
        return f"{self.resume_grace:g} s" if math.isfinite(self.resume_grace) else "until the server stops"

    def _held_for(self, s: Session, now: float) -> int | None:
        """Whole seconds (at least 1) until detached ``s`` expires, unless its client resumes it first; None if
        it is not held (connected) or never expires (`--resume-grace inf`)."""
        if s.detached_at is None or not math.isfinite(left := s.detached_at + self.resume_grace - now):
            return None
        return max(1, math.ceil(left))

    def _nick_taken(self, holder: Session, nick: str, rid: int | None, now: float) -> RemoteProtocolError:
        """The refusal of ``nick``, which ``holder`` has: one held for its client says for how long."""
        held = ""
        if holder.detached_at is not None:
            left = self._held_for(holder, now)
            held = " (held for a reconnecting user" + (f" for {left} s more)" if left is not None else ")")
        if m.nick_key(holder.nick) != m.nick_key(nick):  # a look-alike (m.nick_skeleton): say which it reads as
            return RemoteProtocolError(
                m.Err.NICK_TAKEN, f"nick {nick} reads as {holder.nick}, which is taken{held}", request_id=rid
            )
        return RemoteProtocolError(m.Err.NICK_TAKEN, f"nick {nick} is taken{held}", request_id=rid)

    def tick(self, now: float) -> None:
        """Expire sessions whose grace period ran out, and forget expired tokens past their time."""
        limit = now - self.resume_grace
        for s in [s for s in self.sessions.values() if s.detached_at is not None and s.detached_at <= limit]:
            self._end_session(s, "connection lost", now, resumable=True)
        self._forget_expired(now)

    @property
    def commit_pending(self) -> bool:
        """Acks or closes wait for the next commit."""
        return bool(self._acks or self._closes)

    def commit_store(self, now: float, *, force: bool = False) -> bool:
        """The store's commit (every one the hub or the I/O edge makes), and if the database opened only now,
        after the start: the last run's tokens and sessions (_load_expired), written at once (a crash must
        not find its sessions on disk beside this run's)."""
        ok = self.store.commit(now, force=force)
        if self._expired_loaded or not self.store.opens:
            return ok
        last_run = self.store.load_sessions_late()
        if last_run is None:  # tried again at the next commit
            return ok
        self._load_expired(self.store.load_refused(), last_run)
        return self.store.commit(now, force=force)

    def commit(self, now: float) -> bool:
        """Write the history batch, then release the acks it covers (an ack means: on disk, if the disk
        works; while it fails, the message was still relayed and the ack says so: chat goes on).
        The I/O edge calls this before it relays a tick's output, so what is seen is on disk."""
        ok = self.commit_store(now)
        if ok and self.store.sessions_lost:  # records given up on while the disk failed: all live ones again
            self.store.sessions_lost = False
            self.save_sessions()
            ok = self.store.commit(now)
        acks, self._acks = self._acks, []
        closes, self._closes = self._closes, []
        if acks:  # a busy sender has tens a tick: one frame each, lines made by a template (not a dict each)
            lines: dict[tuple[int, int], list[bytes]] = {}
            quit_ = {(w, c) for w, c, _ in closes}
            for w, c, rid, seq in acks:
                if (w, c) in self.conns or (w, c) in quit_:  # else dropped: a resume's welcome says last_id
                    lines.setdefault((w, c), []).append(_ACK % (rid, seq) if seq is not None else _ACK_NO_SEQ % rid)
            for (w, c), group in lines.items():
                self._lines_to(w, c, group)
        for w, c, reason in closes:  # after the acks: the client of a quit sees its last posts acked
            self._json(w, control.close(c, reason))
        return ok

    def shutdown(self, reason: str, now: float) -> None:
        """Tell every worker to say goodbye to its clients (sessions stay on disk for the resume), after the
        commit of what came before: its acks must not queue behind the goodbye (a worker closes on it)."""
        self.save_sessions()
        self.commit(now)
        for w in list(self._out):
            self._json(w, control.shutdown(reason))

    def save_sessions(self) -> None:
        """Queue every session's record (with its last_id) for the next commit."""
        for s in self.sessions.values():
            self.store.put_session(s.row())
            if s.refused:  # also lost with the records while the disk failed (Hub.commit)
                self.store.put_refused("s:" + s.sid, s.refused)

    # --- output --------------------------------------------------------------------------------------------

    def add_worker(self, worker: int) -> None:
        self._out.setdefault(worker, [])

    def drain(self, worker: int) -> bytes:
        """Everything queued for one worker, as one write."""
        items = self._out.get(worker)
        if not items:
            return b""
        self._out[worker] = []
        parts: list[bytes] = []
        for item in items:
            if not isinstance(item, _Run):
                parts.append(item)
            elif len(data := b"".join(item.lines)) <= REPLAY_FRAME:
                parts.append(control.room_frame(item.room, data))
            else:  # a backlog (commits held while the log starts over): frames the worker takes, not one
                parts += (control.room_frame(item.room, chunk) for chunk in _chunks(item.lines))
        return b"".join(parts)

    def pending_workers(self) -> list[int]:
        return [w for w, items in self._out.items() if items]

    def _to_room(self, room: Room, line: bytes) -> None:
        self.events_out += len(room.members)
        for w, count in room.workers.items():
            if count <= 0:
                continue
            items = self._out.setdefault(w, [])
            last = items[-1] if items else None
            if isinstance(last, _Run) and last.room == room.name:
                last.lines.append(line)
            else:
                items.append(_Run(room.name, [line]))

    def _to_sessions(self, sessions: Iterable[Session], line: bytes) -> None:
        by_worker: dict[int, list[int]] = {}
        for s in sessions:
            if s.worker is not None and s.conn is not None:
                by_worker.setdefault(s.worker, []).append(s.conn)
        for w, conns in by_worker.items():
            self.events_out += len(conns)
            self._out.setdefault(w, []).append(control.conns_frame(conns, line))

    def _reply(self, worker: int, conn: int, frame: dict[str, Any]) -> None:
        self._out.setdefault(worker, []).append(control.conns_frame([conn], m.encode(frame)))

    def _send(self, s: Session, frame: dict[str, Any]) -> None:
        if s.worker is not None and s.conn is not None:
            self._reply(s.worker, s.conn, frame)

    def _json(self, worker: int, record: control.Record) -> None:
        self._out.setdefault(worker, []).append(control.json_frame([record]))

    # --- events --------------------------------------------------------------------------------------------

    def _event(self, kind: str, fields: dict[str, Any], convs: tuple[str, ...], now: float) -> tuple[int, bytes]:
        """Assign the next sequence number, encode once, queue for history."""
        seq, ts = self._stamp(now)
        line = m.encode({"type": kind, "seq": seq, "ts": ts, **fields})
        self._keep(seq, ts, kind, convs, line)
        return seq, line

    def _ts_literal(self, ts: float) -> bytes:
        """``ts`` as JSON text (float repr, as m.encode writes it). The posts of one batch share their
        timestamp, so it is formatted once per batch: a float's repr costs more than the rest of the line."""
        if ts != self._ts_src:
            self._ts_src, self._ts_lit = ts, repr(ts).encode()
        return self._ts_lit

    def _stamp(self, now: float) -> tuple[int, float]:
        # A store that opened late (the disk came back) may know of higher numbers: never go below them.
        self.seq = seq = max(self.seq, self.store.start_seq) + 1
        if now != self._now_src:  # a batch shares its clock reading: round() (a dtoa) once per batch
            self._now_src, self._now_ms = now, round(now + self.wall_offset, 3)
        return seq, self._now_ms

    def _keep(self, seq: int, ts: float, kind: str, convs: tuple[str, ...], line: bytes) -> None:
        """Queue an encoded event for history, the resume ring and the rooms' join tails."""
        if convs:
            self.store.add_event(seq, convs, ts, kind, line[:-1].decode())
            recent = self.recent
            if len(recent) == recent.maxlen:
                self._recent_bytes -= len(recent[0][2])
            recent.append((seq, convs, line))
            self._recent_bytes += len(line)
            while self._recent_bytes > self.recent_bytes:
                self._recent_bytes -= len(recent.popleft()[2])
            for conv in convs:
                room = self.rooms.get(conv)
                if room is not None and room.tail_loaded:
                    room.keep(line)
        else:
            self.store.note_seq(seq)  # stored nowhere, but the number is used up all the same

    def _room(self, name: str, by: str = "") -> Room:
        """The room ``name``, made if there is none (by a session of the address ``by``)."""
        room = self.rooms.get(name)
        if room is None:
            if not self._can_make(1, by):
                raise self._cannot_make(by)
            room = self.rooms[name] = Room(name, self.store.topic(name), made_by=by)
            if by:
                self._made[by] += 1
        return room

    def _can_make(self, rooms: int, by: str) -> bool:
        """Whether ``rooms`` more rooms may be made (from the address ``by``)."""
        if len(self.rooms) + rooms > const.MAX_ROOMS:
            return False
        return not by or self._made[by] + rooms <= const.MAX_ROOMS_PER_ADDRESS

    def _cannot_make(self, by: str) -> RemoteProtocolError:
        """Why a room cannot be made: the server has MAX_ROOMS, or else the address ``by`` has made its share."""
        if by and len(self.rooms) < const.MAX_ROOMS and len(by) < 100:
            why = f"{const.MAX_ROOMS_PER_ADDRESS} rooms made from {by} are in use"
            return RemoteProtocolError(m.Err.BAD_ROOM, f"{why}: join one of them, or leave one first")
        return RemoteProtocolError(m.Err.BAD_ROOM, "the server has too many rooms")

    # --- sessions ------------------------------------------------------------------------------------------

    def _add_session(self, s: Session) -> None:
        self.sessions[s.sid] = s
        self.by_token[s.token] = s
        for key in s.aliases:
            self._alias[key] = s
        self.nicks[m.nick_key(s.nick)] = s
        self.lookalikes.setdefault(m.nick_skeleton(s.nick), s)  # (two restored from before look-alikes were
        # refused: the first keeps the entry; neither's end or rename takes the other's)

    def _holder(self, nick: str, asker: Session | None = None) -> Session | None:
        """Who else has ``nick``, or one that reads as it (each index asked: a change of case only keeps the
        asker's own identity, and may still read as another's nick)."""
        for holder in (self.nicks.get(m.nick_key(nick)), self.lookalikes.get(m.nick_skeleton(nick))):
            if holder is not None and holder is not asker:
                return holder
        return None

    def _forget_nick(self, s: Session) -> None:
        if self.nicks.get(key := m.nick_key(s.nick)) is s:
            del self.nicks[key]
        if self.lookalikes.get(skeleton := m.nick_skeleton(s.nick)) is s:
            del self.lookalikes[skeleton]

    def _attach(self, s: Session, worker: int, conn: int) -> None:
        if s.held_for:
            self._unhold(s)
        s.worker, s.conn, s.detached_at = worker, conn, None
        self.conns[(worker, conn)] = s
        self._json(worker, control.bind(conn, s.nick))
        for name in s.rooms:
            room = self._room(name)
            room.workers[worker] += 1
            self._json(worker, control.member(conn, name, True))

    def _detach(self, s: Session, now: float) -> None:
        if s.worker is not None:
            for name in s.rooms:
                room = self.rooms.get(name)
                if room is not None:
                    room.workers[s.worker] -= 1
            self.conns.pop((s.worker, s.conn or 0), None)
        s.worker = s.conn = None
        s.detached_at = now

    def _end_session(
        self, s: Session, reason: str, now: float, *, resumable: bool = False, logged: str | None = None
    ) -> None:
        """``resumable``: it ended without a goodbye, so its client may still come back with its token and
        resend what it never saw acknowledged: the token is remembered with the session's highest id."""
        if s.worker is not None:
            self._detach(s, now)
        if s.held_for:
            self._unhold(s)
        # A reader's too (one that never posted; in a pool of their own): with the token its own conversation
        # (private messages, joins in large rooms) is kept, and the session its client gets when it comes back
        # takes its id, and with it the private messages it missed (_hello).
        remembered = resumable and not s.plain
        if remembered:  # (and its alias: its client may still know only that one, its welcome lost)
            entry = _Expired(s.last_id, now + self.wall_offset, tuple(s.refused or ()), s.sid, s.attempt)
            for key in (_token_key(s.token), *s.aliases):
                self._remember_expired(key, entry)
            self._count_remembered(s.sid, s.peer)
            self._forget_expired(now)
        self.store.drop_session(s.sid, keep_conv=remembered)
        if s.refused is not None:
            self.store.put_refused("s:" + s.sid, ())
        rooms = [self.rooms[r] for r in s.rooms if r in self.rooms]
        told = [r for r in rooms if not r.large]  # as a part asks: large with the leaver in it (_part)
        for room in rooms:
            room.remove(s.sid)
        self._listing = None
        if told:
            said = "" if reason == "quit" else reason  # a bare /quit: "bot quit", not "bot quit (quit)"
            _, line = self._event("quit", {"nick": s.nick, "reason": said}, tuple(r.name for r in told), now)
            # Rooms with a member connected only: when a network outage ends every session's grace in one tick,
            # each quit built the member set of all the rooms anyway, members × rooms per quit (900 sessions in
            # the same 50 rooms: 0.8 s of the main process, an adversarial review), to send to nobody.
            if live := [r for r in told if any(r.workers.values())]:
                self._to_sessions(self._members_of(live), line)
        for room in rooms:
            self._drop_if_empty(room)
        self.sessions.pop(s.sid, None)
        self.by_token.pop(s.token, None)
        self._retire_aliases(s)
        self._forget_nick(s)
        log.info("session %s (%s) ended: %s", s.sid[:8], s.nick, logged or reason)

    def _remember_expired(
        self, key: str, entry: _Expired, pools: tuple[dict[str, _Expired], dict[str, _Expired]] | None = None
    ) -> None:
        """``entry``'s time is the wall clock's: kept across restarts. ``pools``: (posters', readers') to add
        it to, if not the hub's own."""
        last_id, at, refused, sid, attempt = entry
        posters, readers = pools or (self._expired, self._expired_readers)
        (posters if last_id >= 0 else readers)[key] = entry
        self._naming[sid] = (*self._naming.get(sid, ()), key)
        self.store.put_expired(key, last_id, at, sid, attempt)
        if refused:
            self.store.put_refused("t:" + key, refused)

    def _pop_expired(self, key: str) -> _Expired | None:
        gone = self._expired.pop(key, None)
        return self._expired_readers.pop(key, None) if gone is None else gone

    def _count_remembered(self, sid: str, peer: str) -> None:
        """The tokens of ``sid`` just remembered count against ``peer`` ('': not counted); past
        EXPIRED_TOKENS_PER_ADDRESS the address's oldest are forgotten, with the private messages they kept."""
        if not peer or sid not in self._naming:
            return
        if (was := self._remembered_at.get(sid)) is not None:  # (resumed and remembered again: now the newest)
            self._remembered_by[was].pop(sid, None)
            if not self._remembered_by[was]:
                del self._remembered_by[was]
        self._remembered_at[sid] = peer
        sids = self._remembered_by.setdefault(peer, {})
        sids[sid] = None
        while len(sids) > const.EXPIRED_TOKENS_PER_ADDRESS:
            oldest = next(iter(sids))
            for key in self._naming.get(oldest, ()):
                if (entry := self._pop_expired(key)) is not None:
                    self._forget(key, entry)
            if sids.pop(oldest, 0) is None:  # (gone with its last token above; this, if none was in a pool)
                del self._remembered_at[oldest]

    def _forget_expired(self, now: float) -> None:
        wall = now + self.wall_offset
        for expired in (self._expired, self._expired_readers):
            while expired:  # insertion order is age order: forget the oldest past the count or the age
                oldest, entry = next(iter(expired.items()))
                if len(expired) <= const.EXPIRED_TOKENS_MAX and wall - entry.at <= const.EXPIRED_TOKEN_TTL:
                    break
                del expired[oldest]
                self._forget(oldest, entry)

    def _forget(self, key: str, entry: _Expired) -> None:
        """A remembered token, taken out of its pool, forgotten; with the last that named its session, the
        private messages kept for it."""
        _, _, refused, sid, _ = entry
        self._drop_expired(key, refused, sid)
        if sid and sid not in self._naming and sid not in self.sessions:  # ('': a token of an older file)
            self.store.drop_conv("@" + sid)

    def _drop_expired(self, key: str, refused: tuple[int, ...], sid: str) -> None:
        self.store.drop_expired(key)
        if refused:
            self.store.put_refused("t:" + key, ())
        naming = tuple(k for k in self._naming.get(sid, ()) if k != key)
        if naming:
            self._naming[sid] = naming
        else:  # no token names it any more: it no longer counts against its address
            self._naming.pop(sid, None)
            if (peer := self._remembered_at.pop(sid, None)) is not None:
                sids = self._remembered_by[peer]
                del sids[sid]
                if not sids:
                    del self._remembered_by[peer]

    def _refuse_stale(self, worker: int, conn: int, sid: str, nick: str, attempt: int) -> None:
        bye = {"type": "bye", "reason": "an older attempt to resume this session", "reconnect": False}
        self._reply(worker, conn, bye)
        self._json(worker, control.close(conn, "stale resume"))
        log.info("session %s (%s): a stale resume (attempt %d) refused", sid[:8], nick, attempt)

    def _retire_aliases(self, s: Session) -> None:
        for key in s.aliases:
            if self._alias.get(key) is s:
                del self._alias[key]
        s.aliases = ()

    def _drop_if_empty(self, room: Room) -> None:
        if not room.members:
            del self.rooms[room.name]
            self.store.room_gone(room.name)
            if room.made_by:
                self._made[room.made_by] -= 1
                if self._made[room.made_by] <= 0:
                    del self._made[room.made_by]

    def _members_of(self, rooms: list[Room]) -> list[Session]:
        seen: dict[str, Session] = {}
        for room in rooms:
            seen.update(room.members)
        return list(seen.values())

    # --- hello and resume ----------------------------------------------------------------------------------

    def _hello(
        self, worker: int, conn: int, current: Session | None, req: m.Hello, now: float, peer: str, address: str = ""
    ) -> None:
        if current is not None:
            if req.plain and current.plain:  # a second /nick typed (pasted) before the first one's welcome came:
                self._nick(current, m.Nick(req.nick), now)  # the worker sent it as a hello; it is a change
                return
            raise RemoteProtocolError(m.Err.ALREADY_REGISTERED, "this connection already has a session")
        if req.token is not None:
            s = self.by_token.get(req.token) or self._alias.get(_token_key(req.token))
            if s is not None:
                if self._resume(worker, conn, s, req, now, address):
                    s.peer = peer
                return
        # A token whose session expired: its client resends what it never saw acknowledged, and the ids
        # it already posted must be acked as duplicates, not posted again.
        key = _token_key(req.token) if req.token is not None else ""
        known = (self._expired.get(key) or self._expired_readers.get(key)) if key else None
        if known is not None and req.attempt is not None and req.attempt <= known.attempt:  # held back by the network:
            self._refuse_stale(worker, conn, known.sid, req.nick, req.attempt)  # its client moved on (it may have
            return  # made the session since, changed its nick, joined rooms: this one must not undo that)
        if req.token is not None:  # (its nick was not checked: see messages._hello)
            try:
                req = replace(req, nick=m.check_nick(req.nick))
            except RemoteProtocolError as exc:
                exc.request_id = req.id
                raise
        holder = self._holder(req.nick)
        if holder is not None:
            raise self._nick_taken(holder, req.nick, req.id, now)
        s, gone = self._new_session(req, key, peer)
        self._attach(s, worker, conn)
        joining = self._rooms_it_may_join(req.rooms, peer)
        # A client back after its session expired (it says what it saw last) gets what it missed in its rooms
        # as a resume would have replayed it, before the joins (numbered after it), the welcome's seq its
        # last_seq: a drop on the way is a resume from the last event it read, as any. (Tails would repeat
        # what it saw; only the replay says what was lost: a gap.) Only with a token this server gave: a
        # made-up one had the catch-up of 50 rooms read from the disk, 6 times a plain hello's cost, at each
        # connection (32 at once from one address stalled everyone for a second: an adversarial review).
        # (Before the database opened, the last run's tokens are unknown yet: its clients are given the benefit of
        # the doubt. Their catch-up reads memory only then, this run's events: cheap, and its gap says the rest.)
        after = req.last_seq if gone is not None or not self._expired_loaded else None
        if after is not None and not 0 <= after < self.seq:
            after = None  # (above: numbers this server never gave, its data directory restored from a copy)
        self._welcome(s, req, joining, seq=after)
        if gone is not None:  # The record first, in the rooms it is joining: the replay or a join's history
            # may read the disk, and the commit before the read writes the expired token's deletion. A crash
            # after it must find the session (last_id, the private messages' id, the old token as its alias).
            # Its joins are still to come (JOINS_LOST): a crash before they are committed must not leave
            # the session restored in rooms whose members were never told that it joined.
            self.store.put_session(replace(s.row(), rooms=tuple(joining), last_join=JOINS_LOST))
        if after is not None:  # (with room for the rooms' replies and joins that follow: 500 nicks, a topic)
            answer = min(self._answer_size(joining, s), self.replay_max // 2)  # (half at least for the replay)
            convs = [*joining, "@" + s.sid]  # its rooms', and the private messages sent to it meanwhile
            self._replay(s, after, {}, now, convs=convs, budget=self.replay_max - answer)
        self._join_hellos_rooms(s, req.rooms, joining, now, peer, tail=after is None)
        s.start = self.seq  # where this answer ends: a resume from below it may have missed its room replies
        self.store.put_session(s.row())
        log.info("session %s (%s) started on worker %d, from %s", s.sid[:8], s.nick, worker, address or "?")

    def _new_session(self, req: m.Hello, key: str, peer: str) -> tuple[Session, _Expired | None]:
        """A hello's new session, added; if its token (``key``) was an expired session's, it takes that one's id,
        last client id and refused ids (returned: the expired entry)."""
        last_id = -1
        refused: tuple[int, ...] = ()
        sid = ""
        aliases = [key]
        if (gone := self._pop_expired(key)) is not None:
            last_id, _, refused, sid, _ = gone
            self._drop_expired(key, refused, sid)
        # The expired session's id (and so its own conversation: the private messages sent to it meanwhile,
        # which the hello's catch-up replays), unless a live session has it (a file restored from a copy, say).
        if not sid or sid in self.sessions:
            sid = secrets.token_hex(8)
        else:  # the expired session's: the other tokens naming it are older ones its client moved on from (their
            # hellos are stale by their attempts), or newer ones it never learned (a lost welcome's). Forgotten:
            # one alias at most. Without attempts, a held-back hello could not be told: they all stay aliases.
            for other in self._naming.get(sid, ()):
                if (more := self._pop_expired(other)) is not None:
                    self._drop_expired(other, more.refused, sid)
                    if req.attempt is None:
                        aliases.append(other)
        s = Session(sid, secrets.token_urlsafe(18), req.nick, req.plain, last_id=last_id, peer=peer)
        s.start = self.seq  # (until the hello's joins: its catch-up replay leaves out the old session's changes)
        s.nick_since = self.seq + 1  # (a catch-up replays others' use of the nick before it, if any)
        if req.attempt is not None:
            s.attempt = req.attempt
        if gone is not None:  # if this welcome is lost, the client comes back with the old token: unknown, it
            # would get yet another session (as nick_: one it never learned of holds its nick), with no last_id,
            # and post its lines again. Only a token the server gave: a made-up one, shared by two scripts,
            # would let the second take the first's session.
            s.aliases = tuple(aliases)
        if refused:  # refused before the expiry: a resend of one is refused again in the new session too
            s.refused = set(refused)
            self.store.put_refused("s:" + s.sid, refused)
        self._add_session(s)
        return s, gone

    def _rooms_it_may_join(self, rooms: Sequence[str], peer: str) -> list[str]:
        """The rooms of a hello that the welcome names: one the server has no room for is refused after it (a
        welcome naming #lobby, then a refusal of it, left the client believing it was in it)."""
        joining: list[str] = []
        new: set[str] = set()
        for name in rooms:
            if name not in self.rooms and name not in new:
                if not self._can_make(len(new) + 1, peer):
                    continue
                new.add(name)
            joining.append(name)
        return joining

    def _join_hellos_rooms(
        self, s: Session, asked: Sequence[str], joining: list[str], now: float, peer: str, *, tail: bool
    ) -> None:
        """The joins of a hello's rooms (``asked``; those not ``joining`` refused), each with the room's history
        (``tail``) unless a catch-up replay came before them."""
        backlog = _Backlog(self.replay_max)
        if tail and self.history_on_join and any(r not in self.rooms or not self.rooms[r].tail_loaded for r in joining):
            self.commit_store(now)  # once, before the first join: a later room's tail read must not commit
            # an earlier room's join without the session's record (a crash would leave a join nobody made,
            # or, after an expiry, a record saying its joins are to come with one of them made)
        for name in asked:
            try:
                if name not in joining:
                    raise self._cannot_make(peer)
                self._join(s, name, now, backlog=backlog, tail=tail, commit=False)
            except RemoteProtocolError as exc:  # one room refused (server full of rooms): the rest go on
                self._send(s, m.error_frame(exc.code, exc.message))

    def _answer_size(self, rooms: list[str], s: Session) -> int:
        """Bytes of the joins and room replies that a hello's answer sends for ``rooms`` (one's nicks and topic
        as they are; the joiner's nick in both), a little over."""
        nick = len(s.nick.encode())
        known = sum(len(self._room_info(self.rooms[r], None)) for r in rooms if r in self.rooms)
        return known + sum(2 * len(r.encode()) + 2 * nick + 200 for r in rooms)

    def _welcome(
        self,
        s: Session,
        req: m.Hello,
        rooms: list[str],
        *,
        resumed: bool = False,
        failed: bool = False,
        seq: int | None = None,
    ) -> None:
        """``seq``: where the client's events start, if not at the server's now (a replay follows)."""
        welcome: dict[str, Any] = {
            "type": "welcome", "nick": s.nick, "session": s.sid, "token": s.token,
            "seq": self.seq if seq is None else seq,
            "resumed": resumed, "rooms": rooms, "max_frame": self.max_frame,
        }  # fmt: skip
        if s.last_id >= 0:  # the highest request id of the client's this session handled: it resends the rest
            welcome["last_id"] = s.last_id
        changes = sorted(~i for i in s.refused or () if i < 0)  # the refused changes among them: a refusal may
        if changes and req.token is not None:  # have been lost with the connection, and last_id says "handled"
            welcome["refused"] = changes
        if s.nick_since >= 0:
            welcome["nick_since"] = s.nick_since
        if req.token is not None and (failed or not resumed):
            welcome["resume_failed"] = "session expired or unknown"
        self._send(s, _with_id(welcome, req.id))

    def _resume(self, worker: int, conn: int, s: Session, req: m.Hello, now: float, address: str = "") -> bool:
        """Resume ``s`` on this connection; False if the hello is stale (refused and closed)."""
        if req.attempt is not None:
            if req.attempt <= s.attempt:  # a hello the network held back: its client moved on to a newer one,
                # which this one must not take the session from (its client gave up on it, and would give up
                # on the session too, told by the bye below that another connection resumed it)
                self._refuse_stale(worker, conn, s.sid, s.nick, req.attempt)
                return False
            s.attempt = req.attempt
        if s.aliases and req.token == s.token:  # its client has the new token: the old ones retire
            self._retire_aliases(s)
            self.store.put_session(s.row())
        # Through an expired session's token: its client never saw this session's welcome, and is told what
        # that welcome said (its session could not be resumed: it does again what the expired one did)
        failed = req.token != s.token
        if s.worker is not None and s.conn is not None:  # the old connection is half-open: replace it
            old_w, old_c = s.worker, s.conn
            # reconnect: false, or the two connections would take the session from each other in turns
            self._reply(
                old_w, old_c, {"type": "bye", "reason": "session resumed on another connection", "reconnect": False}
            )
            self._json(old_w, control.close(old_c, "session resumed elsewhere"))
            self._detach(s, now)
        self._attach(s, worker, conn)
        self._welcome(s, req, list(s.rooms), resumed=True, failed=failed)
        after = req.last_seq if req.last_seq is not None else self.seq
        if after > self.seq:  # numbers this server never gave: its data directory was restored from a copy
            self._send(s, {"type": "gap", "after": self.seq, "reason": "the server's numbering went back"})
            after = self.seq
        # A part the client had seen (up to its last_seq) is done with; the others are replayed, and stay
        # until a resume from after them: this replay may be lost with its connection too.
        left = {room: upto for room, upto in (s.parted or {}).items() if upto > after}
        s.parted = left or None
        # The room replies (nick lists) of joins the client may not have read past: of every room if it missed
        # the latest join (rare: a drop inside the answer to a hello or a /join), of that room if that was the
        # last it read (a quiet session gets them at each resume until it reads something newer). After the
        # replay, within its budget but never more than half of it (a missed line must not become a bare gap).
        every = after < s.last_join or (after == s.last_join and not s.last_join_room)
        rooms = s.rooms if every else [s.last_join_room] if after == s.last_join else []
        rooms = [r for r in rooms if r in s.rooms and r in self.rooms]
        infos = [self._room_info(self.rooms[r], None) for r in rooms]
        budget = self.replay_max - min(sum(map(len, infos)), self.replay_max // 2)
        newest = self._replay(s, after, left, now, budget=budget)
        if infos:  # they follow the replay now: a drop during it may lose them again
            self._send_lines(s, infos)
            s.last_join, s.last_join_room = after if newest is None else newest, "" if every else rooms[0]
            self.store.put_session(s.row())  # (a restart must not send them again, nor forget them)
        log.info(
            "session %s (%s) resumed on worker %d after seq %d, from %s",
            s.sid[:8],
            s.nick,
            worker,
            after,
            address or "?",
        )
        return True

    def _replay(
        self,
        s: Session,
        after: int,
        left: dict[str, int],
        now: float,
        convs: list[str] | None = None,
        budget: int | None = None,
    ) -> int | None:
        """Send ``s`` the events of its rooms and private messages after ``after`` (and of the rooms it
        ``left``, up to the seq of its part there), once, in order: all of them, or, past ``budget`` bytes
        (``replay_max``), a ``gap`` and the newest that fit. More than its send queue would have the worker
        drop the client as too slow, and the client would reconnect to the same replay until its session
        expired; what does not fit, /history still pages back to. ``convs``: those to replay, if not the
        session's. Of the events up to the end of the answer to the session's hello (a failed resume's
        client, back after its session expired: what it missed, and the new session's own joins), only what
        was said: the joins, parts and nick changes of the expired session would be taken for this one's
        by its client, which learns its rooms from the welcome. Returns the seq of the newest event sent."""
        if after >= self.seq:
            return None
        convs = s.convs if convs is None else convs
        budget = self.replay_max if budget is None else budget
        wanted = set(convs)
        recent = self.recent
        said_only = s.start if after < s.start else -1

        def mine(newest_above: int) -> Iterator[tuple[int, bytes]]:  # the ring's events for s, newest first
            for seq, convs, line in takewhile(lambda e: e[0] > newest_above, reversed(recent)):
                if not wanted.isdisjoint(convs) or (left and any(left.get(c, -1) >= seq for c in convs)):
                    yield seq, line

        newest_first: Iterable[tuple[int, bytes]]
        from_disk = not (recent and recent[0][0] <= after + 1)
        gap = False
        reads_failed = self.store.reads_failed
        if not from_disk:  # the ring holds all of it
            newest_first = mine(after)
        else:
            self.commit_store(now)
            # A hole: events history lost, or holds for a failing disk from before the ring's oldest (those
            # after it the ring serves: a failing disk alone is no hole, reads still work).
            ring0 = recent[0][0] if recent else None
            lost = max((self.store.lost_upto(c) for c in convs), default=0)
            gap = lost > after or self.store.held(convs, after, ring0)
            for conv, upto in left.items():  # a room left: only a hole up to its part counts
                below = upto + 1 if ring0 is None else min(ring0, upto + 1)
                gap = gap or self.store.lost_between(conv, after, upto) or self.store.held([conv], after, below)
            disk = self.store.replay_newest(after, convs, until=left)
            top = next(disk, None)
            # Above the disk's newest: events it does not have (not committed yet, or lost while it failed);
            # none once everything is committed (pruning takes the oldest only), and the ring is not scanned:
            # for a quiet room, whose newest event is old, that was the whole ring (50,000 entries), at each
            # hello with a made-up token and last_seq 0 (an adversarial review).
            newest_first = chain(
                () if self._disk_current() else mine(top[0] if top else after),
                ((seq, line.encode() + b"\n") for seq, line in chain([top] if top else [], disk)),
            )
        lines: list[bytes] = []
        size = 0
        newest: int | None = None
        for examined, (seq, line) in enumerate(newest_first, 1):
            if examined > REPLAY_EXAMINED_MAX:
                self._send(s, {"type": "gap", "after": after, "reason": "too many events to replay"})
                break
            if seq <= said_only and not line.startswith(_SAID):
                continue
            size += len(line)
            if size > budget:
                self._send(s, {"type": "gap", "after": after, "reason": "too many events to replay"})
                break
            lines.append(line)
            newest = seq if newest is None else newest
        else:  # all of it fits; a gap still if history lost some, or a read failed on the way
            if gap or self.store.reads_failed != reads_failed:
                self._send(s, {"type": "gap", "after": after, "reason": "some events are older than the history kept"})
        lines.reverse()
        self._send_lines(s, lines)
        return newest

    def _disk_current(self) -> bool:
        """The database holds every event the ring does: all committed, nothing held or given up on."""
        store = self.store
        return not store.degraded and not store.pending and not store.dropped

    def _send_lines(self, s: Session, lines: list[bytes]) -> None:
        if s.worker is not None and s.conn is not None:
            self._lines_to(s.worker, s.conn, lines)

    def _lines_to(self, worker: int, conn: int, lines: list[bytes]) -> None:
        """Lines for one client, in control frames of at most about REPLAY_FRAME bytes each."""
        self._out.setdefault(worker, []).extend(control.conns_frame([conn], chunk) for chunk in _chunks(lines))

    # --- requests of a registered session ------------------------------------------------------------------

    def _dispatch(self, s: Session, req: m.Request, now: float) -> None:
        change = req.id if m.is_change(req) else None  # its id: acked once done
        if change is None:
            self._handle(s, req, now)
            return
        first = change > s.last_id  # else done again after an expiry (client_conn._redo)
        if first:
            s.last_id = change  # handled, refused or not: the welcome of a resume says so (no resend), after a
            # restart too (a join, part or nick writes the record; the rest, a posted row once it is handled:
            # a commit inside it, a join's history read, must not put the id on disk before the room)
        try:
            self._handle(s, req, now)
        except RemoteProtocolError:
            # The welcome of a resume lists it: its refusal may be lost, and last_id says it was handled. Not
            # a redo's: its client sends it until answered (a redone /part done before is refused, not_in_room).
            if first:
                self._remember_refused(s, ~change)
            raise
        else:
            if not first:  # refused before the expiry, done now
                self._unrefuse(s, ~change)
        finally:
            if first:
                self.store.put_posted(s.sid, change)
        # After its events and replies: the client forgets it (else resent after a drop).
        self._send(s, {"type": "ack", "id": change})

    def _handle(self, s: Session, req: m.Request, now: float) -> None:
        if isinstance(req, m.Msg | m.Action):
            self._post_room(s, req.TYPE, req.room, m.json_str(req.text), req.id, now)
        elif isinstance(req, m.PrivMsg):
            self._privmsg(s, req.to, m.json_str(req.text), req.id, now)
        elif isinstance(req, m.Join):
            if req.room in s.rooms:
                self._send_lines(s, [self._room_info(self.rooms[req.room], req.id)])
            else:
                self._join(s, req.room, now, req.id)
            self.store.put_session(s.row())
        elif isinstance(req, m.Part):
            self._part(s, req, now)
        elif isinstance(req, m.Nick):
            self._nick(s, req, now)
        elif isinstance(req, m.Topic):
            self._topic(s, req, now)
        elif isinstance(req, m.Who):
            room = self.rooms.get(req.room)
            if room is None:
                self._send(s, _with_id({"type": "who", "room": req.room, "users": 0, "nicks": []}, req.id))
            else:
                line = room.who_line(self._reply_budget)
                self._send_lines(s, [_line_with_id(line, req.id)])
        elif isinstance(req, m.History):
            self._history(s, req, now)
        elif isinstance(req, m.Quit):
            if s.worker is not None and s.conn is not None:
                w, c, reason = s.worker, s.conn, req.reason or "quit"
                for name in s.rooms:  # the room lines that follow the quit are not for it
                    self._json(w, control.member(c, name, False))
                self.closed(w, c, True, reason, now)
                self._closes.append((w, c, reason))  # its worker keeps it open for what came before the quit
        else:
            raise RemoteProtocolError(m.Err.UNKNOWN_TYPE, f"{req.TYPE} is not allowed here", request_id=req.id)

    def _resent(self, s: Session, rid: int | None) -> bool:
        """True if ``rid`` was posted before (a resend after an uncertain drop): ack it again, post nothing.
        Asked before the post is checked: a post that was delivered stays delivered, though its room was
        left or its addressee renamed since (refusing it would tell the sender it failed). A post that was
        refused is checked again instead: acking it would tell the sender it went out."""
        if rid is not None and rid <= s.last_id and not (s.refused and rid in s.refused):
            self._ack(s, rid, None)
            return True
        return False

    def _ack(self, s: Session, rid: int, seq: int | None) -> None:
        """Acked at the next commit, to the connection the post came on (a quit may have ended the session by then)."""
        if s.worker is not None and s.conn is not None:
            self._acks.append((s.worker, s.conn, rid, seq))

    def _posted(self, s: Session, rid: int | None) -> None:
        if rid is None:
            return
        s.last_id = max(s.last_id, rid)
        self._unrefuse(s, rid)  # refused once, posted now (its addressee came, say)

    def _unrefuse(self, s: Session, key: int) -> None:
        """A refused post's id, or ~id of a change, done after all: no longer refused (_remember_refused)."""
        if s.refused and key in s.refused:
            s.refused.discard(key)
            self.store.put_refused("s:" + s.sid, s.refused)

    def _refused(self, s: Session, rid: int | None, code: str, message: str) -> RemoteProtocolError:
        """The refusal of a post, its id remembered (see _remember_refused)."""
        if rid is not None:
            self._remember_refused(s, rid)
        return RemoteProtocolError(code, message, request_id=rid)

    def _remember_refused(self, s: Session, key: int) -> None:
        """A refused post's id, or a refused change's id as ``~id`` (negative: each kind keeps its own
        REFUSED_IDS_KEPT newest, in one set, on disk too), as the error may be lost with the connection. A
        resend of the post must be refused again, not acked; the change is not sent again (the welcome's
        last_id covers it), and the welcome's ``refused`` tells its client that it was not done."""
        refused = s.refused if s.refused is not None else set()
        s.refused = refused
        refused.add(key)
        kind = [i for i in refused if (i < 0) == (key < 0)]
        if len(kind) > const.REFUSED_IDS_KEPT:
            refused.discard(min(kind, key=abs))
        self.store.put_refused("s:" + s.sid, refused)

    def _post_room(self, s: Session, kind: str, name: str, text: bytes, rid: int | None, now: float) -> None:
        """A msg or action; ``text`` is already a JSON string literal (m.json_str), spliced in as is."""
        if self._resent(s, rid):
            return
        room = self.rooms.get(name)
        if room is None or s.sid not in room.members:
            raise self._refused(s, rid, m.Err.NOT_IN_ROOM, f"you are not in #{name}")
        self._posted(s, rid)
        seq, ts = self._stamp(now)
        # The same bytes m.encode() writes for {"type", "seq", "ts", "room", "from", "text"}, without a dict.
        line = b'{"type":"%b","seq":%d,"ts":%b,"room":"%b","from":%b,"text":%b}\n' % (
            kind.encode(), seq, self._ts_literal(ts), name.encode(), s.nick_literal(), text,
        )  # fmt: skip
        self._keep(seq, ts, kind, (name,), line)
        self._to_room(room, line)
        if rid is not None:
            self._ack(s, rid, seq)
            self.store.put_posted(s.sid, s.last_id)

    def _privmsg(self, s: Session, to: str, text: bytes, rid: int | None, now: float) -> None:
        if self._resent(s, rid):
            return
        target = self.nicks.get(m.nick_key(to))
        if target is None:
            raise self._refused(s, rid, m.Err.NO_SUCH_NICK, f"no one is called {to}")
        self._posted(s, rid)
        convs = ("@" + s.sid,) if target is s else ("@" + s.sid, "@" + target.sid)
        seq, ts = self._stamp(now)
        # The sender's session id tells its client which private messages it sent, also under a nick it has
        # not read it had (a rename lost with a drop), or one someone else holds now (plain.sent_by_me).
        line = b'{"type":"privmsg","seq":%d,"ts":%b,"from":%b,"to":%b,"text":%b,"session":%b}\n' % (
            seq, self._ts_literal(ts), s.nick_literal(), target.nick_literal(), text, m.json_str(s.sid),
        )  # fmt: skip
        self._keep(seq, ts, "privmsg", convs, line)
        # A recipient whose client is gone for now gets it only if it is back in time: the sender is told how
        # long, in its copy alone (the one kept is what the recipient is sent, back).
        left = self._held_for(target, now) if target is not s else None
        if left is None:
            self._to_sessions([s] if target is s else [s, target], line)
        else:
            self._to_sessions([s], line[:-2] + b',"held":%d}\n' % left)
        if rid is not None:
            self._ack(s, rid, seq)
            self.store.put_posted(s.sid, s.last_id)

    def _join(
        self,
        s: Session,
        name: str,
        now: float,
        rid: int | None = None,
        *,
        backlog: _Backlog | None = None,
        tail: bool = True,
        commit: bool = True,
    ) -> None:
        """``commit``: False if the store was committed just before (see _join_history)."""
        if len(s.rooms) >= const.MAX_ROOMS_PER_SESSION:
            raise RemoteProtocolError(
                m.Err.TOO_MANY_ROOMS,
                f"cannot join #{name}: at most {const.MAX_ROOMS_PER_SESSION} rooms per session",
                request_id=rid,
            )
        room = self._room(name, s.peer)
        if tail and self.history_on_join:
            self._join_history(s, room, now, backlog, commit=commit)
        room.add(s)
        self._listing = None
        s.rooms.append(name)
        if s.parted:  # a member again: a resume replays the room whole
            s.parted.pop(name, None)
        if s.worker is not None and s.conn is not None:
            room.workers[s.worker] += 1
            self._json(s.worker, control.member(s.conn, name, True))
        self._presence(s, room, "join", {"room": name, "nick": s.nick}, now)
        s.last_join, s.last_join_room = self.seq, name
        info = self._room_info(room, rid)
        self._send_lines(s, [info])
        if backlog is not None:  # (500 nicks each: 50 rooms' replies alone are 650 KiB)
            backlog.left -= len(info)

    def _presence(self, s: Session, room: Room, kind: str, fields: dict[str, Any], now: float) -> None:
        """A join or part: announced to the room, or in a large room only to the member concerned."""
        if room.large:
            _, line = self._event(kind, fields, ("@" + s.sid,), now)
            self._to_sessions([s], line)
        else:
            _, line = self._event(kind, fields, (room.name,), now)
            self._to_room(room, line)

    def _with_held(
        self, conv: str, page: tuple[list[str], bool], limit: int, before: int | None = None, after: int | None = None
    ) -> tuple[list[str], bool]:
        """A page read from the database (lines, more), with the events of ``conv`` only memory has while
        the disk fails (newer than the page, below ``before``), cut to ``limit`` nearest the cursor. Reads
        still work on a full disk: a page from it alone lacked everything since the failure, and said
        there was nothing more."""
        lines, more = page
        forward = after is not None and before is None
        if not self.store.degraded or (forward and more):  # (more from the file comes before what memory has)
            return lines, more
        newest = int(json.loads(lines[-1])["seq"]) if lines else (after or 0)
        held = [
            line[:-1].decode()
            for seq, convs, line in self.recent
            if seq > newest and (before is None or seq < before) and conv in convs
        ]
        if not held:
            return lines, more
        lines = lines + held
        return (lines[:limit] if forward else lines[-limit:]), more or len(lines) > limit

    def _join_history(
        self, s: Session, room: Room, now: float, backlog: _Backlog | None = None, *, commit: bool = True
    ) -> None:
        """The newest events of the room, marked as history, from memory (one database read per room); of a
        hello's rooms, those that fit its ``backlog``. The read is of the disk, made current first, unless
        the caller did that (``commit`` False: what it queued since is no event of this room's)."""
        if not room.tail_loaded:
            if commit:
                self.commit_store(now)
            page = self.store.events(room.name, limit=self.history_on_join)
            lines, more = self._with_held(room.name, page, self.history_on_join)
            room.tail = deque(maxlen=self.history_on_join)
            room.tail_bytes = 0
            room.tail_more = more
            for line in lines:
                room.keep(line.encode() + b"\n")
            room.tail_loaded = True
        tail = [line[:-1] for line in room.tail]
        kept = tail if backlog is None else backlog.fit(tail)
        self._send_history(s, room.name, kept, room.tail_more or len(kept) < len(tail), None)

    def _room_info(self, room: Room, rid: int | None) -> bytes:
        head = m.encode({"type": "room", "room": room.name, "topic": room.topic, "users": len(room.members)})
        rid_part = b',"id":%d' % rid if rid is not None else b""
        return head[:-2] + b',"nicks":' + room.nicks_literal() + rid_part + b"}\n"

    def _part(self, s: Session, req: m.Part, now: float) -> None:
        room = self.rooms.get(req.room)
        if room is None or s.sid not in room.members:
            raise RemoteProtocolError(m.Err.NOT_IN_ROOM, f"you are not in #{req.room}", request_id=req.id)
        self._presence(s, room, "part", {"room": room.name, "nick": s.nick, "reason": req.reason}, now)
        room.remove(s.sid)
        self._listing = None
        s.rooms.remove(room.name)
        parted = s.parted if s.parted is not None else {}
        parted.pop(room.name, None)
        parted[room.name] = self.seq  # the part's own event
        while len(parted) > const.PARTED_KEPT:
            del parted[next(iter(parted))]
        s.parted = parted
        if s.worker is not None and s.conn is not None:
            room.workers[s.worker] -= 1
            self._json(s.worker, control.member(s.conn, room.name, False))
        self._drop_if_empty(room)
        self.store.put_session(s.row())

    def _nick(self, s: Session, req: m.Nick, now: float) -> None:
        key = m.nick_key(req.nick)
        holder = self._holder(req.nick, s)
        if holder is not None:
            raise self._nick_taken(holder, req.nick, req.id, now)
        if req.nick == s.nick:
            return
        rooms = [self.rooms[r] for r in s.rooms if r in self.rooms]
        # A rename is an event in each of the session's rooms, and the worker charges a line of the rate for
        # each, as it knows them; but it learns of joins one round trip late, so renames sent in one write
        # behind a hello, a resume or joins each cost a line (49 of them in 50 rooms: 2,450 events for 50
        # lines). The session's own bucket, as full and as fast as a connection's, pays for them here. It may
        # owe a burst: the worker paces the renames it knows of, and the hub sees them a tick early or late.
        if s.renames is None:
            s.renames = TokenBucket(self.rate, self.burst, now)
        wait = s.renames.spend(max(1, len(rooms)), now, slack=self.burst)
        if wait is not None:
            again = math.ceil(wait * 10) / 10
            why = f"nick changes too fast for {count_of(len(rooms), 'room')} (an event in each): try again in {again} s"
            raise RemoteProtocolError(m.Err.TOO_FAST, why, request_id=req.id)
        old = s.nick
        self._forget_nick(s)
        s.nick = req.nick
        self.nicks[key] = s
        self.lookalikes[m.nick_skeleton(s.nick)] = s
        for room in rooms:
            room.nick_changed()
        # In no room, in its own conversation (as a join to a large room): else a drop took it for good, the
        # welcome's nick_since naming an event no resume replayed (a fuzzing review).
        convs = tuple(r.name for r in rooms) or ("@" + s.sid,)
        seq, line = self._event("nick", {"old": old, "new": s.nick}, convs, now)
        if m.nick_key(old) != key:  # (a change of case only: the nick was held all along)
            s.nick_since = seq
        audience = self._members_of(rooms) if rooms else [s]
        self._to_sessions(audience, line)
        if s.worker is not None and s.conn is not None:
            self._json(s.worker, control.bind(s.conn, s.nick))
        self.store.put_session(s.row())

    def _topic(self, s: Session, req: m.Topic, now: float) -> None:
        room = self.rooms.get(req.room)
        if req.topic is None:  # a question, answered for any room as who and history are (and rooms lists it)
            topic = room.topic if room is not None else self.store.topic(req.room)  # kept for when it is back
            self._send(s, _with_id({"type": "topic", "room": req.room, "topic": topic}, req.id))
            return
        if room is None or s.sid not in room.members:
            raise RemoteProtocolError(m.Err.NOT_IN_ROOM, f"you are not in #{req.room}", request_id=req.id)
        room.topic = req.topic
        self._listing = None
        self.store.put_topic(room.name, req.topic)
        _, line = self._event("topic", {"room": room.name, "nick": s.nick, "topic": req.topic}, (room.name,), now)
        self._to_room(room, line)

    def _history(self, s: Session, req: m.History, now: float) -> None:
        self.commit_store(now)  # pages are read from the database; make it current first
        stored = self.store.events(  # no more rows read than the reply can carry (characters: at most its bytes)
            req.room, before=req.before, after=req.after, limit=req.limit, max_chars=self._reply_budget
        )
        lines, more = self._with_held(req.room, stored, req.limit, req.before, req.after)
        forward = req.after is not None and req.before is None
        page = [line.encode() for line in lines]
        # A page of 500 events of 4,000 characters would be one line of up to 8 MB: more than --sendq
        # (the asker was dropped as too slow) and the client's line limit. Keep what fits, nearest the
        # cursor (the newest going back, the oldest going forward); ``more`` says there is the rest.
        fitted = _fit(page if forward else page[::-1], self._reply_budget)
        if len(fitted) < len(page):
            page, more = (fitted if forward else fitted[::-1]), True
        self._send_history(s, req.room, page, more, req.id)

    def _send_history(self, s: Session, room: str, events: list[bytes], more: bool, rid: int | None) -> None:
        head = m.encode(_with_id({"type": "history", "room": room, "more": more, "events": []}, rid))
        # Splice the stored frames in as they are: no decode/encode round trip per event.
        line = head.replace(b'"events":[]', b'"events":[' + b",".join(events) + b"]", 1)
        self._send_lines(s, [line])

    @property
    def _reply_budget(self) -> int:
        """Bytes of one reply that lists (history, who, rooms): under the asker's send queue with room to
        spare, and small enough for the hub to build between ticks."""
        return min(const.HISTORY_REPLY_BYTES, self.replay_max)

    def _rooms_line(self, rid: int | None) -> bytes:
        """The busiest rooms first, as many as fit the reply budget (10,000 rooms with topics would be a
        12 MB line: the asker dropped for its send queue, the hub's loop held for 60 ms); ``more`` and
        ``total`` say what was left out. Kept as its line until a join, part, quit or topic changes it: with
        10,000 rooms one took 24 ms to make and 2 ms to encode, and each connection may ask two a second."""
        if self._listing is None:
            ordered = sorted(self.rooms.values(), key=lambda r: (-len(r.members), r.name))
            entries = [{"name": r.name, "users": len(r.members), "topic": r.topic} for r in ordered]
            shown = _fitting((len(json.dumps(e)) for e in entries), self._reply_budget)  # encoded as far as it goes
            frame: dict[str, Any] = {"type": "rooms", "rooms": entries[:shown]}
            if shown < len(entries):
                frame.update(more=True, total=len(entries))
            self._listing = m.encode(frame)
        return _line_with_id(self._listing, rid)

    def _stats_frame(self, req: m.Stats) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "stats", **(self._stats() if self._stats else {})}
        frame["users"] = len(self.sessions)
        frame["rooms"] = len(self.rooms)
        frame["seq"] = self.seq
        frame["history"] = {
            "degraded": self.store.degraded,
            "error": self.store.last_error,
            "pending": self.store.pending,
            "dropped": self.store.dropped,
            "journal": self.store.journal,
        }
        return _with_id(frame, req.id)

    # --- figures for the beacon and stats ------------------------------------------------------------------

    @property
    def users(self) -> int:
        return len(self.sessions)


def _fitting(sizes: Iterable[int], budget: int) -> int:
    """How many of the first items, of these sizes (and a separator each), fit ``budget``; at least one
    (a lone item larger than the budget is still sent: the caller's limits keep it far under --sendq)."""
    count = total = 0
    for size in sizes:
        total += size + 1
        if total > budget and count:
            break
        count += 1
    return count


def _fit(lines: list[bytes], budget: int) -> list[bytes]:
    """The first of ``lines`` that fit ``budget`` (see _fitting)."""
    return lines[: _fitting(map(len, lines), budget)]


def _with_id(frame: dict[str, Any], rid: int | None) -> dict[str, Any]:
    if rid is not None:
        frame["id"] = rid
    return frame


def _line_with_id(line: bytes, rid: int | None) -> bytes:
    """A kept reply's line (an encoded object) with the request's id, if it had one, as its last field."""
    return line if rid is None else line[:-2] + b',"id":%d}\n' % rid


def _token_key(token: str) -> str:
    """How an expired session's token is remembered (in memory and on disk): a hash, so that the file
    holds no usable credential of a session that is gone."""
    return hashlib.sha256(token.encode()).hexdigest()
