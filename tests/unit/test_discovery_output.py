"""`lanchat discover`'s presentation, in process: piped output, piped --watch, an unknown --interface.

Discovery itself is replaced by scripted results (no socket is opened): what is tested is what the
command prints and its exit status. The real command on loopback is in tests/integration/test_discovery_cli.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator

import pytest

from lanchat.config import DiscoveryConfig
from lanchat.discovery import cli
from lanchat.discovery.browser import ServerRecord, TableEvent
from lanchat.discovery.cli import EXIT_ERROR, EXIT_FOUND, EventLines, plain_line, run_discover
from lanchat.discovery.interfaces import Interface

LAB = ServerRecord("a" * 32, "lab one", "127.0.0.2", 7306, 1, 1, 1, 1, 0.0, 0.6)
KITCHEN = ServerRecord("b" * 32, "[/oops] kitchen [red]", "127.0.0.3", 7272, 1, 3, 2, 4, 0.1, None)
BOX_DRAWING = set("─━│┃┏┓┗┛┡┩╇┳┻╋")


@pytest.fixture(autouse=True)
def _plain_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout is pytest's capture (not a terminal); no environment may make rich pretend otherwise."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def test_piped_discover_prints_one_tab_separated_line_per_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped, it printed rich's box-drawing table although the docstring promised plain text."""

    async def browse(config: DiscoveryConfig, *, timeout: float, probe: tuple[str, ...]) -> list[ServerRecord]:
        return [KITCHEN, LAB]

    monkeypatch.setattr(cli, "browse", browse)
    status = run_discover(DiscoveryConfig(), timeout=0.1, probe=(), watch=False, json_output=False)
    out = capsys.readouterr().out
    assert status == EXIT_FOUND
    assert not BOX_DRAWING & set(out)
    assert out.splitlines() == [
        "[/oops] kitchen [red]\t127.0.0.3:7272\t3\t2\t1\t-",
        "lab one\t127.0.0.2:7306\t1\t1\t1\t0.6",
    ]


def test_plain_line_fields() -> None:
    assert plain_line(LAB).split("\t") == ["lab one", "127.0.0.2:7306", "1", "1", "1", "0.6"]
    assert plain_line(dataclasses.replace(LAB, name="")).startswith("?\t")


def _events(*events: TableEvent) -> AsyncGenerator[TableEvent, None]:
    async def generate() -> AsyncGenerator[TableEvent, None]:
        for event in events:
            yield event

    return generate()


def test_piped_watch_prints_an_update_only_when_its_line_changes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every probe reply brings a new latency (not shown in the line): `discover --watch | cat` printed an
    identical `updated:` line for each of them."""
    script = [
        TableEvent("added", LAB),
        TableEvent("updated", dataclasses.replace(LAB, latency_ms=0.7)),  # nothing shown changed
        TableEvent("updated", dataclasses.replace(LAB, latency_ms=0.4)),
        TableEvent("updated", dataclasses.replace(LAB, users=2, latency_ms=0.5)),  # a user joined
        TableEvent("updated", dataclasses.replace(LAB, users=2, latency_ms=0.9)),
        TableEvent("removed", dataclasses.replace(LAB, users=2), "goodbye"),
        TableEvent("added", LAB),  # back again: printed again
    ]

    def watch(config: DiscoveryConfig, *, probe: tuple[str, ...] = ()) -> AsyncGenerator[TableEvent, None]:
        return _events(*script)

    monkeypatch.setattr(cli, "watch", watch)
    status = run_discover(DiscoveryConfig(), timeout=0.1, probe=(), watch=True, json_output=False)
    assert status == EXIT_FOUND
    assert capsys.readouterr().out.splitlines() == [
        "added: lab one 127.0.0.2:7306 users=1 rooms=1 version=1",
        "updated: lab one 127.0.0.2:7306 users=2 rooms=1 version=1",
        "removed (goodbye): lab one 127.0.0.2:7306 users=2 rooms=1 version=1",
        "added: lab one 127.0.0.2:7306 users=1 rooms=1 version=1",
    ]


def test_event_lines_are_per_server() -> None:
    lines = EventLines()
    assert lines(TableEvent("added", LAB)) is not None
    assert lines(TableEvent("added", KITCHEN)) is not None
    assert lines(TableEvent("updated", dataclasses.replace(KITCHEN, latency_ms=1.0))) is None
    assert lines(TableEvent("updated", dataclasses.replace(LAB, name="lab two"))) is not None


def test_json_watch_still_reports_every_event(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json shows the latency, so a new one is a change: one object per event, as documented."""
    script = [TableEvent("added", LAB), TableEvent("updated", dataclasses.replace(LAB, latency_ms=0.7))]

    def watch(config: DiscoveryConfig, *, probe: tuple[str, ...] = ()) -> AsyncGenerator[TableEvent, None]:
        return _events(*script)

    monkeypatch.setattr(cli, "watch", watch)
    assert run_discover(DiscoveryConfig(), timeout=0.1, probe=(), watch=True, json_output=True) == EXIT_FOUND
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize("watching", [False, True], ids=["once", "watch"])
def test_an_interface_that_does_not_exist_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], watching: bool
) -> None:
    """`discover --interface nosuch` listened for its timeout and exited 1 ("none found")."""
    lo = Interface("lo", "127.0.0.1", "255.0.0.0", "127.255.255.255")
    monkeypatch.setattr(cli, "list_interfaces", lambda: [lo])
    monkeypatch.setattr(cli, "list_interface_names", lambda: {"lo", "eth0"})

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("discovery ran despite the unknown interface")

    monkeypatch.setattr(cli, "browse", must_not_run)
    monkeypatch.setattr(cli, "watch", must_not_run)
    config = DiscoveryConfig(interface=("lo", "nosuch"))
    status = run_discover(config, timeout=0.1, probe=(), watch=watching, json_output=False)
    err = capsys.readouterr().err
    assert status == EXIT_ERROR == 2
    assert "interface nosuch does not exist (hint: known: eth0, lo)" in err
