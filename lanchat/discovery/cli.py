"""`lanchat discover`: list the servers on the LAN, once or live.

Owns the presentation of discovery results: a rich table on a terminal, plain text when piped, one JSON
object per line with ``--json``; with ``--watch`` a live table (or one line per event) until Ctrl-C.
Exit status: 0 if at least one server was found (always 0 for a watch ended by Ctrl-C), 1 if none,
2 if discovery could not run at all (no UDP socket). No discovery logic here: that is browser.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lanchat.config import DiscoveryConfig
from lanchat.discovery.browser import ServerRecord, TableEvent, browse, watch

EXIT_FOUND = 0
EXIT_NONE = 1
EXIT_ERROR = 2


def run_discover(
    config: DiscoveryConfig, *, timeout: float, probe: tuple[str, ...], watch: bool, json_output: bool
) -> int:
    """Run `lanchat discover`; returns the exit status (see the module docstring)."""
    _setup_logging()
    try:
        if watch:
            asyncio.run(_watch(config, probe=probe, json_output=json_output))
            return EXIT_FOUND
        records = asyncio.run(browse(config, timeout=timeout, probe=probe))
    except KeyboardInterrupt:
        return EXIT_FOUND if watch else EXIT_NONE
    except OSError as exc:
        print(f"lanchat discover: cannot use UDP: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if json_output:
        for record in records:
            print(json.dumps(record.as_dict()), flush=True)
    elif records:
        Console().print(render_table(records))
    if not records:
        print(
            f"no lanchat server found within {timeout:g}s "
            "(hint: --timeout, --interface, --probe HOST; see docs/discovery.md)",
            file=sys.stderr,
        )
        return EXIT_NONE
    return EXIT_FOUND


def _setup_logging() -> None:
    """Warnings (with their hints) on stderr; LANCHAT_LOG_LEVEL=debug also shows every kind of ignored datagram."""
    if logging.getLogger().handlers:
        return
    level = os.environ.get("LANCHAT_LOG_LEVEL", "warning").upper()
    if level not in logging.getLevelNamesMapping():
        level = "WARNING"
    logging.basicConfig(level=level, format="lanchat discover: %(levelname)s %(message)s", stream=sys.stderr)


def _latency(record: ServerRecord) -> str:
    return "-" if record.latency_ms is None else f"{record.latency_ms:.1f} ms"


def render_table(records: Iterable[ServerRecord]) -> Table:
    """The servers as a rich table (names as plain Text: a name from the LAN is never markup)."""
    table = Table(title=None, show_edge=False, header_style="bold")
    for column in ("name", "address", "users", "rooms", "version", "latency"):
        justify = "right" if column in {"users", "rooms", "version", "latency"} else "left"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in records:
        table.add_row(Text(r.name or "?"), Text(r.address), str(r.users), str(r.rooms), str(r.proto), _latency(r))
    return table


def event_line(event: TableEvent) -> str:
    """One event as a line of plain text (watching without a terminal)."""
    r = event.record
    why = f" ({event.reason})" if event.reason else ""
    return f"{event.kind}{why}: {r.name or '?'} {r.address} users={r.users} rooms={r.rooms} version={r.proto}"


async def _watch(config: DiscoveryConfig, *, probe: tuple[str, ...], json_output: bool) -> None:
    console = Console()
    servers: dict[str, ServerRecord] = {}
    live = (
        Live(render_table([]), console=console, auto_refresh=False) if console.is_terminal and not json_output else None
    )
    with live or contextlib.nullcontext():
        async with contextlib.aclosing(watch(config, probe=probe)) as events:
            async for event in events:
                record = event.record
                if event.kind == "removed":
                    servers.pop(record.server_id, None)
                else:
                    servers[record.server_id] = record
                if json_output:
                    print(json.dumps({"event": event.kind, "reason": event.reason, **record.as_dict()}), flush=True)
                elif live is not None:
                    ordered = sorted(servers.values(), key=lambda r: (r.name.casefold(), r.host, r.port))
                    live.update(render_table(ordered), refresh=True)
                else:
                    print(event_line(event), flush=True)
