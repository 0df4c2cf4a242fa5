"""`lanchat discover`: list the servers on the LAN, once or live.

Owns the presentation of discovery results: a rich table on a terminal; plain text when stdout is not a
terminal (one server per line, tab-separated: name, HOST:PORT, users, rooms, version, latency in ms or
`-`); one JSON object per line with ``--json``. With ``--watch``: a live table on a terminal, else one
line per change (an update only when a field of the line changed), or one JSON object per event.
Exit status: 0 if at least one server was found (always 0 for a watch ended by Ctrl-C), 1 if none,
2 if discovery could not run at all (no UDP socket) or an --interface does not exist (a usage error).
No discovery logic here: that is browser.py's.
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
from lanchat.discovery.interfaces import list_interface_names, list_interfaces, unknown_interfaces

EXIT_FOUND = 0
EXIT_NONE = 1
EXIT_ERROR = 2


def run_discover(
    config: DiscoveryConfig, *, timeout: float, probe: tuple[str, ...], watch: bool, json_output: bool
) -> int:
    """Run `lanchat discover`; returns the exit status (see the module docstring)."""
    _setup_logging()
    unknown = interface_problem(config)
    if unknown:
        print(f"lanchat discover: {unknown}", file=sys.stderr)
        return EXIT_ERROR
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
        console = Console()
        if console.is_terminal:
            console.print(render_table(records))
        else:  # piped: lines a script can split on tabs (names may hold spaces, never a tab)
            for record in records:
                print(plain_line(record), flush=True)
    if not records:
        print(
            f"no lanchat server found within {timeout:g}s "
            "(hint: --timeout, --interface, --probe HOST; see docs/discovery.md)",
            file=sys.stderr,
        )
        return EXIT_NONE
    return EXIT_FOUND


def interface_problem(config: DiscoveryConfig) -> str:
    """Why an --interface names no interface at all ("" if each exists): a typo is a usage error here.

    `lanchat serve` logs the same words and serves on (an interface that appears later is used then);
    a one-shot discover would only report "no server found" after its timeout.
    """
    if not config.interface:
        return ""
    all_names = list_interface_names()
    if all_names is None:  # cannot tell: let discovery run and say what it can
        return ""
    unknown = unknown_interfaces(config.interface, list_interfaces(), all_names)
    if not unknown:
        return ""
    known = ", ".join(sorted(all_names)) or "none"
    what = "interface " + ", ".join(unknown) + (" does" if len(unknown) == 1 else " do")
    return f"{what} not exist (hint: known: {known})"


def _setup_logging() -> None:
    """Warnings (with their hints) on stderr; LANCHAT_LOG_LEVEL=debug also shows every kind of ignored datagram."""
    if logging.getLogger().handlers:
        return
    given = os.environ.get("LANCHAT_LOG_LEVEL") or "warning"  # empty: unset, as for serve
    level = given.upper() if given.upper() in logging.getLevelNamesMapping() else "WARNING"
    logging.basicConfig(level=level, format="lanchat discover: %(levelname)s %(message)s", stream=sys.stderr)
    if level != given.upper():  # said, not silently ignored (serve refuses it: a usage error there)
        logging.getLogger(__name__).warning("LANCHAT_LOG_LEVEL=%r is not a log level; using warning", given)


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


def plain_line(record: ServerRecord) -> str:
    """One server as a tab-separated line (piped output): name, address, users, rooms, version, latency."""
    latency = "-" if record.latency_ms is None else f"{record.latency_ms:.1f}"
    fields = (record.name or "?", record.address, record.users, record.rooms, record.proto, latency)
    return "\t".join(map(str, fields))


def event_line(event: TableEvent) -> str:
    """One event as a line of plain text (watching without a terminal)."""
    why = f" ({event.reason})" if event.reason else ""
    return f"{event.kind}{why}: {_record_text(event.record)}"


def _record_text(r: ServerRecord) -> str:
    """What an event line shows of a server: an update that changes none of it is not printed."""
    return f"{r.name or '?'} {r.address} users={r.users} rooms={r.rooms} version={r.proto}"


class EventLines:
    """The lines a piped ``--watch`` prints: every add and removal, an update only if its line changed
    (a new latency, which the line does not show, comes with every probe reply)."""

    def __init__(self) -> None:
        self._shown: dict[str, str] = {}

    def __call__(self, event: TableEvent) -> str | None:
        sid = event.record.server_id
        if event.kind == "removed":
            self._shown.pop(sid, None)
            return event_line(event)
        shown = _record_text(event.record)
        if self._shown.get(sid) == shown:
            return None
        self._shown[sid] = shown
        return event_line(event)


async def _watch(config: DiscoveryConfig, *, probe: tuple[str, ...], json_output: bool) -> None:
    console = Console()
    servers: dict[str, ServerRecord] = {}
    lines = EventLines()
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
                elif (line := lines(event)) is not None:
                    print(line, flush=True)
