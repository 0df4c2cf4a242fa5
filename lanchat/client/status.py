"""`lanchat status ADDRESS`: a server's per-process figures as a table, or JSON."""

from __future__ import annotations

import asyncio
import json
import sys

from lanchat.client.connection import EXIT_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, parse_address, request_once
from lanchat.errors import ConnectError, RemoteProtocolError


def run_status(address: str, *, json_output: bool) -> int:
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        print(f"lanchat: bad address {address!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        stats = asyncio.run(request_once(host, port, {"type": "stats"}))
    except (OSError, TimeoutError, UnicodeError, ConnectError) as exc:  # UnicodeError: not a name ("a..b")
        print(f"lanchat: cannot reach {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RemoteProtocolError as exc:
        print(f"lanchat: server refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if json_output:
        print(json.dumps(stats))
        return 0
    from rich.console import Console
    from rich.table import Table

    history = stats.get("history", {})
    title = (
        f"{stats.get('name')} ({host}:{stats.get('port', port)}): {stats.get('users')} users, "
        f"{stats.get('rooms')} rooms, seq {stats.get('seq')}"
    )
    table = Table(title=title)
    for col in ("role", "pid", "connections", "cpu %", "rss MiB", "msgs in", "msgs out"):
        table.add_column(col, justify="left" if col == "role" else "right")
    for p in stats.get("processes", []):
        table.add_row(
            str(p.get("role")),
            str(p.get("pid")),
            str(p.get("connections")),
            f"{p.get('cpu_percent', 0):.1f}",
            f"{p.get('rss', 0) / 2**20:.1f}",
            str(p.get("msgs_in")),
            str(p.get("msgs_out")),
        )
    console = Console()
    console.print(table)
    if history.get("degraded"):
        console.print(f"[bold red]history degraded:[/] {history.get('error')} ({history.get('pending')} pending)")
    return 0
