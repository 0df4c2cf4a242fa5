"""Real processes and sockets for integration tests: a `lanchat serve` process and a raw JSON client.

Waiting is done on events (a log line, a frame), each with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

Frame = dict[str, Any]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port below the kernel's ephemeral range (32768+), so that no client socket's ephemeral
    port can take it between this check and the server's bind."""
    for _ in range(200):
        candidate = random.randrange(20_000, 32_000)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free port in 20000-32000")


class ServerProcess:
    """`python -m lanchat serve` on 127.0.0.1 with its own port and data directory."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        workers: int = 4,
        port: int | None = None,
        discovery: bool = False,
        launcher: tuple[str, ...] = ("-m", "lanchat"),  # python's arguments before `serve` (a wrapper: "-c", CODE)
    ):
        self.data_dir = data_dir
        self.launcher = launcher
        self.port = port or free_port()
        self.workers = workers
        self.args = list(args)
        self.discovery = discovery
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        cmd = [
            sys.executable, *self.launcher, "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--data-dir", str(self.data_dir), "--name", f"test-{self.port}",
        ]  # fmt: skip
        if not self.discovery:
            cmd.append("--no-discovery")
        cmd += self.args
        env = {**os.environ, "LANCHAT_INTERFACE": "lo", "PYTHONUNBUFFERED": "1"}
        self.lines = []
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        self.wait_log(r"serving on", timeout)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> str:
        """Wait for a log line matching ``pattern`` (searching from line index ``start``)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if rx.search(line):
                        return line
                remaining = deadline - time.monotonic()
                exited = self.proc is not None and self.proc.poll() is not None
                if remaining <= 0 or (exited and not self._reader_alive()):
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(min(remaining, 0.2))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def mark(self) -> int:
        """The current end of the log, for wait_log(start=...) to see only what comes after."""
        with self._cond:
            return len(self.lines)

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        """Stop the server whatever state it is in: SIGTERM (fast, clean), then SIGKILL for anything left."""
        if self.proc is None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for child in children:  # workers exit with their main process; this catches a stuck one
            try:
                child.kill()
            except psutil.Error:
                pass
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stats(self) -> Frame:
        with Client(self.port) as c:
            c.send({"type": "stats"})
            return c.expect("stats")

    def worker_pids(self) -> list[int]:
        return [p["pid"] for p in self.stats()["processes"] if p["role"].startswith("worker")]


MakeServer = Callable[..., ServerProcess]  # the make_server fixture (conftest.py)


class Client:
    """A raw JSON Lines client on a blocking socket; every wait has a deadline."""

    def __init__(self, port: int, nick: str | None = None, *, host: str = "127.0.0.1", **hello: Any) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        self.seen: list[Frame] = []
        self.server = self.recv()  # the server's first line
        if nick is not None:
            self.send({"type": "hello", "nick": nick, **hello})
            self.welcome = self.expect("welcome")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, obj: Frame) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_line(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no line from server")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def recv(self, timeout: float = 5.0) -> Frame:
        frame = json.loads(self.recv_line(timeout))
        assert isinstance(frame, dict)
        self.seen.append(frame)
        return frame

    def expect(self, match: str | Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        """Read frames until one matches (a type name or a predicate); earlier ones stay in ``seen``."""
        pred = (lambda f: f.get("type") == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.0, deadline - time.monotonic()))
            if pred(frame):
                return frame

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Read until EOF (True) or the deadline (False)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except TimeoutError:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def run_cli(*args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LANCHAT_INTERFACE": "lo"}
    return subprocess.run(
        [sys.executable, "-m", "lanchat", *args], input=input, capture_output=True, text=True, timeout=timeout, env=env
    )


class JoinProcess:
    """`lanchat join ADDRESS --json` in piped mode; stdout frames are collected by a reader thread."""

    def __init__(self, port: int, nick: str, *args: str, input_lines: list[str] | None = None) -> None:
        env = {**os.environ, "LANCHAT_INTERFACE": "lo", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanchat", "join", f"127.0.0.1:{port}", "--nick", nick, "--json", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.frames: list[Frame] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._threads:
            t.start()
        if input_lines is not None:
            self.write_lines(input_lines)

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            frame = json.loads(line)
            with self._cond:
                self.frames.append(frame)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.errors.append(line.rstrip("\n"))
                self._cond.notify_all()

    def write_lines(self, lines: list[str]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines))
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait_for(self, pred: Callable[[list[Frame]], bool], timeout: float = 10.0) -> list[Frame]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.frames):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out; stderr: {self.errors[-10:]}; last frames: {self.frames[-3:]}")
                self._cond.wait(min(remaining, 0.2))
            return list(self.frames)

    def texts(self, sender: str | None = None) -> list[str]:
        with self._cond:
            return [f["text"] for f in self.frames if f.get("type") == "msg" and sender in (None, f.get("from"))]

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for t in self._threads:
            t.join(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
