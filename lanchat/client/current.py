"""The current room: where a typed line without a command goes. Sans-IO, shared by both faces of
`lanchat join` (the terminal UI and piped mode), so that /join, /part and /switch mean the same in each."""

from __future__ import annotations

from collections.abc import Sequence

from lanchat.protocol import messages as m


class CurrentRoom:
    def __init__(self, room: str | None) -> None:
        self.room = room
        self._before_join: str | None = None  # the current room before the last /join (back to it if refused)
        # Rooms /joined that the server has not confirmed yet: /switch may go there (a script's
        # "/join dev, /switch lobby, /switch dev, text" must not send the text to #lobby). Once per /join
        # typed: one told not done after a resume must not take along the same /join typed again offline.
        self._pending: list[str] = []
        # Rooms /parted that the server has not let go yet: no longer a place for lines (a script's "/join dev,
        # /part lobby, /part, text" must not send the text to #lobby, left before it).
        self._parting: list[str] = []
        self._undo: tuple[m.Request, str | None, str | None, list[str], list[str]] | None = None  # see not_sent

    def typed(self, cmd: m.Request, joined: Sequence[str]) -> None:
        """A request the user typed: /join makes its room current at once (lines typed next go there), /part
        of the current room moves to the last other room."""
        self._confirmed(joined)
        self._undo = (cmd, self.room, self._before_join, list(self._pending), list(self._parting))
        if isinstance(cmd, m.Join):
            if self.room in joined and self.room not in self._parting:
                self._before_join = self.room
            self.room = cmd.room
            if cmd.room in self._parting:
                self._parting.remove(cmd.room)
            if cmd.room not in joined:
                self._pending.append(cmd.room)
        elif isinstance(cmd, m.Part):
            self._pending = [r for r in self._pending if r != cmd.room]
            if cmd.room in joined and cmd.room not in self._parting:
                self._parting.append(cmd.room)
            if cmd.room == self.room:
                others = [r for r in self.rooms(joined) if r != cmd.room]
                self.room = others[-1] if others else None

    def not_sent(self, cmd: m.Request) -> None:
        """The client could not take ``cmd`` (1,000 commands already waiting for a reconnect): what
        ``typed`` did for it is undone, so lines typed next do not go to a room never asked for. Only for the
        last one typed: once more were typed after it (a paste), they were meant for the room it made current."""
        if self._undo is not None and self._undo[0] is cmd:
            _, self.room, self._before_join, self._pending, self._parting = self._undo
        self._undo = None

    def _confirmed(self, joined: Sequence[str]) -> None:
        self._pending = [r for r in self._pending if r not in joined]
        self._parting = [r for r in self._parting if r in joined]

    def rooms(self, joined: Sequence[str]) -> list[str]:
        """The rooms we are in, or asked to be in, but not asked to leave (what /switch and /part ROOM may
        name)."""
        self._confirmed(joined)
        return [*(r for r in joined if r not in self._parting), *dict.fromkeys(self._pending)]

    def switch(self, room: str, joined: Sequence[str]) -> str | None:
        """/switch ROOM (one we are in), or without a room the next joined one (F2). None if done, else why not."""
        rooms = self.rooms(joined)
        if room:
            if room not in rooms:
                return f"you are not in #{room}: /join {room}"
            self.room = room
            return None
        if not rooms:
            return "you are in no room: /join ROOM"
        at = rooms.index(self.room) if self.room is not None and self.room in rooms else -1
        self.room = rooms[(at + 1) % len(rooms)]
        return None

    def refused(self, code: object, joined: Sequence[str], request: object = None) -> None:
        """An error from the server: if it refused the /join that made the current room, go back.
        ``request``: what a NOT_DONE error (the client's own, after a resume) says was not done."""
        if code == m.Err.NOT_DONE:  # it says which change: only a /join's room is let go
            if not (isinstance(request, dict) and request.get("type") == "join"):
                return
            if request.get("room") in self._pending:  # that /join's: one typed again since stays
                self._pending.remove(request["room"])
        elif code in (m.Err.TOO_MANY_ROOMS, m.Err.BAD_ROOM):
            # A join was refused, and errors do not say which room: none still unanswered is trusted any more
            # (/switch to one then says "not in #x"; one the server confirms later is in ``joined`` anyway).
            self._pending.clear()
        else:
            return
        rooms = self.rooms(joined)
        if self.room not in rooms:
            back = self._before_join
            self.room = back if back in rooms else rooms[-1] if rooms else None
