"""Warnings that come in storms, logged once per interval with a count (both processes use it)."""

from __future__ import annotations

import logging
import time

from lanchat import const


class Throttled:
    """Warnings that come in storms (a connection each): the first is logged, then those like it (same
    key) are only counted until ``interval`` seconds have passed, when ``flush`` (the supervisor's tick)
    logs how many there were, the last of them as the example: one line per interval while it lasts, and
    a storm that stopped is told too."""

    def __init__(self, log: logging.Logger, interval: float = const.LOG_REPEAT_INTERVAL) -> None:
        self.log = log
        self.interval = interval
        self._quiet_until: dict[str, float] = {}
        self._held: dict[str, tuple[int, str, tuple[object, ...]]] = {}  # key -> (count, the last one)

    def warning(self, key: str, msg: str, *args: object, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._quiet_until.get(key, -1.0):
            count = self._held[key][0] + 1 if key in self._held else 1
            self._held[key] = (count, msg, args)
            return
        self._quiet_until[key] = now + self.interval
        self.log.warning(msg, *args)

    def flush(self, now: float) -> None:
        for key, until in list(self._quiet_until.items()):
            if now < until:
                continue
            held = self._held.pop(key, None)
            if held is None:
                del self._quiet_until[key]  # quiet for a whole interval: the next one is logged at once
                continue
            count, msg, args = held
            self._quiet_until[key] = now + self.interval  # this line counts as the one logged
            self.log.warning(msg + " (%d like it in the last %.0f s)", *args, count, now - until + self.interval)
