"""The current room: where a typed line without a command goes. Sans-IO, shared by both faces of
`lanchat join` (the terminal UI and piped mode), so that /join, /part and /switch mean the same in each."""

from __future__ import annotations

from collections.abc import Sequence

from lanchat.protocol import messages as m


class CurrentRoom:
    def __init__(self, room: str | None) -> None:
        self.room = room
        self._before_join: str | None = None  # the current room before the last /join (back to it if refused)

    def typed(self, cmd: m.Request, joined: Sequence[str]) -> None:
        """A request the user typed: /join makes its room current at once (lines typed next go there), /part
        of the current room moves to the last other room."""
        if isinstance(cmd, m.Join):
            if self.room in joined:
                self._before_join = self.room
            self.room = cmd.room
        elif isinstance(cmd, m.Part) and cmd.room == self.room:
            others = [r for r in joined if r != cmd.room]
            self.room = others[-1] if others else None

    def switch(self, room: str, joined: Sequence[str]) -> str | None:
        """/switch ROOM (one we are in), or without a room the next joined one (F2). None if done, else why not."""
        if room:
            if room not in joined:
                return f"you are not in #{room}: /join {room}"
            self.room = room
            return None
        if not joined:
            return "you are in no room: /join ROOM"
        at = list(joined).index(self.room) if self.room is not None and self.room in joined else -1
        self.room = joined[(at + 1) % len(joined)]
        return None

    def refused(self, code: object, joined: Sequence[str]) -> None:
        """An error from the server: if it refused the /join that made the current room, go back."""
        if code in (m.Err.TOO_MANY_ROOMS, m.Err.BAD_ROOM) and self.room not in joined:
            back = self._before_join
            self.room = back if back in joined else joined[-1] if joined else None
