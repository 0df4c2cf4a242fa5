"""`lanchat status ADDRESS`: a server's per-process figures as a table, or JSON.

Every string the server sends (its name, process roles, the history error) is shown as rich ``Text``,
never parsed as markup (a name like ``[/oops] lab`` is printed as is, ``[red]x`` colours nothing), and
through ``plain.clean`` first (no control character reaches the terminal). A figure of the wrong type
is shown as ``?``. Why a server cannot be reached is said in words: refused, or no answer in time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Final

from lanchat.client.connection import (
    EXIT_ERROR,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    request_once,
    unreachable_reason,
)
from lanchat.config import host_port, parse_address
from lanchat.errors import ConnectError, RemoteProtocolError
from lanchat.protocol.plain import clean, count_of

STATUS_TIMEOUT: Final = 5.0  # seconds to connect and get the stats: a server that is up answers at once


def _number(value: object, scale: float = 1.0) -> str:
    """A figure with one decimal, or ``?`` if the server sent something else or nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return f"{value / scale:.1f}"


def _whole(value: object) -> str:
    """A count or an id, or ``?`` if the server sent something else or nothing."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def _shown(value: object) -> str:
    """A field as text, ``?`` if the server left it out."""
    return "?" if value is None else clean(value)


def _count(value: object, word: str) -> str:
    return count_of(value, word) if isinstance(value, int) and not isinstance(value, bool) else f"? {word}s"


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def run_status(address: str, *, json_output: bool) -> int:
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        print(f"lanchat: bad address {address!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        stats = asyncio.run(request_once(host, port, {"type": "stats"}, timeout=STATUS_TIMEOUT))
    except ConnectError as exc:  # it answered, but not as a lanchat server does (its words name the address)
        print(f"lanchat: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, TimeoutError, UnicodeError) as exc:  # UnicodeError: not a name ("a..b")
        print(
            f"lanchat: cannot reach {host_port(host, port)}: {unreachable_reason(exc, STATUS_TIMEOUT)}", file=sys.stderr
        )
        return EXIT_UNREACHABLE
    except RemoteProtocolError as exc:
        print(f"lanchat: server refused: {clean(exc)}", file=sys.stderr)
        return EXIT_ERROR
    if json_output:
        print(json.dumps(stats))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    history = _dict(stats.get("history"))
    users, rooms = _count(stats.get("users"), "user"), _count(stats.get("rooms"), "room")
    title = Text(
        f"{_shown(stats.get('name'))} ({host_port(host, clean(stats.get('port', port)))}): {users}, {rooms}, "
        f"seq {_shown(stats.get('seq'))}"
    )
    table = Table(title=title)
    for col in ("role", "pid", "connections", "cpu %", "rss MiB", "msgs in", "msgs out"):
        table.add_column(col, justify="left" if col == "role" else "right")
    processes = stats.get("processes")
    for p in map(_dict, processes if isinstance(processes, list) else []):
        table.add_row(
            Text(_shown(p.get("role"))),
            _whole(p.get("pid")),
            _whole(p.get("connections")),
            _number(p.get("cpu_percent")),
            _number(p.get("rss"), 2**20),
            _whole(p.get("msgs_in")),
            _whole(p.get("msgs_out")),
        )
    console = Console()
    console.print(table)
    if history.get("degraded"):
        console.print(
            Text.assemble(
                ("history degraded:", "bold red"),
                f" {_shown(history.get('error'))} ({_whole(history.get('pending'))} pending)",
            )
        )
    return 0
