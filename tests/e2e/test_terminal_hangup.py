"""`lanchat join` whose terminal goes away (the window closed, the ssh session dropped) while messages
arrive: it must still say goodbye (the nick is free at once) and exit 129, not raise from a redraw to the
dead terminal (EIO) or wait forever for a print that failed. A pty of our own, not tmux: closing its
master is exactly what a terminal emulator does, and in that order (the hang-up, then the SIGHUP)."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from support import Client, Frame, ServerProcess

PROMPT_SHOWN = b"\x1b[?2004h"  # bracketed paste on: the prompt is up, reading the keyboard
EXIT_DEADLINE = 10.0  # seconds for the client to end after the hang-up (its goodbye takes milliseconds)


def _read_until(fd: int, marker: bytes, timeout: float = 15.0) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{marker!r} never appeared on the terminal: {seen[-2000:]!r}")
        if select.select([fd], [], [], remaining)[0]:
            seen += os.read(fd, 65536)
    return seen


def _exit_code(pid: int) -> int:
    deadline = time.monotonic() + EXIT_DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the client did not exit after its terminal went away")
        time.sleep(0.05)


@pytest.mark.parametrize("round_", range(3))  # the hang-up meets the printer at a different moment each time
def test_a_client_whose_terminal_closes_says_goodbye(server: ServerProcess, round_: int) -> None:
    with Client(server.port, "bob") as bob:
        pid, master = pty.fork()
        if pid == 0:  # the child: stdin, stdout and stderr are the pty, which is its controlling terminal
            try:
                argv = [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{server.port}", "--nick", "carol"]
                # no answers to cursor position requests here: prompt_toolkit need not ask
                os.execve(sys.executable, argv, {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1"})
            finally:
                os._exit(127)
        try:
            screen = _read_until(master, b"2 here: bob, carol")
            if PROMPT_SHOWN not in screen.partition(b"2 here: bob, carol")[2]:
                _read_until(master, PROMPT_SHOWN)
            bob.expect(lambda f: f.get("type") == "join" and f.get("nick") == "carol")
            for i in range(40 * round_):  # printed above carol's prompt while her terminal goes away
                bob.send({"type": "msg", "room": "lobby", "text": f"line {i} " + "x" * 60})
        finally:
            os.close(master)  # the window closes: the kernel hangs the terminal up and sends SIGHUP
        for i in range(40):
            bob.send({"type": "msg", "room": "lobby", "text": f"after {i}"})
        assert _exit_code(pid) == 128 + signal.SIGHUP

        def carol_quit(f: Frame) -> bool:
            return f.get("type") == "quit" and f.get("nick") == "carol"

        bob.expect(carol_quit)  # a goodbye, not a dropped connection held for --resume-grace
