"""The history database: every room and private event, sessions and topics, in one SQLite file.

Owns the file and its schema; the hub is its only writer. Writes are queued in memory and committed in
one transaction per ``commit()`` (the server calls it once per loop tick), so a burst of messages costs
one commit. Events live in ``events``, clustered by conversation so that a room's history is a few
adjacent pages; a commit that spreads over many conversations (many small rooms talking at once) would
rewrite one page per conversation, so it appends to ``journal`` instead, which is folded into ``events``
in one sorted pass once it holds ``FOLD_ROWS`` rows. Reads see both.

A failing disk never stops chat: the error is logged once, the store reports ``degraded``, keeps what
it could not write (events and session records, each bounded by the pending-write caps) and retries. A
corrupt or foreign file is a ``StorageError`` at open: the server refuses to start rather than overwrite
someone's data.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Final, TypeVar

from lanchat import const
from lanchat.errors import StorageError
from lanchat.storage import reserve

log = logging.getLogger("lanchat.storage")

APP_ID: Final = "lanchat"
# 2: the journal table; 3: sessions.start, where the answer to each session's hello ended; 4: sessions.aliases
# (the keys of expired sessions' tokens that resume the session made for their client), sessions.last_join and
# last_join_room (where its latest room replies were sent), sessions.nick_since (from which seq it holds its
# nick), expired.sid (whose private messages the token names) and expired.attempt (its client's newest
# connection attempt). An older file is upgraded in place at open (_FORMAT_4_COLUMNS).
SCHEMA_VERSION: Final = 4
DB_NAME: Final = "history.sqlite3"
WRITE_BACK_WAIT_MAX: Final = 300  # seconds between tries of a write-back that keeps failing (see watch_file)
SEQ_RESERVE: Final = 10_000  # sequence numbers reserved on disk ahead of use: a crash never reuses one
PRUNE_BATCH: Final = 500  # rows a commit may delete beyond those it added, so pruning never stalls the hub
# Events a conversation may run over its limit before it is pruned (at most 1 % of the limit): a busy room
# is pruned once per PRUNE_SLACK events instead of at every commit, each of which would rewrite pages.
PRUNE_SLACK: Final = 100
# A commit whose events touch more conversations than this goes to the journal: written directly, each
# conversation costs a page (4 KiB to the write-ahead log), a journal row its own ~250 bytes plus its share
# of a fold. One busy room (or a few) stays on the direct path, where a commit is already a page or two.
JOURNAL_CONVS: Final = 4
# Journal rows that trigger a fold into ``events``. A fold rewrites each conversation's last pages once for
# all its rows (SQLite micro-benchmark, 100 rooms, 85 events per commit: 12-13 us per event directly,
# 5-6 us through a journal of 2,000) and takes a few milliseconds of the hub's loop; reads scan the journal.
FOLD_ROWS: Final = 2_000
# Rows of ``posted`` (a session's highest message id, appended at each commit it posted in) that trigger
# their fold into ``sessions.last_id``. Written into the session's own row instead, each post rewrote that
# row's page and its key's index page (``INSERT OR REPLACE``): 40 posters of 1,000 sessions in a commit
# made it 42 pages and 570 us, appended 7 pages and 154 us (SQLite micro-benchmark, docs/benchmarks.md,
# "Levers"): a page per ~100 ids, and a fold updates each session's row once for all its posts. A fold is
# put off by one commit if the journal folds in that one, but never past twice this many rows.
POSTED_FOLD_ROWS: Final = 2_000
# Rooms forgotten between two commits whose names are kept (HistoryStore.room_gone); past it (the disk failing
# while rooms come and go) the next commit forgets every row count instead, each counted again when next used.
GONE_KEPT: Final = 1_000
# Conversations whose events given up on while the disk failed are remembered one by one (for a resume's hole,
# lost_upto); past it the one given up on longest ago is folded into one range for all (a hole may then be told
# that is not, never hidden).
DROPPED_KEPT: Final = 10_000
# Rows per read of one conversation in replay_newest: a resume's budget (half a send queue) is a few
# thousand lines, so most resumes read one page per conversation.
REPLAY_PAGE: Final = 500
REPLAY_FIRST_PAGE: Final = 16  # ... but the first read of each is this small, then doubled
# Bytes of write-ahead log past which a checkpoint starts the log over (see HistoryStore.checkpoint), and to
# which the file is cut back when it starts over. The log grows by whole pages per commit: at 27,000
# messages a second (one commit per hub tick) about 40 MB a second, so under such a load it starts over
# every six seconds or so, each time holding the hub's commits for 6-12 ms; at 64 MiB (every 1.6 s) the
# benchmark's p99 at C = 100 was 20-40 % worse (docs/benchmarks.md, "Levers"). At human chat rates SQLite
# starts it over by itself.
WAL_LIMIT: Final = 256 * 1024 * 1024
WAL_FRAME_HEADER: Final = 24  # bytes before each page in the log
WAL_HEADER: Final = 32  # bytes before the log's first frame
# Around each checkpoint, disk blocks are reserved past the log's file for its next growth: this many times
# what it grew by since the last checkpoint (at most wal_limit). On ext4 a commit that grew the file waited
# for its blocks while the checkpoint's fsync ran (the slowest in a checkpoint 7-16 ms; reserved, 2-5 ms:
# reserve.py). Nothing is reserved while the log stays inside its file (it started over, or does at human
# rates by itself). Blocks reserved past the file's size (``du`` counts them) are freed when SQLite cuts
# the file back (over wal_limit) or removes it (a clean stop).
WAL_RESERVE_GROWTHS: Final = 2
# Seconds a restart of the log waits for readers still using it (PRAGMA busy_timeout of the checkpoint's
# connection), holding SQLite's write lock meanwhile: far less than the hub's hold (LOG_RESTART_HOLD).
RESTART_BUSY_WAIT: Final = 0.05

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    conv TEXT NOT NULL,          -- room name, or '@' + session id for private messages
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    line TEXT NOT NULL,          -- the exact frame clients were sent
    PRIMARY KEY (conv, seq)
) WITHOUT ROWID;
-- Written when a conversation is pruned. count is informational: counts are taken with count(*) on a
-- conversation's first event of a run (writing them at every commit would rewrite a page per commit).
CREATE TABLE IF NOT EXISTS convs (conv TEXT PRIMARY KEY, count INTEGER NOT NULL, pruned_upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    sid TEXT PRIMARY KEY, token TEXT NOT NULL, nick TEXT NOT NULL, rooms TEXT NOT NULL,
    last_id INTEGER NOT NULL, plain INTEGER NOT NULL, start INTEGER NOT NULL DEFAULT -1,
    aliases TEXT NOT NULL DEFAULT '', last_join INTEGER NOT NULL DEFAULT -1,
    last_join_room TEXT NOT NULL DEFAULT '', nick_since INTEGER NOT NULL DEFAULT -1
);
-- A session's highest message id as of a commit in which it posted, in commit order: its row in sessions
-- is rewritten only when something else changes, and these are folded into sessions.last_id once
-- POSTED_FOLD_ROWS have gathered, at each open and at a clean stop (so an older lanchat, which does not
-- read this table, finds the ids in sessions after a clean stop). No index: only folds read it.
CREATE TABLE IF NOT EXISTS posted (sid TEXT NOT NULL, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS topics (room TEXT PRIMARY KEY, topic TEXT NOT NULL);
-- Sessions that expired, by a hash of their resume token, with the highest message id each posted: a
-- client that comes back later resends its unacknowledged messages into a new session, and those already
-- posted must be acked, not posted twice, across a restart too (the hub's Hub._expired; bounded there).
-- And the session's id: the new session takes it, and with it the private messages sent meanwhile ('@' + sid);
-- and its client's newest connection attempt: an older hello, held back by the network, is refused.
CREATE TABLE IF NOT EXISTS expired (
    token_key TEXT PRIMARY KEY, last_id INTEGER NOT NULL, at REAL NOT NULL, sid TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT -1
);
-- The ids of a session's refused posts (a resend of one must be refused again, not acked as a duplicate,
-- across a restart and an expiry too), and as ~id those of its refused changes (a resume's welcome lists them,
-- so that a client whose refusal was lost knows the change was not done), as a JSON list; the owner is 's:' +
-- a session id or 't:' + an expired session's token key. An older lanchat ignores the table (and so forgets
-- them, as it did).
CREATE TABLE IF NOT EXISTS refused (owner TEXT PRIMARY KEY, ids TEXT NOT NULL);
-- Events of commits that touched many conversations, in commit order (appending costs a page per ~16
-- events, whatever the conversations); folded into events once FOLD_ROWS have gathered. No index: it is
-- small, and only reads of history (not of the hub's hot path) scan it.
CREATE TABLE IF NOT EXISTS journal (
    conv TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL, line TEXT NOT NULL
);
"""
_FORMAT_4_COLUMNS: Final = (  # (table, column, type): added to an older file in place
    ("sessions", "aliases", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "last_join", "INTEGER NOT NULL DEFAULT -1"),
    ("sessions", "last_join_room", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "nick_since", "INTEGER NOT NULL DEFAULT -1"),
    ("expired", "sid", "TEXT NOT NULL DEFAULT ''"),
    ("expired", "attempt", "INTEGER NOT NULL DEFAULT -1"),
)
_READABLE_SCHEMAS: Final = ("1", "2", "3", str(SCHEMA_VERSION))
_T = TypeVar("_T")
_Identity = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class SessionRow:
    sid: str
    token: str
    nick: str
    rooms: tuple[str, ...]
    last_id: int
    plain: bool
    start: int = -1  # the server's seq where the answer to the session's hello ended (see Hub._replay)
    aliases: str = ""  # keys of expired tokens that resume it (space-separated; see Hub._hello)
    last_join: int = -1  # the seq before its latest room replies (-1: not known, -2: Hub.JOINS_LOST), their room
    last_join_room: str = ""
    nick_since: int = -1  # the seq from which it holds its nick (-1: not known)


