"""The terminal client's session, kept on disk while it runs: a client started again after it was killed
(a crash, `kill -9`, a battery gone flat, a terminal closed while the server was down) resumes its session
where the last one stopped, as a reconnect does: the same nick, what was said meanwhile, private messages
kept for it. Without this the server held the nick for its resume grace against its own user (`nick ann is
taken (held for a reconnecting user for 57 s more)`) and gave the private messages to nobody.

A JSON file per server address and nick (the session's nick as it is now), in
``$XDG_STATE_HOME/lanchat/sessions/`` (mode 0600 in a directory of mode 0700: the tokens are credentials).
A file is taken only on the machine (and in the process namespace) that wrote it, and not while the
client that wrote it still runs: a second terminal joining with the same nick, here or on another machine
sharing the home directory, must get "nick taken", not the first one's session. A clean quit forgets its
file; files older than SAVED_MAX_AGE go (the server forgets tokens after a day).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import psutil

from lanchat.errors import RemoteProtocolError
from lanchat.protocol import messages as m

SAVED_MAX_AGE: Final = 24 * 3600.0  # seconds: as long as the server remembers an ended session's token
SAVED_MAX: Final = 64  # files kept (the least recently saved go)
# A restored run's hellos count on from the saved count with this much to spare: a save that failed (a
# full disk) leaves the count behind what the server saw, and a resume whose attempt is not above the last
# one is refused as a hello held back by the network. No client sends this many hellos between two saves.
RESTORED_ATTEMPT_GAP: Final = 1000
CLAIM_WAIT: Final = 1.0  # seconds a start waits while another start claims a saved session (ms of work)


def state_dir() -> Path:
    """The user's state directory (XDG on Linux)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # unset, empty, or relative: ignored, as the XDG spec says
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "lanchat"


@dataclass(slots=True)
class Saved:
    """What a resume needs: the token, the last event seen, the hellos sent (the server refuses a resume
    whose attempt is not above the last one), the next post id (ids at or below the last one the server
    handled are taken for resends), the rooms (joined again if the session has expired) and the current
    one. ``writer``: which process wrote it (machine, process namespace, pid and its start time)."""

    token: str
    last_seq: int | None
    attempts: int
    next_id: int
    rooms: list[str]
    room: str = ""
    saved_at: float = 0.0
    writer: list[Any] | None = None


def entry_key(address: str, nick: str) -> str:
    return f"{address} {m.nick_key(nick)}"


