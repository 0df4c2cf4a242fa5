"""The terminal client's session, kept on disk while it runs: a client started again after it was killed
(a crash, `kill -9`, a battery gone flat, a terminal closed while the server was down) resumes its session
where the last one stopped, as a reconnect does: the same nick, what was said meanwhile, private messages
kept for it. Without this the server held the nick for its resume grace against its own user (`nick ann is
taken (held for a reconnecting user for 57 s more)`) and gave the private messages to nobody.

One JSON file (``$XDG_STATE_HOME/lanchat/sessions.json``, mode 0600: the tokens are credentials), an entry
per server address and nick. An entry whose client is still running (its pid) is not taken: a second
terminal joining with the same nick must get "nick taken", not the first one's session. A clean quit
forgets its entry; entries older than SAVED_MAX_AGE are dropped (the server forgets tokens after a day).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

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
    """The file of saved sessions. Every failure to read or write it is ignored: it is a convenience, and
    a client without it works as before (a new session)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "sessions.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sessions.", suffix=".tmp")  # (mode 0600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)  # whole or not at all: a kill mid-write leaves the last one
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def load(self, key: str, *, now: float | None = None) -> Saved | None:
        """The session saved under ``key``, unless it is too old or its client still runs."""
        now = time.time() if now is None else now
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            saved = Saved(**entry)
        except TypeError:
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
        data = {k: v for k, v in self._read().items() if isinstance(v, dict) and _fresh(v.get("saved_at"), now)}
        data.pop(key, None)
        data[key] = asdict(saved)
        while len(data) > SAVED_MAX:  # (insertion order: the least recently saved first)
            del data[next(iter(data))]
        self._write(data)

    def forget(self, key: str) -> None:
        data = self._read()
        if data.pop(key, None) is not None:
            self._write(data)


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
