"""The terminal client's session, kept on disk while it runs: a client started again after it was killed
(a crash, `kill -9`, a battery gone flat, a terminal closed while the server was down) resumes its session
where the last one stopped, as a reconnect does: the same nick, what was said meanwhile, private messages
kept for it. Without this the server held the nick for its resume grace against its own user (`nick ann is
taken (held for a reconnecting user for 57 s more)`) and gave the private messages to nobody.

A JSON file per server address and nick (``$XDG_STATE_HOME/lanchat/sessions/``, mode 0600 in a directory
of mode 0700: the tokens are credentials). An entry whose client is still running (its pid) is not taken: a second
terminal joining with the same nick must get "nick taken", not the first one's session. A clean quit
forgets its entry; entries older than SAVED_MAX_AGE are dropped (the server forgets tokens after a day).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import psutil

from lanchat.protocol import messages as m

SAVED_MAX_AGE: Final = 24 * 3600.0  # seconds: as long as the server remembers an ended session's token
SAVED_MAX: Final = 64  # entries in the file (the oldest go)


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
    handled are taken for resends), and the rooms (joined again if the session has expired)."""

    token: str
    last_seq: int | None
    attempts: int
    next_id: int
    rooms: list[str]
    saved_at: float = 0.0
    pid: int = 0


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
        """The session saved under ``key``, unless it is too old or its client still runs."""
        now = time.time() if now is None else now
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            saved = Saved(**{k: v for k, v in entry.items() if k != "key"}) if entry.get("key") == key else None
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        if saved is None:
            return None
        checks = (
            isinstance(saved.token, str) and saved.token,
            saved.last_seq is None or type(saved.last_seq) is int,
            type(saved.attempts) is int and type(saved.next_id) is int,
            isinstance(saved.rooms, list) and all(isinstance(r, str) for r in saved.rooms),
        )
        if not all(checks) or not _fresh(saved.saved_at, now):
            return None
        if saved.pid != os.getpid() and _running(saved.pid):
            return None  # another client has it now
        return saved

    def save(self, key: str, saved: Saved, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        saved.saved_at, saved.pid = now, os.getpid()
        with contextlib.suppress(OSError):
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

    def forget(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self.path(key).unlink()

    def _prune(self, now: float) -> None:
        """Files of sessions older than SAVED_MAX_AGE go, and past SAVED_MAX the least recently saved."""
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for i, path in enumerate(files):
            if i >= SAVED_MAX or not 0 <= now - path.stat().st_mtime <= SAVED_MAX_AGE:
                with contextlib.suppress(OSError):
                    path.unlink()


def _fresh(saved_at: object, now: float) -> bool:
    return isinstance(saved_at, int | float) and 0 <= now - saved_at <= SAVED_MAX_AGE


def _running(pid: object) -> bool:
    """A lanchat client with this pid runs (not a process that got the number since)."""
    if type(pid) is not int or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and any("lanchat" in part for part in proc.cmdline())
    except (psutil.Error, OSError):
        return False
