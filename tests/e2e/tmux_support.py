"""A real terminal for end-to-end tests: a detached tmux server on its own socket, driven by send-keys and
read by capture-pane. Every wait polls the screen with a deadline; ``close`` kills the tmux server and makes
sure the program in the pane is gone.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

TMUX = shutil.which("tmux")
BASH = shutil.which("bash")
POLL = 0.05  # seconds between screen captures
CONF = "set -g status off\nset -g remain-on-exit on\nset -g history-limit 2000\n"


class Tmux:
    """One tmux server (socket ``lanchat-test-<random>``) with one window running one command."""

    def __init__(self, tmp: Path, *, width: int = 120, height: int = 30) -> None:
        assert TMUX is not None
        self.socket = f"lanchat-test-{secrets.token_hex(6)}"
        self.width, self.height = width, height
        self.conf = tmp / f"{self.socket}.conf"
        self.conf.write_text(CONF)  # no user config; no tmux status bar; keep the pane after the program exits
        self.status_file = tmp / f"{self.socket}.status"
        self.pane_pid: int | None = None
        self.socket_path: Path | None = None

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        done = subprocess.run(
            [TMUX, "-u", "-f", str(self.conf), "-L", self.socket, *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=10,
        )
        if done.returncode != 0:
            raise AssertionError(f"tmux {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, *argv: str) -> None:
        """Run ``python -m lanchat ARGV...`` in a new detached session (loopback-only environment)."""
        self._session(self._command_line(argv))

    def start_in_shell(self, *argv: str) -> None:
        """The same, typed into an interactive bash (job control: Ctrl-Z stops the program, `fg` resumes it).
        A stop ends a command list as an exit does: `resume` records the exit status."""
        assert BASH is not None
        self._session(shlex.join([BASH, "--norc", "--noprofile", "-i"]))
        self.type(self._command_line(argv, status=False))
        self.keys("Enter")

    def resume(self) -> None:
        """`fg` in the shell of ``start_in_shell``."""
        self.type("fg")
        self.keys("Enter")

    def shell_exit_status(self, timeout: float = 8.0) -> int:
        """The exit status of the program ``start_in_shell`` ran, once it has ended (the shell's `$?`)."""
        assert self.pane_pid is not None
        shell, deadline = psutil.Process(self.pane_pid), time.monotonic() + timeout
        while any(_alive(p) for p in shell.children()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the program did not exit; screen:\n{self.screen()}")
            time.sleep(POLL)
        self.type(f"echo $? > {shlex.quote(str(self.status_file))}")
        self.keys("Enter")
        return self.exit_status(timeout)

    def _command_line(self, argv: tuple[str, ...], *, status: bool = True) -> str:
        env = {"LANCHAT_INTERFACE": "lo", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        cmd = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "lanchat", *argv])
        # The shell in the pane records the exit status in a file: tmux 3.3 sometimes leaves a program that
        # exited unreaped (pane_dead but no pane_dead_status), so the status is not asked from tmux.
        return f"{cmd}; echo $? > {shlex.quote(str(self.status_file))}" if status else cmd

    def _session(self, line: str) -> None:
        self.tmux(
            "new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height), "-c", os.getcwd(), line,
        )  # fmt: skip
        pane_pid, socket_path = self.tmux("display-message", "-p", "-t", "t", "#{pane_pid} #{socket_path}").split()
        self.pane_pid, self.socket_path = int(pane_pid), Path(socket_path)

    def keys(self, *keys: str) -> None:
        """Named keys (Enter, Tab, C-d...) or text, as tmux send-keys reads them."""
        self.tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        """Literal text, character by character as a person types it (no key names)."""
        self.tmux("send-keys", "-t", "t", "-l", text)

    def screen(self, *, escapes: bool = False) -> str:
        args = ["capture-pane", "-p", "-t", "t"] + (["-e"] if escapes else [])
        return self.tmux(*args)

    def lines(self) -> list[str]:
        return self.screen().splitlines()

    def status_line(self) -> str:
        """The client's status line (bottom toolbar): the last non-empty screen line, if it is one. Empty while
        the client prints above its prompt (it erases the prompt and the status line, prints, redraws them):
        so read it with ``wait_status``."""
        lines = [line.rstrip() for line in self.lines() if line.strip()]
        return lines[-1] if lines and lines[-1].endswith("/help") else ""

    def wait_status(self, *parts: str, timeout: float = 8.0) -> str:
        """Wait until the status line holds every one of ``parts``; return it."""
        found = [""]

        def check(_: str) -> bool:
            found[0] = self.status_line()
            return all(p in found[0] for p in parts)

        self.wait(check, f"a status line with {parts}", timeout)
        return found[0]

    def prompt_line(self) -> str:
        """The input line: the last screen line that starts with a room prompt."""
        found = [line for line in self.lines() if line.startswith(("#", "(no room)>"))]
        return found[-1].rstrip() if found else ""

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = 8.0) -> str:
        """Poll the screen until ``cond(screen)``; fail with the last screen after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if cond(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")
            time.sleep(POLL)

    def wait_for(self, text: str, timeout: float = 8.0) -> str:
        return self.wait(lambda s: text in s, repr(text), timeout)

    def wait_prompt(self, text: str, timeout: float = 8.0) -> None:
        deadline = time.monotonic() + timeout
        while self.prompt_line() != text.rstrip():
            if time.monotonic() > deadline:
                raise AssertionError(f"prompt line is {self.prompt_line()!r}, not {text!r}; screen:\n{self.screen()}")
            time.sleep(POLL)

    def exit_status(self, timeout: float = 8.0) -> int:
        """Wait for the program to exit and return its exit status."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.status_file.read_text() if self.status_file.exists() else ""
            if text.endswith("\n"):
                return int(text)
            if time.monotonic() > deadline:
                raise AssertionError(f"the program did not exit; screen:\n{self.screen()}")
            time.sleep(POLL)

    def title(self) -> str:
        return self.tmux("display-message", "-p", "-t", "t", "#{pane_title}").strip()

    def close(self) -> None:
        """Kill the tmux server (SIGHUP to the pane) and make sure the program in the pane is gone. Its
        process tree is taken first: once the pane's shell is gone, the program would be nobody's child."""
        procs: list[psutil.Process] = []
        if self.pane_pid is not None:
            try:
                proc = psutil.Process(self.pane_pid)
                procs = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                pass
        try:
            self.tmux("kill-server")
        except (AssertionError, subprocess.TimeoutExpired):
            pass
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)  # tmux leaves its socket file behind
        deadline = time.monotonic() + 5  # a client's goodbye on SIGHUP may try a server for 2 s
        while any(_alive(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(POLL)
        for p in procs:
            if _alive(p):
                try:
                    p.kill()
                except psutil.Error:
                    pass


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (tmux's children are reaped by whoever adopts them, maybe late)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
