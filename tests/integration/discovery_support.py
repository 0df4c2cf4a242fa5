"""Helpers for the discovery integration tests: free ports, announcer/server/CLI processes, bounded waits.

Every process started here is stopped by its context manager (SIGTERM, then SIGKILL after a bound), and
every wait has a deadline. Network safety: callers pass ``--interface lo`` (loopback) unless they run the
command inside a network namespace of their own (test_netns_lan.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lanchat.config import DiscoveryConfig

T = TypeVar("T")

PROCESS_START_TIMEOUT = 15.0  # seconds for a Python process to import lanchat and bind (slow CI machines)
PROCESS_STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL


def loopback_config(port: int, **over: object) -> DiscoveryConfig:
    """Discovery on loopback only, on a port of the test's own (beacons every 10 s unless ``over`` says)."""
    fields: dict[str, object] = {"interface": ("lo",), "discovery_port": port, "beacon_interval": 10.0}
    fields.update(over)
    return DiscoveryConfig(**fields)  # type: ignore[arg-type]


def free_udp_port() -> int:
    """A UDP port nobody has bound right now, chosen below the kernel's ephemeral range (32768+): a port
    the kernel picked would be free again the moment we close it, and the next ephemeral bind (a test's
    own receiving socket) could be handed the very same port."""
    for _ in range(200):
        candidate = random.randrange(20_000, 32_000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError("no free UDP port in 20000-32000")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_async(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run ``coro`` in a fresh loop, failing the test if it takes longer than ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` every loop tick or so (for counters that have no event), at most ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def until_count(get: Callable[[], int], at_least: float, timeout: float = 5.0, what: str = "count") -> None:
    """Wait until ``get()`` reaches ``at_least`` (a counter of datagrams read, replies sent ...)."""
    await until(lambda: get() >= at_least, timeout, f"{what} >= {at_least}")


class LineReader:
    """Reads a child's stdout line by line with a deadline (no thread: a selector on the pipe)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self.lines: list[str] = []

    def close(self) -> None:
        self._sel.close()

    def readline(self, timeout: float) -> str | None:
        """The next line, or None at EOF; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from {self.proc.args!r} within {timeout}s; got {self.lines!r}")
            if not self._sel.select(left):
                continue
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode()
        self.lines.append(text)
        return text

    def json(self, timeout: float) -> dict[str, Any]:
        """The next line that is a JSON object (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0.001))
            if line is None:
                raise AssertionError(f"EOF from {self.proc.args!r}; got {self.lines!r}")
            if line.startswith("{"):
                obj: dict[str, Any] = json.loads(line)
                return obj


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(PROCESS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(PROCESS_STOP_TIMEOUT)


@contextlib.contextmanager
def spawn(
    cmd: Sequence[str], *, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    """A child with piped stdout (stderr inherited for pytest to capture); always stopped on exit."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=None, text=True, env=env, start_new_session=True)
    reader = LineReader(proc)
    try:
        yield proc, reader
    finally:
        _stop(proc)
        reader.close()
        if proc.stdout is not None:
            proc.stdout.close()


def announcer_cmd(
    *, name: str, port: int, data_dir: Path, discovery_port: int, interface: str = "lo", extra: Sequence[str] = ()
) -> list[str]:
    return [
        sys.executable, "-m", "lanchat.discovery.announcer",
        "--name", name, "--port", str(port), "--data-dir", str(data_dir),
        "--interface", interface, "--discovery-port", str(discovery_port), *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def announcer_process(
    *, name: str, port: int, data_dir: Path, discovery_port: int, extra: Sequence[str] = (), prefix: Sequence[str] = ()
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """The standalone announcer, ready (its ready line parsed), on loopback unless ``prefix`` says otherwise."""
    cmd = [*prefix, *announcer_cmd(name=name, port=port, data_dir=data_dir, discovery_port=discovery_port, extra=extra)]
    with spawn(cmd) as (proc, reader):
        ready = reader.json(PROCESS_START_TIMEOUT)
        assert ready["event"] == "ready", ready
        yield proc, ready


def lanchat_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lanchat", *args]


def run_cli(
    args: Sequence[str], timeout: float = 20.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, env=env)
