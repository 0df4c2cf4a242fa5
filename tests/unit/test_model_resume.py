"""A model-based test of resume: the real client state (ClientState) against the real hub (Hub, with a real
SQLite HistoryStore), driven through random user actions and network faults (Hypothesis stateful).

One client under test, al (in #lobby), and two plain participants, bo (in every room, never renames) and cy
(in #lobby and #dev, renames, may take al's nicks). al's connection has an uplink (lines al wrote, not yet
read by the hub) and a downlink (frames the hub relayed, not yet read by al): a drop loses what is left of
both. After each welcome the model does what ChatClient._connect_once does (lanchat/client/connection.py):
the fallback nick on nick_taken, then unconfirmed() and the outbox in id order, then what was typed offline.

Invariants (checked at each step, and after a final settle in teardown: everything delivered, reconnected
until nothing is left to send):
1. a post of al's is sequenced at most once (store, peers' screens); an acked post exactly once;
2. every post al typed is acked, or refused with an error al was shown (and then not posted);
3. al never shows an event twice (seq, ts or text) and shows live events in increasing seq order;
4. al's rooms and nick are the hub's, and what the user asked for (last join/part wins, last nick not refused);
5. what was said in al's rooms while it was in them, and private messages to it, are shown at least once
   (unless a gap was shown);
6. no exception escapes ClientState or the Hub;
7. every question al asked (who, rooms, history, topic) is answered exactly once (asked again after a drop
   took it or its answer).

Faults: lines al wrote lost before the hub reads them, frames relayed to al lost after a prefix, drops the hub
notices at once or later (half-open), hellos held back by the network (delivered within CONNECT_TIMEOUT),
answers to a hello lost, expiries, clean restarts and crashes (what the hub did since its last commit is
lost; also inside a hello) of the server on the same database. Time only moves forward.

Written by a helper's review (28 November); what it found is in docs/security.md, item 39: A, B, C and G
are mended (their replays below pass); D was mended later (item 40: a change refused with its answer lost
is told as not done after the resume, which invariant 4 now holds the client to).

Knobs (environment): MODEL_EXAMPLES (200), MODEL_STEPS (40), MODEL_REPLAY_MAX (bytes: small makes gaps),
MODEL_LATE_HELLO=any (held-back hellos at any time), MODEL_STATS=1 (print what the runs went through; -s).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test
from test_hub import Workers  # the workers' part of routing, as the hub's tests play it

from lanchat import const
from lanchat.client.connection import fallback_nick
from lanchat.protocol import messages as m
from lanchat.protocol.client_conn import ClientState
from lanchat.server.hub import Hub
from lanchat.storage.history import HistoryStore

Frame = dict[str, Any]
GRACE = const.RESUME_GRACE
ROOMS = ["lobby", "dev", "ops"]
AL_NICKS = ["al", "alx", "aly"]
CY_NICKS = ["cy", "alx", "al"]
AL_W, PEER_W = 1, 2
SAID = ("msg", "action", "privmsg")
REPLAY_MAX = int(os.environ.get("MODEL_REPLAY_MAX", str(512 * 1024)))  # small: replays cut short by a gap
LATE_ANY = os.environ.get("MODEL_LATE_HELLO") == "any"
STEPS = int(os.environ.get("MODEL_STEPS", "40"))


STATS: Counter[str] = Counter()  # what the runs went through (MODEL_STATS=1 prints it)


def note(what: str) -> None:
    if currently_in_test_context():  # (not in the replays of the findings)
        event(what)
    STATS[what] += 1


class Peer:
    """bo or cy: a ClientState whose connection never loses a byte (only a server restart ends it)."""

    def __init__(self, nick: str, rooms: list[str], conn: int) -> None:
        self.st = ClientState(nick, rooms)
        self.conn: int | None = None
        self.next_conn = conn
        self.texts: dict[str, set[int]] = {}  # text of a said event shown -> seqs it was shown with

    def feed(self, frames: list[Frame]) -> list[Frame]:
        shown = [f for frame in frames for f in self.st.receive_data(m.encode(frame))]
        for f in shown:
            if f["type"] in SAID and isinstance(f.get("seq"), int):
                seqs = self.texts.setdefault(str(f["text"]), set())
                seqs.add(int(f["seq"]))
                assert len(seqs) == 1, f"inv1: {f['text']!r} sequenced twice (seen by {self.st.info.nick}): {seqs}"
        return shown


class ResumeModel(RuleBasedStateMachine):
    base: Path = Path(tempfile.gettempdir())

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base))
        self.now = 0.0
        self.stores: list[HistoryStore] = []
        self.hub = self._new_hub()
        self.net = Workers(self.hub)
        self.counter = 0
        # al's side
        self.st = ClientState("al", ["lobby"])
        self.al_conn: int | None = None
        self.next_conn = 100
        self.up: list[bytes] = []  # written by al, not read by the hub yet
        self.down: list[Frame] = []  # relayed to al, not read by al yet
        self.queued: list[bytes | int] = []  # ChatClient._queued: typed while not connected
        self.half_open: list[int] = []  # al's connections gone, that the hub has not noticed yet
        self.held_hellos: list[tuple[float, bytes]] = []  # hellos of attempts al gave up on, still in the network
        self.shown: list[Frame] = []
        self.live: list[int] = []  # seqs of live events shown, in order
        self.keys: set[tuple[int, float]] = set()
        self.live_texts: set[str] = set()
        self.texts_seen: set[str] = set()  # every text al was shown (live or in a history page)
        self.acks: dict[int, Any] = {}
        self.errors: dict[int, str] = {}
        self.gaps: list[int] = []
        self.posts: dict[int, dict[str, Any]] = {}  # al's post id -> {text, kind, to}
        self.changes: dict[int, tuple[str, str]] = {}  # al's change id -> (kind, arg)
        self.questions: dict[int, int] = {}  # al's question id -> answers shown (one, in the end: inv7)
        self.wanted_rooms = ["lobby"]  # the fold of the joins and parts al typed
        # What the user asked its nick to be, in order: [nick, change id (None: the start or a fallback),
        # answered, refused]. A fallback nick goes before the /nicks whose answers al had not seen (the client
        # sends them again, or does them again, in the new session); a resume's welcome answers (as done)
        # those its last_id covers.
        self.nick_asked: list[list[Any]] = [["al", None, True, False]]
        self.others: list[dict[str, Any]] = []  # what bo and cy said that al should be shown
        self.bo = Peer("bo", list(ROOMS), 20)
        self.cy = Peer("cy", ["lobby", "dev"], 21)
        self.nick_since, self.resume_nick = -1, ""  # the last resume's welcome's

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _new_hub(self) -> Hub:
        store = HistoryStore(self.dir, history_limit=10_000)
        self.stores.append(store)
        return Hub(store, resume_grace=GRACE, now=self.now, replay_max=REPLAY_MAX)

    def _tick(self, dt: float = 0.05) -> None:
        self.now += dt
        STATS["steps"] += 1

    def _peers(self) -> list[Peer]:
        return [self.bo, self.cy]

    def _peer_sessions(self) -> set[int]:
        """bo's and cy's sessions: attached to their connections, or held for them (by their tokens)."""
        out = {id(s) for p in self._peers() if p.conn is not None and (s := self.hub.conns.get((PEER_W, p.conn)))}
        return out | {id(s) for p in self._peers() if (s := self.hub.by_token.get(p.st.info.token or ""))}

    def _al_sessions(self) -> list[Any]:
        theirs = self._peer_sessions()
        return [s for s in self.hub.sessions.values() if id(s) not in theirs]

    def _flush(self) -> None:
        """One loop tick of the server: expiries, the commit, then the relay; peers read everything."""
        self.hub.tick(self.now)
        self.hub.commit(self.now)
        self.net.pump()
        if self.al_conn is not None:
            self.down += self.net.take(AL_W, self.al_conn)
        for p in self._peers():
            if p.conn is not None:
                p.feed(self.net.take(PEER_W, p.conn))
        self._membership()

    def _al_in(self, room: str) -> bool:
        sessions = self._al_sessions()
        if sessions:
            return any(room in s.rooms for s in sessions)
        return room in (self.st.rooms or self.st.wanted_rooms)  # expired: its next hello asks for these

    def _membership(self) -> None:
        sessions = self._al_sessions()
        assert len(sessions) <= 1, f"al holds {len(sessions)} sessions: {[(s.nick, s.rooms) for s in sessions]}"
        for said in self.others:
            if said["room"] and said["expected"] and not self._al_in(said["room"]):
                said["expected"] = False  # al left the room (as the hub sees it) before settling

    def _show(self, f: Frame) -> None:
        self.shown.append(f)
        kind = f["type"]
        seq = f.get("seq")
        if f.get("id") in self.questions and not (kind in m.EVENT_TYPES and isinstance(seq, int)):
            self.questions[f["id"]] += 1
            assert self.questions[f["id"]] == 1, f"inv7: question {f['id']} answered twice: {f}"
        if kind in m.EVENT_TYPES and isinstance(seq, int):
            key = (seq, float(f["ts"]))
            assert key not in self.keys, f"inv3: event shown twice: {f}"
            assert not self.live or seq > self.live[-1], f"inv3: seq {seq} shown after {self.live[-1]}: {f}"
            self.keys.add(key)
            self.live.append(seq)
            if kind in SAID:
                text = str(f["text"])
                assert text not in self.live_texts, f"inv3: {text!r} shown twice (seq {seq})"
                self.live_texts.add(text)
                self.texts_seen.add(text)
        elif kind == "history":
            for e in f.get("events", []):
                if isinstance(e, dict) and "text" in e:
                    self.texts_seen.add(str(e["text"]))
        elif kind == "ack" and isinstance(f.get("id"), int):
            rid = f["id"]
            self.acks[rid] = f.get("seq")
            self._answered(rid, refused=False)
        elif kind == "error" and isinstance(f.get("id"), int):
            self.errors[f["id"]] = str(f.get("code"))
            self._answered(f["id"], refused=True)
            note(f"error {f.get('code')}")
        elif kind == "welcome" and f.get("resumed") and "resume_failed" not in f:
            self.nick_since, self.resume_nick = int(f.get("nick_since", -1)), str(f["nick"])
            for a in self.nick_asked:
                if a[1] is not None and not a[2] and a[1] <= f.get("last_id", -1):
                    a[2], a[3] = True, False  # handled: a refusal is told next, not_done (finding D)
        elif kind == "bye" and f.get("reconnect") is False:  # the client stops for good (ChatClient._run)
            raise AssertionError(f"liveness: al's client told to stay away: {f}")
        elif kind == "gap":
            note("gap")
            self.gaps.append(int(f["after"]))

    def _answered(self, rid: int, *, refused: bool) -> None:
        for a in self.nick_asked:
            if a[1] == rid:
                a[2], a[3] = True, refused

    def _read(self, frames: list[Frame]) -> None:
        for frame in frames:
            for f in self.st.receive_data(m.encode(frame)):
                self._show(f)
        for line in self.st.take_due():  # (ChatClient._read_loop: a join's history a drop took)
            note("a join's lost history asked")
            self._write(line)

    def _write(self, line: bytes) -> None:
        self.up.append(line)

    def _al_send(self, req: m.Request) -> int | None:
        """ChatClient.send."""
        connected = self.al_conn is not None
        if isinstance(req, m.Msg | m.Action | m.PrivMsg):
            rid, line = self.st.post(req)
            if connected:
                self._write(line)
            else:
                self.queued.append(rid)
            return rid
        line = self.st.request(req)
        if connected:
            self._write(line)
            self.st.sent(line)
        else:
            self.queued.append(line)
        return self.st.last_change_id if m.is_change(req) else None

    def _deliver_up(self, k: int | None = None) -> None:
        """The hub reads the first ``k`` (all) lines al wrote; the server's loop tick follows."""
        if self.al_conn is None:
            return
        n = len(self.up) if k is None else min(k, len(self.up))
        batch, self.up = self.up[:n], self.up[n:]
        for line in batch:
            self.hub.request(AL_W, self.al_conn, json.loads(line), self.now)
            self._membership()
        self._flush()

    def _deliver_down(self, k: int | None = None) -> None:
        if self.al_conn is None:
            return
        self.down += self.net.take(AL_W, self.al_conn)
        n = len(self.down) if k is None else min(k, len(self.down))
        batch, self.down = self.down[:n], self.down[n:]
        self._read(batch)

    def _drop(self, *, noticed: bool = True) -> None:
        """al's connection is gone: what was in flight either way is lost. Not ``noticed``: the hub learns
        of it only later (a half-open connection: the idle timeout, or the bye when al resumes elsewhere)."""
        if self.al_conn is None:
            return
        if noticed:
            self.hub.closed(AL_W, self.al_conn, False, "connection lost", self.now)
            self.net.forget(AL_W, self.al_conn)
        else:
            note("half-open drop")
            self.half_open.append(self.al_conn)
        self.al_conn = None
        self.up, self.down = [], []
        self._flush()

    def _connect(
        self, *, first: bool = False, lose_hello: bool = False, lose_answer: bool = False, crash: bool = False
    ) -> None:
        """ChatClient._connect_once."""
        assert self.al_conn is None
        conn = self.next_conn
        self.next_conn += 1
        nick_attempts = 0
        wanted = self.st.info.nick
        hello = self.st.hello()
        if lose_hello:  # not delivered yet; the client resets the attempt and tries again later
            self.held_hellos.append((self.now, hello))  # (the network may still deliver it: late_hello)
            return
        while True:
            self.hub.request(AL_W, conn, json.loads(hello), self.now)
            if crash:  # the server dies before the tick's commit: nothing of the answer was relayed
                self._die(self.hub)
                self._restart()
                return
            self.hub.commit(self.now)
            self.net.pump()
            frames = self.net.take(AL_W, conn)
            if lose_answer:  # the connection dies before the answer is read
                self.hub.closed(AL_W, conn, False, "connection lost", self.now)
                self.net.forget(AL_W, conn)
                self._flush()
                return
            welcomed = again = False
            while frames and not (welcomed or again):
                frame = frames.pop(0)
                for f in self.st.receive_data(m.encode(frame)):
                    self._show(f)
                    if f["type"] == "error" and not self.st.registered:
                        code = f.get("code")
                        assert code in (m.Err.NICK_TAKEN, m.Err.BAD_NICK) and not first, f"hello refused: {f}"
                        if not nick_attempts:
                            wanted = self.st.info.nick
                        nick_attempts += 1
                        self.st.info.nick = fallback_nick(wanted, nick_attempts)
                        pending = [i for i, a in enumerate(self.nick_asked) if not a[2]]
                        self.nick_asked.insert(
                            pending[0] if pending else len(self.nick_asked), [self.st.info.nick, None, True, False]
                        )
                        note("fallback nick")
                        hello = self.st.hello()
                        again = True
                    elif f["type"] == "welcome":
                        welcomed = True
                        note(f"welcome resumed={f['resumed']} failed={'resume_failed' in f}")
            if welcomed:
                break
            assert again, f"no welcome: {frames}"
            assert nick_attempts < 5
        self.al_conn = conn
        self.down = frames  # the rest of the answer, not read yet
        self._notice_half_open()
        queued, self.queued = self.queued, []
        typed_offline = {item for item in queued if isinstance(item, int)}
        resend = self.st.unconfirmed()
        if resend:
            note("changes sent again")
        if self.st._redone:
            note("changes done again in a new session")
        resend += ((rid, self.st.post_line(rid) or b"") for rid in self.st.outbox if rid not in typed_offline)
        if len(resend) > 0:
            note("resend after welcome")
        for _, line in sorted(resend):
            self._write(line)
        for item in queued:
            out = self.st.post_line(item) if isinstance(item, int) else item
            if out:
                self._write(out)
                self.st.sent(out)
        for line in self.st.take_due():  # (the replay came with the welcome)
            self._write(line)
        self._flush()

    def _notice_half_open(self) -> None:
        """The worker closes al's half-open connections (the hub's bye after a resume elsewhere, or the
        idle timeout): the hub hears of it."""
        for conn in self.half_open:
            self.hub.closed(AL_W, conn, False, "connection lost", self.now)
            self.net.forget(AL_W, conn)
        self.half_open = []
        self._flush()

    def _peer_connect(self, p: Peer) -> None:
        conn = p.next_conn
        p.next_conn += 100
        attempts = 0
        wanted = p.st.info.nick
        while True:
            self.hub.request(PEER_W, conn, json.loads(p.st.hello()), self.now)
            self.hub.commit(self.now)
            shown = p.feed(self.net.take(PEER_W, conn))
            if p.st.registered:
                break
            assert shown and shown[0]["code"] == m.Err.NICK_TAKEN, shown
            attempts += 1
            p.st.info.nick = fallback_nick(wanted, attempts)
        p.conn = conn
        resend = p.st.unconfirmed()
        resend += ((rid, p.st.post_line(rid) or b"") for rid in p.st.outbox)
        for _, line in sorted(resend):
            self.hub.request(PEER_W, conn, json.loads(line), self.now)
        self._flush()

    def _peer_send(self, p: Peer, req: m.Request) -> None:
        if p.conn is None:
            return
        if isinstance(req, m.Msg | m.Action | m.PrivMsg):
            _, line = p.st.post(req)
        else:
            line = p.st.request(req)
            p.st.sent(line)
        self.hub.request(PEER_W, p.conn, json.loads(line), self.now)
        self._flush()

    def _text(self, who: str) -> str:
        self.counter += 1
        return f"{who}{self.counter}"

    # --- rules -------------------------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self._connect(first=True)
        self._deliver_down()
        for p in self._peers():
            self._peer_connect(p)
        self._deliver_down()

    @rule(to=st.sampled_from(["room", "bo", "cy", "zed"]), i=st.integers(0, 2), action=st.booleans())
    def al_says(self, to: str, i: int, action: bool) -> None:
        """al posts a new text to a room it asked to be in (the i-th), or writes privately to bo, to cy (by
        the nick cy has now), or to zed (nobody: refused)."""
        self._tick()
        if to == "room":
            if not self.wanted_rooms:
                return
            room = self.wanted_rooms[i % len(self.wanted_rooms)]
            text = self._text("a")
            rid = self._al_send(m.Action(room, text) if action else m.Msg(room, text))
            assert rid is not None
            self.posts[rid] = {"text": text, "room": room, "to": None}
            return
        if to == "cy":
            s = self.hub.conns.get((PEER_W, self.cy.conn or 0))
            to = s.nick if s is not None else self.cy.st.info.nick
        text = self._text("p")
        rid = self._al_send(m.PrivMsg(to, text))
        assert rid is not None
        self.posts[rid] = {"text": text, "room": None, "to": to}

    @rule(kind=st.sampled_from(["who", "rooms", "history", "topic"]), room=st.sampled_from(ROOMS))
    def al_asks(self, kind: str, room: str) -> None:
        """A question (/who, /rooms, /history, /topic): answered once, whatever drops come (inv7)."""
        self._tick()
        rid = self.st.next_id  # (the id request gives it)
        req = {"who": m.Who(room), "rooms": m.Rooms(), "history": m.History(room, limit=5), "topic": m.Topic(room)}
        self._al_send(req[kind])
        self.questions[rid] = 0

    @rule(room=st.sampled_from(ROOMS), join=st.booleans())
    def al_joins_or_parts(self, room: str, join: bool) -> None:
        self._tick()
        rid = self._al_send(m.Join(room) if join else m.Part(room))
        assert rid is not None
        self.changes[rid] = ("join" if join else "part", room)
        if join and room not in self.wanted_rooms:
            self.wanted_rooms.append(room)
        elif not join and room in self.wanted_rooms:
            self.wanted_rooms.remove(room)

    @rule(nick=st.sampled_from(AL_NICKS))
    def al_renames(self, nick: str) -> None:
        self._tick()
        rid = self._al_send(m.Nick(nick))
        assert rid is not None
        self.changes[rid] = ("nick", nick)
        self.nick_asked.append([nick, rid, False, False])

    @rule(room=st.none() | st.sampled_from(ROOMS))
    def bo_says(self, room: str | None) -> None:
        """bo posts a new text to ``room``, or (None) writes to al, by al's nick now."""
        if room is None:
            self._bo_pms_al()
        else:
            self._bo_posts(room)

    @rule(nick=st.none() | st.sampled_from(CY_NICKS))
    def cy_acts(self, nick: str | None) -> None:
        """cy posts a new text to #lobby, or renames to ``nick`` (maybe one al had, or wants)."""
        if nick is None:
            self._cy_posts()
        else:
            self._cy_renames(nick)

    def _bo_posts(self, room: str) -> None:
        self._tick()
        text = self._text("b")
        said = {
            "text": text,
            "room": room,
            "expected": self._al_in(room),
            "at": len(self.gaps),
            "away": not self._al_sessions(),
        }
        self._peer_send(self.bo, m.Msg(room, text))
        if self.bo.st.outbox:  # (its ack comes with the commit: always, on a connection that loses nothing)
            said["expected"] = False
        self.others.append(said)

    def _cy_posts(self) -> None:
        self._tick()
        text = self._text("c")
        said = {
            "text": text,
            "room": "lobby",
            "expected": self._al_in("lobby"),
            "at": len(self.gaps),
            "away": not self._al_sessions(),
        }
        self._peer_send(self.cy, m.Msg("lobby", text))
        self.others.append(said)

    def _bo_pms_al(self) -> None:
        self._tick()
        sessions = self._al_sessions()
        to = sessions[0].nick if sessions else self.st.info.nick
        target = self.hub.nicks.get(m.nick_key(to))
        text = self._text("m")
        said = {
            "text": text,
            "room": None,
            "expected": bool(sessions) and target is sessions[0],
            "at": len(self.gaps),
            "away": False,
        }
        self._peer_send(self.bo, m.PrivMsg(to, text))
        self.others.append(said)

    def _cy_renames(self, nick: str) -> None:
        self._tick()
        self._peer_send(self.cy, m.Nick(nick))

    @precondition(lambda self: self.al_conn is not None)
    @rule(k=st.none() | st.integers(0, 3))
    def hub_reads_al(self, k: int | None) -> None:
        self._tick()
        self._deliver_up(k)

    @precondition(lambda self: self.al_conn is not None)
    @rule(k=st.none() | st.integers(0, 6))
    def al_reads(self, k: int | None) -> None:
        self._tick()
        self._deliver_down(k)

    @precondition(lambda self: self.al_conn is not None)
    @rule(up=st.integers(0, 3), down=st.integers(0, 5), noticed=st.booleans(), expire=st.booleans())
    def drop(self, up: int, down: int, noticed: bool, expire: bool) -> None:
        """The hub reads ``up`` of al's lines, al reads ``down`` frames, and the connection dies (the hub
        notices at once, or later); ``expire``: al stays away past the grace."""
        self._tick()
        self._deliver_up(up)
        self._deliver_down(down)
        self._drop(noticed=noticed)
        if expire:
            self.time_passes(GRACE + 1)

    @precondition(lambda self: self.held_hellos)
    @rule(i=st.integers(0, 3))
    def late_hello(self, i: int) -> None:
        """A hello al gave up on reaches the hub after all, on a connection nobody reads: within a few
        seconds (the client resets an attempt it gives up on after CONNECT_TIMEOUT; a hello later than the
        reset is not delivered). MODEL_LATE_HELLO=any: at any time (findings E and F)."""
        self._tick()
        if not LATE_ANY:
            self.held_hellos = [(at, h) for at, h in self.held_hellos if self.now - at <= const.CONNECT_TIMEOUT + 1]
            if not self.held_hellos:
                return
        _, hello = self.held_hellos.pop(i % len(self.held_hellos))
        conn = self.next_conn
        self.next_conn += 1
        self.hub.request(AL_W, conn, json.loads(hello), self.now)
        self._flush()
        answer = self.net.take(AL_W, conn)
        first = answer[0] if answer else {}
        note(f"late hello: {first.get('type')} {first.get('code') or first.get('reason') or first.get('resumed')}")
        self.hub.closed(AL_W, conn, False, "connection reset", self.now)
        self.net.forget(AL_W, conn)
        self._flush()

    @precondition(lambda self: self.al_conn is None)
    @rule(fault=st.sampled_from(["", "lose_hello", "lose_answer", "crash"]))
    def reconnect(self, fault: str) -> None:
        """A reconnect attempt: it resumes (or makes) a session, or its hello is held back by the network, or
        its answer is lost with the connection, or the server crashes before that answer leaves it."""
        self._tick(0.5)
        self._connect(lose_hello=fault == "lose_hello", lose_answer=fault == "lose_answer", crash=fault == "crash")

    @rule(seconds=st.sampled_from([5.0, 30.0, GRACE + 1]))
    def time_passes(self, seconds: float) -> None:
        self._tick(seconds)
        if seconds > 30:  # the idle timeout closes half-open connections
            self._notice_half_open()
        self._flush()

    @rule(crash=st.booleans(), up=st.integers(0, 3), down=st.none() | st.integers(0, 6))
    def server_restarts(self, crash: bool, up: int, down: int | None) -> None:
        """A clean stop (its goodbye read, what al sent after it dropped) or a crash (what the hub read
        since the last commit lost with it, al reading some of what was relayed before), then a new hub on
        the same database."""
        self._tick()
        old = self.hub
        if crash:
            if self.al_conn is not None:
                for line in self.up[:up]:  # read, handled, never committed nor relayed
                    old.request(AL_W, self.al_conn, json.loads(line), self.now)
                # al reads some of what earlier ticks relayed (in the kernel's buffers): not what it handled since
                self._read(self.down[: len(self.down) if down is None else down])
            self._die(old)
        else:
            self._deliver_up(up)
            old.shutdown("server shutting down", self.now)
            self.net.pump()
            if self.al_conn is not None:
                self.down += self.net.take(AL_W, self.al_conn)
                self.down.append({"type": "bye", "reason": "server shutting down", "reconnect": True})
                self._deliver_down()
            for p in self._peers():
                if p.conn is not None:
                    p.feed(self.net.take(PEER_W, p.conn))
            for w in (AL_W, PEER_W):
                old.worker_lost(w, self.now, stopping=True)
            old.end_plain_sessions("server shutting down", self.now)
            old.save_sessions()
            old.store.commit(self.now, force=True)
            old.store.close()
        self._restart()

    @staticmethod
    def _die(hub: Hub) -> None:
        """The server's process dies: SQLite keeps what was committed, nothing else."""
        db = hub.store._db
        if db is not None:
            db.close()
            hub.store._db = None

    def _restart(self) -> None:
        """A new hub on the same database; every connection of the old one is gone (a hello held back on one
        too: it can reach no process now); bo and cy come back."""
        self.al_conn = None
        self.up, self.down, self.half_open, self.held_hellos = [], [], [], []
        for p in self._peers():
            p.conn = None
        self._tick(1.0)
        self.hub = self._new_hub()
        self.net = Workers(self.hub)
        for p in self._peers():
            self._peer_connect(p)

    # --- the end: settle and check -----------------------------------------------------------------------------

    def _settle(self) -> None:
        for _ in range(6):
            self._tick(0.5)
            if self.al_conn is None:
                self._connect()
            for _ in range(10):
                if not self.up and not self.down and not self.net.inbox.get((AL_W, self.al_conn or 0)):
                    break
                self._deliver_up()
                self._deliver_down()
            if not self.st.outbox and not self.st._journal and not self.queued and not self.st._questions:
                return
            self._drop()  # stuck: a reconnect sends it all again
        raise AssertionError(
            f"inv2: never settled: outbox {dict(self.st.outbox)}, journal {[a.line for a in self.st._journal]}"
        )

    def _stored(self) -> dict[str, set[int]]:
        """Text -> seqs of the said events in the database."""
        out: dict[str, set[int]] = {}
        db = sqlite3.connect(self.hub.store.path)
        try:
            for table in ("events", "journal"):
                for seq, line in db.execute(f"SELECT seq, line FROM {table}"):
                    e = json.loads(line)
                    if e.get("type") in SAID:
                        out.setdefault(str(e["text"]), set()).add(int(seq))
        finally:
            db.close()
        return out

    def _check(self) -> None:
        self._settle()
        for p in self._peers():
            self._deliver_down()
            p.feed(self.net.take(PEER_W, p.conn or 0))
        stored = self._stored()
        for text, seqs in stored.items():
            assert len(seqs) == 1, f"inv1: {text!r} stored {len(seqs)} times: {sorted(seqs)}"
        for rid, post in self.posts.items():
            text = post["text"]
            if rid in self.errors:
                assert text not in stored, f"inv2: post {rid} {text!r} refused ({self.errors[rid]}) but posted"
                if post["room"] is not None:  # a room the user asked to be in: never refused
                    raise AssertionError(f"inv2b: post {rid} to #{post['room']} refused: {self.errors[rid]}")
            else:
                assert rid in self.acks, f"inv2: post {rid} {text!r} neither acked nor refused"
                assert text in stored, f"inv1: post {rid} {text!r} acked but not in the history"
        session = self.hub.conns.get((AL_W, self.al_conn or 0))
        assert session is not None
        assert sorted(self.st.rooms) == sorted(session.rooms), f"inv4: al believes {self.st.rooms}, hub {session.rooms}"
        assert self.st.info.nick == session.nick, f"inv4: al believes it is {self.st.info.nick}, hub {session.nick}"
        assert sorted(self.st.rooms) == sorted(self.wanted_rooms), (
            f"inv4: in {self.st.rooms}, asked {self.wanted_rooms}"
        )
        expected: set[str] = set()
        for nick, _, _, refused in self.nick_asked:
            if refused is False:
                expected = {nick}
        assert self.st.info.nick in expected, f"inv4: nick {self.st.info.nick}, asked {self.nick_asked}"
        missed = [
            o["text"]
            for o in self.others
            if o["expected"] and o["text"] not in self.texts_seen and o["at"] == len(self.gaps)
        ]
        assert not missed, f"inv5: never shown to al: {missed}"
        unanswered = [rid for rid, n in self.questions.items() if n != 1]
        assert not unanswered, f"inv7: questions never answered: {unanswered}"
        for o in self.others:
            if o["expected"]:
                note("inv5: a line al was owed, shown" + (" (said while al had no session)" if o["away"] else ""))
        for rid in self.posts:
            if rid in self.acks and self.acks[rid] is None:
                note("a post acked as a duplicate")

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # (teardown runs after a failed step too: that failure is the one)
                self._check()
        finally:
            for s in self.stores:
                if s._db is not None:
                    s.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def test_resume_model(tmp_path: Path) -> None:
    ResumeModel.base = tmp_path
    run_state_machine_as_test(
        ResumeModel,
        settings=settings(
            max_examples=int(os.environ.get("MODEL_EXAMPLES", "200")),
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    if os.environ.get("MODEL_STATS") == "1":
        print(sorted(STATS.items()))


# --- the findings, each replayed from its shortest sequence (xfail: left, docs/security.md item 39) ----------


def replay(tmp_path: Path, steps: list[tuple[str, dict[str, Any]]]) -> ResumeModel:
    """Run ``steps`` on a strict model, then settle and check (what teardown does)."""
    ResumeModel.base = tmp_path
    machine = ResumeModel()
    try:
        machine.start()
        for name, args in steps:
            getattr(machine, name)(**args)
        machine._check()
    finally:
        for s in machine.stores:
            if s._db is not None:
                s.close()
    return machine


def test_a_join_handled_just_before_a_crash_is_not_lost(tmp_path: Path) -> None:
    """After a restart no room's join history is loaded: the /join reads it, which commits the batch, with
    the join's id in last_id (Hub._dispatch writes it first) but not the session's record with the room
    (Hub._join writes it after). The crash before the tick's commit leaves last_id saying 'handled': the
    client sends the join no more, and is not in the room (its posts there are refused)."""
    replay(tmp_path, [
        ("server_restarts", {"crash": False, "up": 0, "down": None}),
        ("reconnect", {"fault": ""}),
        ("al_joins_or_parts", {"join": True, "room": "dev"}),
        ("server_restarts", {"crash": True, "up": 1, "down": None}),
    ])  # fmt: skip


def test_a_client_in_no_room_is_in_none_after_an_expiry(tmp_path: Path) -> None:
    """ClientState.hello asked for ``self.rooms or self.wanted_rooms``: with every room left, the new session
    after an expiry joined the rooms the client started with."""
    replay(tmp_path, [
        ("al_joins_or_parts", {"join": False, "room": "lobby"}),
        ("drop", {"up": 1, "down": 5, "noticed": True, "expire": True}),
    ])  # fmt: skip


def test_a_rename_by_the_earlier_holder_of_the_nick_is_not_taken_for_the_clients(tmp_path: Path) -> None:
    """cy holds alx and leaves it, then al's /nick alx is handled; al reads none of it before a drop. The
    resume's welcome says alx (nick_since: al's rename), and the replayed 'alx -> cy', numbered before it,
    is taken for al's own (NicksHad.nick: old == me, whatever its seq): al believes it is cy, and its own
    joins are no longer its own."""
    replay(tmp_path, [
        ("al_renames", {"nick": "alx"}),
        ("cy_acts", {"nick": "alx"}),
        ("cy_acts", {"nick": "cy"}),
        ("drop", {"up": 1, "down": 0, "noticed": True, "expire": False}),
    ])  # fmt: skip


def test_a_crash_inside_a_catch_up_hello_does_not_post_a_resend_twice(tmp_path: Path) -> None:
    """The hello pops the expired token (its last_id and session id) and its replay, read from disk after
    a restart, commits that before the new session's record is written. A crash before the tick's commit:
    the token is unknown, the client's resend goes into a session with no last_id and is posted twice (and
    private messages the expired session kept are lost with its id)."""
    replay(tmp_path, [
        ("al_says", {"to": "room", "i": 0, "action": False}),
        ("drop", {"up": 1, "down": 0, "noticed": True, "expire": False}),
        ("server_restarts", {"crash": False, "up": 0, "down": None}),
        ("time_passes", {"seconds": GRACE + 1}),
        ("reconnect", {"fault": "crash"}),
    ])  # fmt: skip


def test_a_join_under_a_rename_never_read_is_in_the_rooms_after_a_resume(tmp_path: Path) -> None:
    """H: with a rename in no room unread (stored nowhere), the replayed join under the new nick was not
    the client's own, while its part before it was: the client believed it was in no room."""
    replay(tmp_path, [
        ("al_joins_or_parts", {"join": False, "room": "lobby"}),
        ("server_restarts", {"crash": False, "down": None, "up": 0}),
        ("al_renames", {"nick": "alx"}),
        ("al_joins_or_parts", {"join": True, "room": "lobby"}),
        ("al_renames", {"nick": "al"}),
        ("reconnect", {"fault": ""}),
        ("hub_reads_al", {"k": None}),
        ("drop", {"down": 0, "expire": False, "noticed": False, "up": 0}),
    ])  # fmt: skip


def test_a_rename_away_and_back_in_no_room_unread_keeps_the_clients_nick(tmp_path: Path) -> None:
    """A third review's run (docs/security.md item 42): the replayed rename away, numbered before the
    welcome's nick_since, was taken for a live one (the rename back, in no room, is not replayed)."""
    replay(tmp_path, [
        ("drop", {"down": 0, "expire": False, "noticed": False, "up": 0}),
        ("reconnect", {"fault": ""}),
        ("drop", {"down": 0, "expire": True, "noticed": False, "up": 2}),
        ("al_renames", {"nick": "aly"}),
        ("al_joins_or_parts", {"join": False, "room": "lobby"}),
        ("al_renames", {"nick": "al"}),
        ("reconnect", {"fault": ""}),
        ("al_joins_or_parts", {"join": True, "room": "ops"}),
        ("hub_reads_al", {"k": None}),
        ("drop", {"down": 0, "expire": False, "noticed": True, "up": 2}),
        ("reconnect", {"fault": ""}),
        ("al_joins_or_parts", {"join": True, "room": "dev"}),
    ])  # fmt: skip


def test_a_refused_nick_change_is_shown_after_a_drop(tmp_path: Path) -> None:
    """The /nick is refused (cy has alx) and the error is lost with the connection; the resume's welcome said
    last_id (refusals count), and the client forgot the change without a word. It lists the refused ids now."""
    machine = replay(tmp_path, [
        ("al_renames", {"nick": "alx"}),
        ("cy_acts", {"nick": "alx"}),
        ("drop", {"up": 1, "down": 0, "noticed": True, "expire": False}),
    ])  # fmt: skip
    assert machine.errors, "the /nick's refusal was never shown"