@dataclass(slots=True)
class _Pending:
    events: deque[tuple[str, int, float, str, str]]
    sessions: dict[str, SessionRow | None]  # None: delete; while degraded, the oldest write first
    topics: dict[str, str]
    expired: dict[str, tuple[int, float, str, int] | None] = field(default_factory=dict)  # key -> row; None: delete
    posted: dict[str, int] = field(default_factory=dict)  # sid -> its highest message id (one per session)
    refused: dict[str, tuple[int, ...]] = field(default_factory=dict)  # owner -> refused ids; (): delete
    gone: dict[str, None] = field(default_factory=dict)  # conversations to delete (a set, in the order queued)
    reserve: int | None = None
    bytes: int = 0  # characters of the events' lines (as stored: UTF-8, so up to 4 bytes each)
    # Characters of the session records (counted while degraded), held to the same caps apart from the events.
    session_bytes: int = 0


def _fsync(path: Path) -> None:
    """A file's (or a directory's: its names') writes made durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HistoryStore:
    """SQLite history with batched writes. Not thread-safe: one owner (the hub's loop)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        history_limit: int = const.HISTORY_LIMIT,
        wal_limit: int = WAL_LIMIT,
        guard: Callable[[], str | None] | None = None,
    ) -> None:
        """``guard``: asked before every open of the file (at start, and each retry of a degraded store);
        a reason not to open it keeps the store degraded (the server's data-directory lock not held)."""
        self.path = Path(data_dir) / DB_NAME
        self._guard = guard
        self.history_limit = history_limit
        self.wal_limit = wal_limit
        self.degraded = False
        self.last_error: str | None = None
        self.opens = 0  # successful opens of the file (the first may come late: the hub loads what it keeps then)
        self.dropped = 0  # event rows and session records given up on while the disk failed (bounded queues)
        self.reads_failed = 0  # reads that failed: a replay that met one has a hole
        # A session record was given up on while the disk failed: a post writes only its id (put_posted), so
        # the hub writes every live session's record again once a commit succeeds, and clears this.
        self.sessions_lost = False
        # A held topic was given up on: the file's topics, stale, are replaced by the next commit with the live
        # rooms' (``live_topics``, the hub's; a room no longer live has none when it comes back).
        self._topics_reset = False
        self.live_topics: Callable[[], Iterable[tuple[str, str]]] = lambda: ()
        # This run's file as it last closed it (device, inode, size, times): an open that finds it so is not
        # checked again (_check_and_init). _passed: the open under way found it sound, or this run's own.
        self._own: _Identity | None = None
        self._passed = False
        self._refused: _Identity | None = None  # a file refused while serving (not opened again unless changed)
        self._written_reserve = 0  # the reservation this run last wrote (another's: the file was written by another)
        self._db: sqlite3.Connection | None = None
        self._ckpt: sqlite3.Connection | None = None  # used only by checkpoint(), on another thread
        self._ckpt_lock = threading.Lock()
        self._page = 4096  # the file's page size, read when the checkpoint connection opens
        self._restarted = -1  # the log's size in pages when restart_log last started it over
        self._reserve_blocks: bool | None = None  # for the log's growth (reserve.useful; off after a refusal)
        self._log_end: int | None = None  # bytes of log at the last checkpoint (None: not seen yet)
        self._wal_size = 0  # the log file's size before the last checkpoint (or at the open)
        self._wal_file = ""  # the log's real path, set at the open
        self._closed = False
        self._file_id: tuple[int, int] | None = None  # the opened file's (st_dev, st_ino): see watch_file
        self._wal_seen = False  # its write-ahead log was seen beside it since the open (see watch_file)
        # A write-back that failed (a full disk: the reason to delete a file, often) is tried again after
        # this many seconds of watch_file calls, doubled each time up to WRITE_BACK_WAIT_MAX: each try copies
        # the whole database on the hub's loop.
        self._write_back_wait, self._write_back_in = 0, 0
        self._pending = _Pending(deque(), {}, {})
        self._counts: dict[str, int] = {}  # conv -> its rows in `events`, once counted (see room_gone)
        self._gone: set[str] = set()  # rooms forgotten since the last commit (whose events it may count)
        self._gone_more = False  # more than GONE_KEPT of them
        self._pruned: dict[str, int] = {}  # conv -> the seq it is pruned up to (one per history_limit events)
        # conv -> (oldest, newest) seq given up on while the disk failed (this run), the least recently given up
        # on first; and the same range for all the conversations no longer remembered one by one (DROPPED_KEPT)
        self._dropped: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._dropped_rest = (0, 0)
        self._journal: Counter[str] = Counter()  # events per conversation in the journal table
        self._posted_rows = 0  # rows in the posted table (folded at POSTED_FOLD_ROWS)
        self._retry_at = 0.0
        self._replaced = False  # another file was put at the path while serving (_let_go)
        self._written_upto = 0  # the newest event number this run has committed
        self._checks_failed = 0  # integrity checks in a row that an I/O error ended (the retries back off)
        self.start_seq = 0
        self._reserved = 0
        self._open(at_start=True)

    # --- opening -------------------------------------------------------------------------------------------

    def _open(self, *, at_start: bool = False) -> None:
        """Open or create the file. Unwritable: degraded, retried later. Corrupt or foreign: StorageError
        ``at_start`` (the server refuses to start); later (a data directory that became readable while the
        server ran) degraded as well, with the reason, rather than an error at every commit and at the stop."""
        if self._replaced:  # (its file was put aside while serving: the next start opens what is there)
            return
        if self._guard is not None and (why := self._guard()) is not None:
            self._fail(f"cannot open {self.path}: {why}")
            self._unknown_sequence()
            return
        if self._refused is not None and _identity(self.path) == self._refused:  # (as it was refused: not again)
            self._unknown_sequence()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            self._fail(f"cannot open {self.path}: {exc}")
            self._unknown_sequence()
            return
        self._passed = False
        try:
            self._check_and_init(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_io_error(exc):
                if self._passed:  # (a later step failed, a full disk: the retry need not check it again)
                    self._own = _identity(self.path)
                else:  # the check itself: a read of the whole file on the hub's loop at every retry
                    self._checks_failed += 1
                self._fail(f"cannot open {self.path}: {exc}")
                self._unknown_sequence()
                return
            why = f"{self.path} is not a usable lanchat history database ({exc}); move it away or choose another"
            why += " --data-dir"
            if at_start:
                raise StorageError(why) from None
            if self.degraded and why != self.last_error:  # (_fail says only the first reason)
                log.error("history: %s; history is still kept in memory", why)
            self._fail(why)
            self._refused = _identity(self.path)  # tried again once it is another file, or changed
            self._unknown_sequence()
            return
        # SQLite keeps the log beside the database's real file (it follows a symlinked database).
        self._wal_file = os.path.realpath(self.path) + "-wal"
        try:  # the log's growth is counted from here (before _db: the checkpoint thread may look at once)
            self._wal_size = os.stat(self._wal_file).st_size
        except OSError:
            self._wal_size = 0
        ident = _identity(self.path)
        self._file_id = ident[:2] if ident is not None else None  # (None: not watched)
        self._db = db
        self._checks_failed = 0
        self.opens += 1
        if self.degraded:
            log.warning("history: database open again at %s; writing resumes", self.path)
        self.degraded = False
        self.last_error = None

    def _check_and_init(self, db: sqlite3.Connection) -> None:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise sqlite3.DatabaseError(f"foreign database (tables: {', '.join(sorted(tables)[:5])})")
        if "meta" in tables:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("app") != APP_ID:
                raise sqlite3.DatabaseError("foreign database (no lanchat marker)")
            if meta.get("schema") not in _READABLE_SCHEMAS:
                raise sqlite3.DatabaseError(f"schema version {meta.get('schema')}, expected {SCHEMA_VERSION}")
        # Checked before anything is written to it (a file refused is left as it was), unless it is this run's
        # file as this run last closed it: a write-back's copy, the file after a deleted log or a suspension, one
        # that passed the check before a later step of its open failed (a retry). Checking that again would hold
        # the hub's loop for the whole file, 9 s at 537 MB (a review), at every retry; so would the scan of every
        # event below (0.8 s; the events' key is (conv, seq)): the reservation is enough there, no number being
        # stored without one above it. Any other file there, even on the same inode (a copy over it, a file
        # another server left), has another size or time: checked (two last reviews found damaged ones opened).
        own = self._own is not None and _identity(self.path) == self._own
        if not own:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                found = str(check[0] if check else "no answer").splitlines()
                raise sqlite3.DatabaseError(f"integrity check failed: {' '.join(found[:3])}")
        self._passed, self._own = True, None
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process crash
        # Checkpoints (the only fsyncs) run off the hub's loop, in checkpoint() on another thread.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={self.wal_limit}")  # the log's file is cut back to this
        db.execute("PRAGMA busy_timeout=1000")
        db.executescript(_SCHEMA)
        # An older file gains the journal table above (1) and the sessions' start and the columns of format 4
        # below (2, 3) and is marked 4, so that an older lanchat refuses it instead of serving history with holes (1: it
        # would not see the journal's events) or failing at every session write (2, 3: a column more than it
        # writes). Marked first: a disk that fails between them leaves a file that an older lanchat refuses,
        # and that the next start completes (the columns are looked for, not the mark).
        db.execute("INSERT OR REPLACE INTO meta VALUES ('app', ?), ('schema', ?)", (APP_ID, str(SCHEMA_VERSION)))
        columns = {(t, r[1]) for t in ("sessions", "expired") for r in db.execute(f"PRAGMA table_info({t})")}
        if ("sessions", "start") not in columns:  # a version-1 or 2 file
            db.execute("ALTER TABLE sessions ADD COLUMN start INTEGER NOT NULL DEFAULT -1")
        for table, column, kind in _FORMAT_4_COLUMNS:  # a version-1, 2 or 3 file (or one cut short between them)
            if (table, column) not in columns:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        # Written at once (autocommit): said at once, whatever comes next (the check below may fail).
        if "meta" in tables and meta.get("schema") != str(SCHEMA_VERSION):
            log.warning("history: file format %s upgraded to %d; an earlier lanchat refuses it now",
                        meta.get("schema"), SCHEMA_VERSION)  # fmt: skip
        if not self.opens:
            self._sweep_private(db)  # (no session of this run has a conversation on disk yet)
        reserved = db.execute("SELECT value FROM meta WHERE key='seq_reserved'").fetchone()
        top = 0
        if not own or reserved is None:
            top = max(db.execute(f"SELECT max(seq) FROM {t}").fetchone()[0] or 0 for t in ("events", "journal"))
        self._journal = Counter(dict(db.execute("SELECT conv, count(*) FROM journal GROUP BY conv").fetchall()))
        start = max(int(reserved[0]) if reserved else 0, top)
        clean = db.execute("SELECT value FROM meta WHERE key='clean_stop'").fetchone()
        # Another run's file: this run's first open, or its reservation not the one this run wrote last (another
        # server wrote it while this one was suspended: a review found its numbers handed out again).
        another = self._reserved == 0 or (reserved is not None and int(reserved[0]) != self._written_reserve)
        if clean is not None and clean[0] != "1" and another:
            # That run did not stop cleanly. A crash is covered by the reservation, but a run whose disk
            # was failing at the end may have handed out numbers past it (they could not be written), and
            # which of the two it was cannot be told: continue from the clock, as for an unreadable file.
            floor = _clock_floor()
            if floor > start:
                log.warning("history: the last run did not stop cleanly; sequence continues from %d", floor)
                start = floor
        start = max(start, self.start_seq)
        # Take the next block now, so a crash after this point can never hand out a number twice.
        reserve = max(self._reserved, start + SEQ_RESERVE)
        # This one write must survive a power cut (WAL + NORMAL fsyncs only at checkpoints): lost, the file
        # would still say the last stop was clean, and a restart would hand out this run's numbers again.
        # Failing, the file's numbers are not this run's to continue from (start_seq stays unset, and the
        # open's failure takes the clock's, above any the next start may go back to).
        db.execute("PRAGMA synchronous=FULL")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('seq_reserved', ?), ('clean_stop', '0')", (str(reserve),))
        db.execute("PRAGMA synchronous=NORMAL")
        self.start_seq, self._reserved, self._written_reserve = start, reserve, reserve
        self._pending.reserve = None  # (below: a commit writing it after this would take the file's back)
        for conv, pruned in db.execute("SELECT conv, pruned_upto FROM convs"):
            self._pruned[conv] = pruned
        if db.execute("SELECT 1 FROM posted LIMIT 1").fetchone():  # the last run did not stop cleanly
            db.execute("BEGIN IMMEDIATE")
            self._fold_posted(db)
            db.execute("COMMIT")
        self._posted_rows = 0

    def _sweep_private(self, db: sqlite3.Connection) -> None:
        """Delete the private conversations ('@' + sid) that neither a session nor an expired session's token
        names: their deletion was given up on while the disk failed (bounded queues), or a crash came first."""
        named = {r[0] for r in db.execute("SELECT sid FROM sessions UNION SELECT sid FROM expired")}
        found = {
            r[0]
            for t in ("events", "journal")
            for r in db.execute(f"SELECT DISTINCT conv FROM {t} WHERE conv GLOB '@*'")
        }
        orphans = sorted(c for c in found if c[1:] not in named)
        if not orphans:
            return
        db.execute("BEGIN IMMEDIATE")
        for conv in orphans:
            for table in ("events", "journal", "convs"):
                db.execute(f"DELETE FROM {table} WHERE conv=?", (conv,))
        db.execute("COMMIT")
        log.info("history: %d private conversations of ended sessions deleted", len(orphans))

    def _unknown_sequence(self) -> None:
        """The file cannot be opened at start: the numbers it holds are unknown, whether it exists now or
        appears later (a data directory mounted or made writable after the start, then opened by a retry:
        numbers counted from 0 meanwhile would be those of its events again). Continue from the clock."""
        if self.start_seq == 0:
            self.start_seq = _clock_floor()
            log.warning(
                "history: sequence continues from %d (the database's own numbers cannot be read)", self.start_seq
            )

    def _fail(self, message: str, *, said: bool = False) -> None:
        if not self.degraded:
            if not said:
                log.error("history: %s; chat goes on, history is kept in memory until the disk recovers", message)
            # Session records are counted only while degraded (_hold_session): count those already queued.
            p = self._pending
            p.session_bytes = sum(_record_chars(sid, row) for sid, row in p.sessions.items())
        self.degraded = True
        self.last_error = message

    def _read_failed(self, exc: sqlite3.Error) -> None:
        self.reads_failed += 1
        self._fail(f"read failed: {exc}")

    # --- loading at start ----------------------------------------------------------------------------------

    def load_sessions(self) -> list[SessionRow]:
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT sid, token, nick, rooms, last_id, plain, start, aliases, last_join, last_join_room, nick_since"
            " FROM sessions"
        ).fetchall()
        return [SessionRow(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], bool(r[5]), *r[6:]) for r in rows]

    def load_sessions_late(self) -> list[SessionRow] | None:
        """load_sessions for a database that opened after the start (the server runs): None if the read
        failed (counted and logged as the store's failures are), to be tried again."""
        try:
            return self.load_sessions()
        except sqlite3.Error as exc:
            self._read_failed(exc)
            return None

    def load_expired(self) -> list[tuple[str, int, float, str, int]]:
        """The expired sessions' token keys, oldest first, as (key, last_id, when, sid, attempt): the hub
        forgets those past its bounds (Hub._forget_expired), with what it kept for them."""
        if self._db is None:
            return []
        try:
            rows = self._db.execute("SELECT token_key, last_id, at, sid, attempt FROM expired ORDER BY at").fetchall()
        except sqlite3.Error as exc:
            self._read_failed(exc)
            return []
        return [(str(k), int(i), float(t), str(sid), int(a)) for k, i, t, sid, a in rows]

    def load_refused(self) -> dict[str, tuple[int, ...]]:
        """Refused post and change ids by owner ('s:' + session id, 't:' + expired token key)."""
        if self._db is None:
            return {}
        try:
            rows = self._db.execute("SELECT owner, ids FROM refused").fetchall()
        except sqlite3.Error as exc:
            self._read_failed(exc)
            return {}
        out: dict[str, tuple[int, ...]] = {}
        for owner, ids in rows:
            with contextlib.suppress(ValueError, TypeError):  # a row damaged by hand: as if none were refused
                out[str(owner)] = tuple(int(i) for i in json.loads(ids))
        return out

    def room_gone(self, room: str) -> None:
        """The hub forgot ``room`` (its last member left): so does the count of its rows, counted from the file
        again if the room comes back. (A count each was kept for every room ever used: a long-run check made
        and left rooms for 15 minutes and found the main process 124 bytes bigger for each.)"""
        self._counts.pop(room, None)
        if len(self._gone) < GONE_KEPT:  # (its last events, the part among them, are counted by the next commit)
            self._gone.add(room)
        else:
            self._gone_more = True

    def topic(self, room: str) -> str:
        """A room's topic ('' for none), read when the room comes back: the hub holds only the topics of
        rooms that exist, so rooms made and left one after another cost it no memory. A topic held for a
        failing disk first; one in a file that cannot be read is not known ('')."""
        held = self._pending.topics.get(room)
        if held is not None:
            return held
        if self._db is None or self._topics_reset:  # (the file's are stale: to be deleted)
            return ""
        try:
            row = self._db.execute("SELECT topic FROM topics WHERE room = ?", (room,)).fetchone()
        except sqlite3.Error as exc:
            self._read_failed(exc)
            return ""
        return str(row[0]) if row else ""

    # --- queued writes -------------------------------------------------------------------------------------

    def add_event(self, seq: int, convs: tuple[str, ...] | list[str], ts: float, kind: str, line: str) -> None:
        p = self._pending
        events = p.events
        for conv in convs:
            events.append((conv, seq, ts, kind, line))
            p.bytes += len(line)
        while len(events) > const.PENDING_WRITES_MAX or p.bytes > const.PENDING_WRITES_BYTES:
            gone = events.popleft()  # the disk has been failing for a while: the oldest go
            p.bytes -= len(gone[4])
            self.dropped += 1
            self._given_up(gone[0], gone[1])
        self.note_seq(seq)

    def _given_up(self, conv: str, seq: int) -> None:
        """An event of ``conv`` will never be written: a resume from before it is told of the hole (lost_upto)."""
        dropped = self._dropped
        oldest = seq
        if conv in dropped:
            oldest = dropped.pop(conv)[0]  # (put back last, below)
        elif len(dropped) >= DROPPED_KEPT:  # a room per minute for a week: the one given up on longest ago goes
            _, (first, last) = dropped.popitem(last=False)
            rest_first, rest_last = self._dropped_rest
            self._dropped_rest = (min(rest_first or first, first), max(rest_last, last))
        dropped[conv] = (oldest, seq)

    def note_seq(self, seq: int) -> None:
        """Every sequence number handed out passes here (stored or not): keep the on-disk reservation
        ahead of it, so a restart never hands the same number out again."""
        if seq + SEQ_RESERVE // 2 > self._reserved:
            self._reserved = seq + SEQ_RESERVE
            self._pending.reserve = self._reserved

    def put_session(self, row: SessionRow) -> None:
        posted = self._pending.posted
        if posted.get(row.sid, -1) <= row.last_id:  # the record carries the id
            posted.pop(row.sid, None)
        self._hold_session(row.sid, row)

    def drop_session(self, sid: str, *, keep_conv: bool = False) -> None:
        """Delete a session's record and, unless ``keep_conv``, its own conversation ('@' + sid: its private
        messages, its joins in large rooms): nobody can read it again, and it would be kept forever."""
        self._pending.posted.pop(sid, None)
        self._hold_session(sid, None)
        if not keep_conv:
            self.drop_conv("@" + sid)

    def drop_conv(self, conv: str) -> None:
        self._hold(self._pending.gone, conv, None)

    def put_posted(self, sid: str, last_id: int) -> None:
        """A session posted (``last_id``, its highest message id, is all that changed): one small row
        appended at the commit instead of its whole record. One per session however many it posted, so
        bounded by the sessions, while the disk fails too."""
        posted = self._pending.posted
        if last_id > posted.get(sid, -1):  # ids start at 0
            posted[sid] = last_id

    def _hold_session(self, sid: str, row: SessionRow | None) -> None:
        """Queue a session's record (None: its deletion), bounded like the events: sessions that come and
        go while the disk fails would each leave one behind. The oldest write goes first; a lost one costs
        little (``sessions_lost``: the hub writes every live session's record again once the disk works;
        an ended one comes back at the next start and expires after the grace)."""
        p = self._pending
        sessions = p.sessions
        if not self.degraded:  # written at this tick's commit: nothing to count
            sessions[sid] = row
            return
        if sid in sessions:  # rewritten: to the end, so that the oldest write is the first to go
            p.session_bytes -= _record_chars(sid, sessions.pop(sid))
        sessions[sid] = row
        p.session_bytes += _record_chars(sid, row)
        while len(sessions) > const.PENDING_WRITES_MAX or p.session_bytes > const.PENDING_WRITES_BYTES:
            gone = next(iter(sessions))  # the disk has been failing for a while: the oldest go
            lost = sessions.pop(gone)
            p.session_bytes -= _record_chars(gone, lost)
            self.dropped += 1
            self.sessions_lost = self.sessions_lost or lost is not None  # (a deletion: the next start ends it)

    def put_expired(self, key: str, last_id: int, at: float, sid: str, attempt: int = -1) -> None:
        self._hold_expired(key, (last_id, at, sid, attempt))

    def drop_expired(self, key: str) -> None:
        self._hold_expired(key, None)

    def _hold_expired(self, key: str, row: tuple[int, float, str, int] | None) -> None:
        """Queue an expired session's record (None: its deletion); one lost while the disk fails costs at
        most a duplicate after a restart, and the private messages kept for the token (the first open of the
        next run deletes a conversation that nothing names)."""
        self._hold(self._pending.expired, key, row)

    def put_refused(self, owner: str, ids: Collection[int]) -> None:
        """The refused post and change ids of ``owner`` (see the table); none: its row is deleted. One lost
        while the disk fails costs a resend acked as a duplicate after a restart."""
        self._hold(self._pending.refused, owner, tuple(sorted(ids)))

    def _hold(self, queue: dict[str, _T], key: str, row: _T) -> bool:
        """Queue a small record for the next commit, the latest write last; while the disk fails, the
        oldest writes go past PENDING_WRITES_MAX. True if one went."""
        queue.pop(key, None)  # rewritten: to the end
        queue[key] = row
        dropped = False
        while self.degraded and len(queue) > const.PENDING_WRITES_MAX:
            del queue[next(iter(queue))]
            self.dropped += 1
            dropped = True
        return dropped

    def put_topic(self, room: str, topic: str) -> None:
        """Bounded like the other records while the disk fails (rooms made, given a topic and left, one after
        another). One given up on would leave the file's older topic to come back with its room (a review: a
        topic cleared came back), so then the next commit replaces the file's topics with the live rooms'
        (``live_topics``), in one transaction: a room no longer live has none when it comes back."""
        if self._hold(self._pending.topics, room, topic):
            self._topics_reset = True

    @property
    def pending(self) -> int:
        p = self._pending
        return (
            len(p.events) + len(p.sessions) + len(p.topics) + len(p.expired) + len(p.posted) + len(p.refused)
            + len(p.gone)
        )  # fmt: skip

    @property
    def is_open(self) -> bool:
        """The file is open (else every commit, and the checkpoint loop while idle, tries it on a schedule)."""
        return self._db is not None

    def _retry_open(self, now: float) -> bool:
        """An open on the retry schedule: True if the file is open now. Next try in DB_RETRY_INTERVAL, or
        later after integrity checks that I/O errors ended (doubled at each, to DB_CHECK_RETRY_MAX: a review)."""
        self._retry_at = now + const.DB_RETRY_INTERVAL
        self._open()
        if self._db is None and self._checks_failed:
            wait = const.DB_RETRY_INTERVAL * 2 ** min(self._checks_failed, 16)
            self._retry_at = now + min(wait, const.DB_CHECK_RETRY_MAX)
        return self._db is not None

    @property
    def journal(self) -> int:
        """Events committed to the journal and not yet folded into ``events``."""
        return self._journal.total()

    def commit(self, now: float, *, force: bool = False) -> bool:
        """Write everything queued in one transaction. False while the disk fails (data kept, retried every
        DB_RETRY_INTERVAL, or at once with ``force``: the last chance at a stop)."""
        if not self.pending and self._pending.reserve is None:
            self._gone.clear()
            self._gone_more = False
            if self._db is None and not self._closed and (force or now >= self._retry_at):
                self._retry_open(now)  # idle, and not open: opened all the same (a directory made writable
                # later stayed unused while nobody chatted, `history degraded` for good: an operator's review)
            return not self.degraded
        if self._db is None or self.degraded:
            if now < self._retry_at and not force:
                return False
            if self._db is None and not self._retry_open(now):
                return False
            self._retry_at = now + const.DB_RETRY_INTERVAL
        assert self._db is not None
        p = self._pending
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            added = Counter(map(itemgetter(0), p.events))
            journal = self._journal  # replaced, never changed in place: a failed commit leaves it as it was
            if len(added) > JOURNAL_CONVS:
                db.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?)", p.events)
                journal, added = journal + added, Counter()  # counted (and pruned) when folded
            elif p.events:
                db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", p.events)
            for sid, row in p.sessions.items():
                if row is None:
                    db.execute("DELETE FROM sessions WHERE sid=?", (sid,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO sessions (sid, token, nick, rooms, last_id, plain, start, aliases,"
                        " last_join, last_join_room, nick_since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (  # (by name: upgrades append columns)
                            row.sid, row.token, row.nick, json.dumps(list(row.rooms)), row.last_id, row.plain,
                            row.start, row.aliases, row.last_join, row.last_join_room, row.nick_since,
                        ),
                    )  # fmt: skip
            gone = list(p.gone)  # (after the events: one of this commit's may be the last of its conversation)
            for conv in gone:
                db.execute("DELETE FROM events WHERE conv=?", (conv,))
                db.execute("DELETE FROM convs WHERE conv=?", (conv,))
                if journal[conv]:
                    db.execute("DELETE FROM journal WHERE conv=?", (conv,))
                    journal = journal - Counter({conv: journal[conv]})
                added.pop(conv, None)
            if self._topics_reset:  # (before the held ones, which are newer)
                db.execute("DELETE FROM topics")
                db.executemany("INSERT OR REPLACE INTO topics VALUES (?, ?)", self.live_topics())
            for room, topic in p.topics.items():
                db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?)", (room, topic))
            for key, expiry in p.expired.items():
                if expiry is None:
                    db.execute("DELETE FROM expired WHERE token_key=?", (key,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO expired (token_key, last_id, at, sid, attempt) VALUES (?, ?, ?, ?, ?)",
                        (key, *expiry),
                    )
            for owner, ids in p.refused.items():
                if ids:
                    db.execute("INSERT OR REPLACE INTO refused VALUES (?, ?)", (owner, json.dumps(ids)))
                else:
                    db.execute("DELETE FROM refused WHERE owner=?", (owner,))
            if p.reserve is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('seq_reserved', ?)", (str(p.reserve),))
            # Fold at FOLD_ROWS, or before pruning a conversation that has rows in the journal: pruning sees
            # only ``events``, and would cut rows newer than the journal's (a hole in the history).
            slack = self._slack()
            folded = journal.total() >= FOLD_ROWS or any(
                journal[conv] and self._count(db, conv, n) - self.history_limit > slack for conv, n in added.items()
            )
            if folded:
                self._fold(db)
                added.update(journal)
                journal = Counter()
            posted_rows = self._posted_rows
            if p.posted:
                db.executemany("INSERT INTO posted VALUES (?, ?)", p.posted.items())
                posted_rows += len(p.posted)
            # One fold per commit, as a rule (the two added up): this one waits for the next commit.
            if posted_rows >= POSTED_FOLD_ROWS * (2 if folded else 1):
                self._fold_posted(db)
                posted_rows = 0
            touched, pruned = self._count_and_prune(db, added)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._retry_at = now + const.DB_RETRY_INTERVAL
            self._fail(f"write failed: {exc}")
            return False
        self._counts.update(touched)
        if self._gone_more:
            self._counts.clear()
        for room in self._gone:
            self._counts.pop(room, None)
        self._gone.clear()
        self._gone_more = False
        self._pruned.update(pruned)  # only now: a failed COMMIT rolled the prune back with the rest
        for conv in gone:
            self._counts.pop(conv, None)
            self._pruned.pop(conv, None)
            self._dropped.pop(conv, None)
        self._journal = journal
        self._posted_rows = posted_rows
        p.posted.clear()
        if p.events:
            self._written_upto = max(self._written_upto, p.events[-1][1])
        p.events.clear()
        p.bytes = 0
        p.sessions.clear()
        p.session_bytes = 0
        p.topics.clear()
        p.expired.clear()
        p.refused.clear()
        p.gone.clear()
        if p.reserve is not None:
            self._written_reserve = p.reserve
        p.reserve = None
        self._topics_reset = False
        if self.degraded:
            log.warning("history: writes resumed at %s", self.path)
            self.degraded = False
            self.last_error = None
        return True

    @staticmethod
    def _fold(db: sqlite3.Connection) -> None:
        """Move the journal into ``events``: sorted, so each conversation's pages are written once."""
        db.execute("INSERT OR IGNORE INTO events SELECT conv, seq, ts, kind, line FROM journal ORDER BY conv, seq")
        db.execute("DELETE FROM journal")  # no WHERE: SQLite frees the table's pages whole

    @staticmethod
    def _fold_posted(db: sqlite3.Connection) -> None:
        """Move the posted ids into their sessions' rows (the highest of both; a session deleted since
        has no row, and its ids go with the table)."""
        rows = db.execute("SELECT sid, max(last_id) FROM posted GROUP BY sid").fetchall()
        db.executemany("UPDATE sessions SET last_id=?2 WHERE sid=?1 AND last_id<?2", rows)
        db.execute("DELETE FROM posted")

    def _slack(self) -> int:
        return min(PRUNE_SLACK, self.history_limit // 100)

    def _count(self, db: sqlite3.Connection, conv: str, added: int) -> int:
        """Rows of ``conv`` in ``events`` once this commit's ``added`` are in."""
        known = self._counts.get(conv)
        if known is None:  # first event of this run: count what the file holds (the batch included)
            return int(db.execute("SELECT count(*) FROM events WHERE conv=?", (conv,)).fetchone()[0])
        return known + added

    def _count_and_prune(self, db: sqlite3.Connection, added_to: Counter[str]) -> tuple[dict[str, int], dict[str, int]]:
        """New row counts in ``events`` of the conversations this commit added to, and the seq each pruned
        conversation is now pruned up to: those over their limit are pruned (events still in the journal
        are counted, and pruned, once folded)."""
        counts: dict[str, int] = {}
        pruned: dict[str, int] = {}
        # At least as many rows as the commit added (a fold adds FOLD_ROWS at once): with a fixed batch,
        # retention fell behind whenever commits went to the journal or one commit added more than a batch.
        budget = max(PRUNE_BATCH, added_to.total())
        slack = self._slack()
        for conv, added in added_to.items():
            count = self._count(db, conv, added)
            excess = count - self.history_limit
            if excess > slack and budget > 0:
                n = min(excess, budget)
                budget -= n
                upto = db.execute(
                    "SELECT seq FROM events WHERE conv=? ORDER BY seq LIMIT 1 OFFSET ?", (conv, n - 1)
                ).fetchone()
                if upto is not None:
                    db.execute("DELETE FROM events WHERE conv=? AND seq<=?", (conv, upto[0]))
                    count -= n
                    pruned[conv] = upto[0]
                    db.execute("INSERT OR REPLACE INTO convs VALUES (?, ?, ?)", (conv, count, upto[0]))
            counts[conv] = count
        return counts, pruned

    # --- reads ---------------------------------------------------------------------------------------------

    def events(
        self,
        conv: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
        max_chars: int | None = None,
    ) -> tuple[list[str], bool]:
        """Lines of one conversation, oldest first: the newest ``limit`` before ``before``, or the oldest
        ``limit`` after ``after``, and no more of them than ``max_chars`` hold (at least one: the rows
        past it are never read, so a page of long lines costs what its reply can carry, not ``limit``
        rows). Returns (lines, more) where more says whether further pages exist."""
        if self._db is None:
            return [], False
        newest = after is None or before is not None
        try:
            rows = self._rows(conv, before=before, after=after, limit=limit + 1, newest=newest)
            lines: list[str] = []
            total, more = 0, False
            for _, line in rows:
                total += len(line) + 1
                if len(lines) == limit or (max_chars is not None and total > max_chars and lines):
                    more = True
                    break
                lines.append(line)
        except sqlite3.Error as exc:
            self._read_failed(exc)
            return [], False
        if newest:
            lines.reverse()
        return lines, more

    def replay_newest(
        self, after: int, convs: list[str], page: int = REPLAY_PAGE, *, until: dict[str, int] | None = None
    ) -> Iterator[tuple[int, str]]:
        """Events of any of ``convs`` with seq > after, and of the conversations in ``until`` up to their
        seq there, newest first, each once (a private message is in two conversations). Each conversation
        is read a page at a time along its primary key, only as far as the caller iterates: a resume that
        stops at its byte budget reads little, however long the absence."""
        bounded = {conv: upto for conv, upto in (until or {}).items() if conv not in convs}
        if self._db is None or not (convs or bounded):
            return
        pages = [self._newest_of(conv, after, page) for conv in dict.fromkeys(convs)]
        pages += [self._newest_of(conv, after, page, before=upto + 1) for conv, upto in bounded.items()]
        last = None
        for seq, line in heapq.merge(*pages, key=_minus_seq):
            if seq != last:
                yield seq, line
                last = seq

    def _newest_of(self, conv: str, after: int, page: int, before: int | None = None) -> Iterator[tuple[int, str]]:
        size = min(REPLAY_FIRST_PAGE, page)  # the merge reads a page of every conversation before the first
        while True:  # event: small ones first (a session in 50 rooms), doubled as a conversation is read on
            try:
                rows = list(self._rows(conv, before=before, after=after, limit=size, newest=True))
            except sqlite3.Error as exc:
                self._read_failed(exc)
                return
            yield from rows
            if len(rows) < size:
                return
            before = rows[-1][0]
            size = min(2 * size, page)

    def _rows(
        self, conv: str, *, before: int | None, after: int | None, limit: int, newest: bool
    ) -> Iterator[tuple[int, str]]:
        """(seq, line) of one conversation between ``after`` and ``before``: the newest ``limit`` (newest
        first) or the oldest, read as they are iterated. Raises sqlite3.Error."""
        assert self._db is not None
        args: list[object] = [conv]
        where = "conv=?"
        if before is not None:
            where += " AND seq<?"
            args.append(before)
        if after is not None:
            where += " AND seq>?"
            args.append(after)
        # A compound SELECT, not a subquery: SQLite then merges the primary key's walk with the (small,
        # sorted) journal and stops at the limit, instead of sorting the whole conversation.
        rows: Iterator[tuple[int, str]] = self._db.execute(
            f"SELECT seq, line FROM events WHERE {where} UNION ALL SELECT seq, line FROM journal"
            f" WHERE {where} ORDER BY seq {'DESC' if newest else 'ASC'} LIMIT ?",
            (*args, *args, limit),
        )
        return rows

    def lost_upto(self, conv: str) -> int:
        """The newest sequence number of ``conv`` that history no longer has: pruned, given up on while
        the disk failed, or in a file not open yet (all of whose numbers are below ``start_seq``) (0: none).
        A replay from below it has a hole, and says so."""
        lost = max(self._pruned.get(conv, 0), self._dropped.get(conv, (0, 0))[1], self._dropped_rest[1])
        if self._db is not None:
            return lost
        # (and after a let-go, what this run wrote to the file it let go of: a resume from before it missed
        # those events without a gap, a review)
        return max(lost, self.start_seq, self._written_upto if self._replaced else 0)

    def lost_between(self, conv: str, after: int, upto: int) -> bool:
        """Whether history lacks an event of ``conv`` with ``after`` < seq <= ``upto`` (see lost_upto; the
        events given up on are taken as one range, oldest to newest: at worst a hole is told that is not)."""
        if self.lost_upto(conv) <= after:
            return False
        if self._pruned.get(conv, 0) > after or self._db is None:  # pruned from the oldest, or a file not open
            return True
        # Given up on in this one, or in conversations no longer remembered one by one: maybe this one
        return any(
            last > after and first <= upto for first, last in (self._dropped.get(conv, (0, 0)), self._dropped_rest)
        )

    def held(self, convs: list[str], after: int, before: int | None) -> bool:
        """Whether an event of ``convs`` with ``after`` < seq < ``before`` is held in memory only: it could
        not be written (the disk fails), so no read of the database finds it. Scans the held events from
        the oldest, only up to ``before``: nothing at all once a commit has succeeded."""
        wanted = set(convs)
        for conv, seq, _, _, _ in self._pending.events:
            if before is not None and seq >= before:
                return False
            if seq > after and conv in wanted:
                return True
        return False

    def watch_file(self) -> None:
        """Once a second, from the hub's loop (never while a commit runs): has the file been deleted or
        replaced while open? SQLite would go on writing to the file it opened, which nothing can read once
        it is gone, and the next start would begin an empty history, its numbers handed out again. A
        deleted file is written back from the open connection (SQLite's backup: a consistent copy, the
        log's pages included) and opened again; nothing committed is lost. A directory deleted with it (or
        one this server can no longer lock), or another file put in its place: said once in the log."""
        if self._db is None or self._file_id is None or self._closed:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError:  # the disk fails: the commits say so
            return
        if st is not None:
            if self._moved(st):
                with self._ckpt_lock:
                    self._let_go()
            elif os.path.exists(self._wal_file):
                self._wal_seen = True
            elif self._wal_seen:  # the log deleted alone: its commits since the last checkpoint would be lost
                self._log_deleted()  # with a crash (nothing reads a deleted log at the next open)
            return
        # (the directory first: the guard would make it again, to lock it)
        why = "its directory is gone" if not self.path.parent.is_dir() else self._guard() if self._guard else None
        if why is not None:
            log.error("history: %s was deleted while serving and cannot be written back (%s); this run goes on "
                      "writing to the file it opened, which is lost at its stop", self.path, why)  # fmt: skip
            self._file_id = None
            return
        if self._write_back_in > 0:
            self._write_back_in -= 1
            return
        # Under the checkpoint's lock: its thread must not open the new file while the old log is still beside
        # it (the old connection's close below checkpoints into the old file and removes that log).
        with self._ckpt_lock:
            try:
                self._write_back()
            except (OSError, sqlite3.Error) as exc:
                self._write_back_wait = min(max(1, 2 * self._write_back_wait), WRITE_BACK_WAIT_MAX)
                self._write_back_in = self._write_back_wait
                log.error("history: %s was deleted while serving and cannot be written back (%s); trying again in "
                          "%d s", self.path, exc, self._write_back_wait)  # fmt: skip
                return
            self._write_back_wait = 0
            self._close_connections()
        self._open()  # failing, the store is degraded and its queue waits for the next open (as for any)
        log.warning("history: %s was deleted while serving; written back from the open file (stop the "
                    "server before deleting its history)", self.path)  # fmt: skip

    def _moved(self, st: os.stat_result) -> bool:
        """Is ``st``, the file at the path, another than the one open?"""
        return (st.st_dev, st.st_ino) != self._file_id

    def _let_go(self) -> None:
        """Another file was put in place of the open one. This run went on writing to the file it had opened,
        but its write-ahead log kept the path's name, beside the new file, and SQLite applied it to that file
        at the next open: a good copy put in place came up "malformed", refused (an operator's review). The
        log is copied into the old file and removed with its index, and this run keeps its history in memory
        from here on, as for a failing disk: the new file is for the next start (under _ckpt_lock)."""
        assert self._db is not None
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        # SQLite's close keeps a moved database's log; they are removed here if they are the ones it had open
        # (a log and index put in place with the new file, a copy of both, are the new file's and stay)
        ours = [f for f in (self._wal_file, self._wal_file[:-4] + "-shm") if _held_open(f)]
        self._close_connections()
        for leftover in ours:
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        self._file_id, self._replaced = None, True
        why = f"{self.path} was replaced while serving: the next start uses it (stop the server before replacing it)"
        log.error("history: %s; chat goes on, and this run keeps its history in memory from now on", why)
        self._fail(why, said=True)

    def _log_deleted(self) -> None:
        """The write-ahead log was deleted while open: everything in it is copied into the database file
        (a TRUNCATE checkpoint through the open connection, which still reads it), and the file opened
        again, with a new log."""
        assert self._db is not None
        with self._ckpt_lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:  # tried again in a second
                log.error("history: %s was deleted while serving and cannot be copied back: %s", self._wal_file, exc)
                return
            self._close_connections()
        self._wal_seen = False
        self._open()
        log.warning("history: %s was deleted while serving; its commits copied into the database, a new log "
                    "begun (stop the server before deleting its files)", self._wal_file)  # fmt: skip

    def suspend(self, why: str) -> None:
        """Stop writing (another server may hold the data directory now): the file is closed, the store
        degraded, writes kept in memory as for a failing disk; the guard decides when it opens again."""
        with self._ckpt_lock:
            self._close_connections()
        self._fail(why)

    def _close_connections(self) -> None:
        """Both connections closed (under _ckpt_lock: the checkpoint thread opens its own again, to whatever
        file is at the path then)."""
        for db in (self._ckpt, self._db):
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
        self._ckpt = self._db = None
        # (after the close, which may copy the log into the file; and only if the file at the path is the one
        # this run had open: one put there meanwhile is not its own, a review)
        ident = _identity(self.path)
        self._own = ident if ident is not None and ident[:2] == self._file_id else None

    def _write_back(self) -> None:
        """The open database copied to a new file, made durable, then linked in at its path (which fails if
        a file appeared there meanwhile: it is not overwritten)."""
        assert self._db is not None
        copy = self.path.with_name(self.path.name + ".restoring")
        copy.unlink(missing_ok=True)
        try:
            dest = sqlite3.connect(copy)
            try:
                self._db.backup(dest)
            finally:
                dest.close()
            _fsync(copy)
            st = os.stat(copy)
            os.link(copy, self.path)
            self._file_id = (st.st_dev, st.st_ino)  # this run's file now (see _close_connections)
            try:  # the name too: a power cut must not take it back
                _fsync(self.path.parent)
            except OSError as exc:  # linked all the same: opened and written to (a review: else never again)
                log.error("history: %s written back, but its directory could not be synced (%s): a power cut "
                          "may take its name back", self.path, exc)  # fmt: skip
        finally:
            copy.unlink(missing_ok=True)

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database file, never blocking the writer (PASSIVE); True if
        the log is over ``wal_limit`` and must be started over (restart_log). Blocking (it fsyncs): call
        it from a worker thread, never the hub's loop; it uses its own connection.

        PASSIVE alone does not bound the log: SQLite starts it over only at a write transaction that
        begins once everything in it is copied, and under a steady load some commit is always in flight
        while a checkpoint runs (a tick's commit every millisecond, a checkpoint's fsyncs tens of
        milliseconds). Measured: 460 MB of log after 12 s at 27,000 messages a second, growing for as long
        as the load lasted. At human rates the log starts over by itself and this returns False."""
        with self._ckpt_lock:
            self._reserve_log()
            done = self._wal_checkpoint("PASSIVE")
            if done is None:
                return False
            frames = done[1]
            # After a restart the log's header keeps its old size until the next commit writes: not due again.
            due = frames * (self._page + WAL_FRAME_HEADER) > self.wal_limit and frames != self._restarted
            if not due:  # a restart cuts the file back at its next commit: blocks reserved now would go with it
                self._reserve_log(frames)
            return due

    def restart_log(self) -> bool:
        """Copy what is left of the log and start it over (RESTART); True if it did. Call it from a worker
        thread while no commit is made (the hub holds its commits): a commit in flight would make it wait,
        and one made meanwhile would wait for it in SQLite's busy handler, stalling the hub's loop. Right
        after checkpoint() little is left to copy: 6-12 ms under the benchmark's load, fsyncs included.

        A reader that keeps the log in use (a backup, a ``sqlite3`` shell in a transaction) keeps it from
        starting over: this then gives up after RESTART_BUSY_WAIT (False), and the caller backs off."""
        with self._ckpt_lock:
            done = self._wal_checkpoint("RESTART")
            if done is None:
                return False
            busy, frames = done
            log.debug("history: write-ahead log of %d pages started over%s", frames, " (busy)" if busy else "")
            if not busy:
                self._restarted = frames
            return not busy

    def _reserve_log(self, frames: int | None = None) -> None:
        """Reserve the disk blocks the log will grow into by the next checkpoint (WAL_RESERVE_GROWTHS times its
        last growth; under _ckpt_lock, so never while the store closes). Before a checkpoint (``frames``
        None) by the file's growth since the last checkpoint (or the open): a log climbing past its file, as
        after a start. After it by the log's own end: a log that started over inside its file and comes to
        its end again (the file does not grow until then; the first look at the log's end reserves nothing)."""
        if self._closed or self._db is None:  # as _wal_checkpoint: SQLite may remove the file at the close
            return
        wal = self._wal_file
        if self._reserve_blocks is None:
            self._reserve_blocks = reserve.useful(os.path.dirname(wal))
        if not self._reserve_blocks:
            return
        try:
            size = os.stat(wal).st_size
            last: int | None
            if frames is None:
                last, self._wal_size = self._wal_size, size
                end = size
            elif frames < 0:  # another process held the checkpoint (SQLite answers -1): no end to go by
                self._log_end = None
                return
            else:
                last, self._log_end = self._log_end, WAL_HEADER + frames * (self._page + WAL_FRAME_HEADER)
                end = self._log_end
            want = end + min(WAL_RESERVE_GROWTHS * (end - last), self.wal_limit) if last is not None else 0
            if want > size:  # blocks inside the file exist already
                reserve.reserve(wal, size, want - size)  # SQLite may append meanwhile: its blocks stay as they are
        except OSError as exc:
            if exc.errno in reserve.UNSUPPORTED:  # the log grows as SQLite writes it, as before
                self._reserve_blocks = False
                log.info("history: cannot reserve disk blocks for the write-ahead log (%s); going on without", exc)
            else:  # the file gone with a stop, say; tried again at the next checkpoint
                log.debug("history: reserving disk blocks for the write-ahead log failed: %s", exc)

    def _wal_checkpoint(self, mode: str) -> tuple[bool, int] | None:
        """One checkpoint (under _ckpt_lock): whether it found the log busy, and the log's pages; None if
        the store is closed or it failed (it is tried again a second later)."""
        if self._closed or self._db is None:
            return None
        try:
            busy, frames, _ = self._checkpointer().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            log.debug("history: checkpoint (%s) skipped: %s", mode, exc)
            return None
        return bool(busy), int(frames)

    def _checkpointer(self) -> sqlite3.Connection:
        if self._ckpt is None:
            self._ckpt = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._ckpt.execute(f"PRAGMA busy_timeout={int(RESTART_BUSY_WAIT * 1000)}")
            self._page = int(self._ckpt.execute("PRAGMA page_size").fetchone()[0])
        return self._ckpt

    def close(self) -> None:
        """Close the file; marked as a clean stop if everything was written (see _check_and_init)."""
        if self.pending:
            log.warning("history: %d events, sessions or topics could not be written (%s): lost at this stop",
                        self.pending, self.last_error or "the disk fails")  # fmt: skip
        if self._db is not None and not self.degraded and not self.pending and not self._pending.reserve:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._posted_rows:
                    self._fold_posted(self._db)
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('clean_stop', '1')")
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                log.warning("history: cannot mark the stop as clean: %s", exc)
        with self._ckpt_lock:  # a checkpoint may still run on its thread: it finishes first, none starts after
            self._closed = True
            if self._ckpt is not None:
                self._ckpt.close()
                self._ckpt = None
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None


def _identity(path: Path) -> _Identity | None:
    """(device, inode, size, mtime, ctime) of a file, None if there is none: a file repaired in place changes
    it, even by a copy that keeps the backup's time and size (ctime cannot be set)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _clock_floor() -> int:
    """Microseconds since the epoch: above any number an earlier run handed out, since no run hands out
    one per microsecond, and below 2**53 until the 23rd century."""
    return int(time.time() * 1_000_000)


def _record_chars(sid: str, row: SessionRow | None) -> int:
    """A queued session record's characters, as the events' lines are counted."""
    if row is None:
        return len(sid)
    return len(sid) + len(row.token) + len(row.nick) + sum(map(len, row.rooms))


def _minus_seq(row: tuple[int, str]) -> int:
    return -row[0]


def _held_open(path: str) -> bool:
    """Is the file at ``path`` one this process has open (Linux: /proc/self/fd)?"""
    try:
        st = os.stat(path)
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            held = os.stat(f"/proc/self/fd/{fd}")
            if (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def _is_io_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("readonly", "read-only", "disk", "unable to open", "i/o", "locked"))