class SessionFile:
    """The saved sessions: a file each (two clients of one user, with two nicks, save at once without taking
    each other's), named by a hash of its key. Every failure to read or write one is ignored: it is a
    convenience, and a client without it works as before (a new session)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or state_dir() / "sessions"

    def path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def load(self, key: str, *, now: float | None = None) -> Saved | None:
        """The session saved under ``key``, unless it is too old, damaged, another machine's, or its
        client still runs."""
        now = time.time() if now is None else now
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            saved = Saved(**{k: v for k, v in entry.items() if k != "key"}) if entry.get("key") == key else None
            if saved is None or not _valid(saved) or not 0 <= now - saved.saved_at <= SAVED_MAX_AGE:
                return None
            writer = saved.writer or []
            if writer[:2] != _machine() or _running(writer[2:]):  # another machine's, or its client runs on
                return None
        except (OSError, ValueError, TypeError, AttributeError, RecursionError, OverflowError):  # (nested 100,000
            return None  # deep; a number too large for a float: a damaged file is no session)
        return saved

    def take(self, key: str, *, now: float | None = None) -> Saved | None:
        """``load``, and the file marked as this process's before another start can load it: two runs
        started at the same instant (two terminals, a script) found the same dead writer's file and resumed
        one session twice, the second taking it from the first. Under a lock on the directory, held for
        the read and the rewrite only; a start that cannot have it within CLAIM_WAIT (its holder stopped)
        takes nothing: a new session, never a shared one."""
        if not self.path(key).exists():
            return None
        try:
            lock = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # a directory this user cannot write: no file of it can be claimed (or saved)
            return self.load(key, now=now)
        try:
            deadline = time.monotonic() + CLAIM_WAIT
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return None
                    time.sleep(0.005)  # (flock has no timeout; the holder's work is a read and a write)
                except OSError:  # a file system without locks (some network ones): as before, unclaimed
                    return self.load(key, now=now)
            if (saved := self.load(key, now=now)) is None:
                return None
            # ours now, its time kept ("left at", its age); unmarked (a full disk), another start could take
            # it too the moment the lock is let go: a new session, never a shared one
            return saved if self.save(key, saved, now=saved.saved_at) else None
        finally:
            os.close(lock)  # (which releases the lock)

    def save(self, key: str, saved: Saved, *, now: float | None = None) -> bool:
        """Write ``saved`` under ``key``; False if it could not be written."""
        saved.saved_at = time.time() if now is None else now
        saved.writer = [*_machine(), *_me()]
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")  # (mode 0600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"key": key, **asdict(saved)}, f)
                os.replace(tmp, self.path(key))  # whole or not at all: a kill mid-write leaves the last one
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._prune(time.time())  # (by the files' times, on the system's clock)
        except OSError:
            return False
        return True

    def forget(self, key: str) -> None:
        """Remove the file of ``key`` if this process wrote it last (a run that joined with the nick since,
        here, has its own session in it)."""
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, RecursionError):
            path = self.path(key)
            if json.loads(path.read_text(encoding="utf-8")).get("writer") == [*_machine(), *_me()]:
                path.unlink()

    def _prune(self, now: float) -> None:
        """Files of sessions older than SAVED_MAX_AGE go, and past SAVED_MAX the least recently saved (a
        file another client removed meanwhile is no failure of this one's save)."""
        dated = []
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(OSError):
                dated.append((path.stat().st_mtime, path))
        for i, (mtime, path) in enumerate(sorted(dated, reverse=True)):
            if i >= SAVED_MAX or not 0 <= now - mtime <= SAVED_MAX_AGE:
                with contextlib.suppress(OSError):
                    path.unlink()


def _valid(saved: Saved) -> bool:
    """A file's fields as this client writes them (a damaged or edited one is no session: a bad room name,
    a token too long for the server, made every start fail): the hello a restored run would send must be one
    the server takes (the protocol's own parser decides), and the rest within bounds."""
    hello = {"type": "hello", "nick": "x", "rooms": saved.rooms, "token": saved.token, "last_seq": saved.last_seq}
    hello["attempt"] = saved.attempts + RESTORED_ATTEMPT_GAP + 1 if type(saved.attempts) is int else None
    try:
        m.parse_obj(hello)
        room_ok = saved.room == "" or m.check_room(saved.room) == saved.room
    except (RemoteProtocolError, TypeError):
        return False
    return bool(
        isinstance(saved.token, str)  # (None passes the parser: absent)
        and type(saved.attempts) is int
        and saved.attempts >= 0
        and type(saved.next_id) is int
        and 1 <= saved.next_id <= m.MAX_ID - RESTORED_ATTEMPT_GAP
        and room_ok
        and isinstance(saved.saved_at, int | float)
        and math.isfinite(saved.saved_at)
        and (saved.writer is None or isinstance(saved.writer, list))
    )


def _machine() -> list[Any]:
    """This machine and process namespace: a home directory shared by several machines (NFS), or mounted
    into containers, holds files whose pids mean nothing here."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return [socket.gethostname(), namespace]


def _me() -> list[Any]:
    """This process: its pid and when it started (a pid alone may be another process's by now)."""
    try:
        return [os.getpid(), _start_of(os.getpid())]
    except psutil.Error:
        return [os.getpid(), ""]


def _start_of(pid: int) -> str:
    """When process ``pid`` started, as a text no step of the wall clock moves (psutil's start time does: it
    counts from the boot time, which Linux moves with the clock): the boot's id and the clock ticks since
    the boot (/proc), else psutil's time."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (the name may hold ')')
    except (OSError, IndexError):
        return f"{psutil.Process(pid).create_time():.3f}"


def _running(writer: list[Any]) -> bool:
    """The process that wrote a file (pid and start) runs, and is not this one."""
    if len(writer) != 2 or type(writer[0]) is not int or writer[0] == os.getpid():
        return False
    try:
        return bool(psutil.Process(writer[0]).status() != psutil.STATUS_ZOMBIE and _start_of(writer[0]) == writer[1])
    except (psutil.Error, OSError):
        return False
