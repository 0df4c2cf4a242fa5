"""The CLI only maps options (and LANCHAT_* variables) onto typed configs: checked with a patched run."""

from __future__ import annotations

import os
from typing import Any

import pytest
from typer.testing import CliRunner

import lanchat.server.main
from lanchat.cli import app
from lanchat.config import ServerConfig


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def fake_run(config: ServerConfig) -> int:
        got["config"] = config
        return 0

    monkeypatch.setattr(lanchat.server.main, "run", fake_run)
    return got


def test_serve_defaults(captured: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve"], env={"LANCHAT_INTERFACE": "lo"})
    assert result.exit_code == 0, result.output
    cfg: ServerConfig = captured["config"]
    assert (cfg.host, cfg.port, cfg.workers) == ("0.0.0.0", 7272, os.cpu_count())
    assert cfg.discovery.interface == ("lo",) and cfg.discovery.beacon and cfg.discovery.discovery
    assert cfg.exempt_loopback is True and cfg.max_frame == 16384


def test_every_option_reads_its_environment_variable(captured: dict[str, Any]) -> None:
    env = {
        "LANCHAT_HOST": "::", "LANCHAT_PORT": "1234", "LANCHAT_WORKERS": "3", "LANCHAT_NAME": "lab",
        "LANCHAT_DATA_DIR": "/tmp/x", "LANCHAT_INTERFACE": "lo eth9", "LANCHAT_DISCOVERY_PORT": "9999",
        "LANCHAT_BEACON_INTERVAL": "2.5", "LANCHAT_BEACON_TO": "127.0.0.2", "LANCHAT_NO_BEACON": "1",
        "LANCHAT_MAX_FRAME": "4096", "LANCHAT_RATE": "3", "LANCHAT_BURST": "4", "LANCHAT_SENDQ": "65536",
        "LANCHAT_MAX_CLIENTS": "10", "LANCHAT_MAX_PER_IP": "7", "LANCHAT_EXEMPT_LOOPBACK": "false",
        "LANCHAT_HANDSHAKE_TIMEOUT": "1.5", "LANCHAT_PING_INTERVAL": "2", "LANCHAT_IDLE_TIMEOUT": "5",
        "LANCHAT_RESUME_GRACE": "9", "LANCHAT_HISTORY_LIMIT": "100", "LANCHAT_HISTORY_ON_JOIN": "5",
        "LANCHAT_WORKER_TIMEOUT": "2", "LANCHAT_LOG_LEVEL": "debug",
    }  # fmt: skip
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    cfg: ServerConfig = captured["config"]
    assert (cfg.host, cfg.port, cfg.workers, cfg.name, str(cfg.data_dir)) == ("::", 1234, 3, "lab", "/tmp/x")
    d = cfg.discovery
    assert (d.interface, d.discovery_port, d.beacon_interval, d.beacon_to) == (
        ("lo", "eth9"),
        9999,
        2.5,
        ("127.0.0.2",),
    )
    assert d.beacon is False and d.discovery is True
    assert (cfg.max_frame, cfg.rate, cfg.burst, cfg.sendq) == (4096, 3.0, 4, 65536)
    assert (cfg.max_clients, cfg.max_per_ip, cfg.exempt_loopback) == (10, 7, False)
    assert (cfg.handshake_timeout, cfg.ping_interval, cfg.idle_timeout) == (1.5, 2.0, 5.0)
    assert (cfg.resume_grace, cfg.history_limit, cfg.history_on_join) == (9.0, 100, 5)
    assert (cfg.worker_timeout, cfg.log_level) == (2.0, "debug")


def test_flags_beat_the_environment(captured: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "4000", "--no-discovery"], env={"LANCHAT_PORT": "1234"})
    assert result.exit_code == 0, result.output
    cfg: ServerConfig = captured["config"]
    assert cfg.port == 4000 and cfg.discovery.discovery is False and cfg.discovery.beacon is False


@pytest.mark.parametrize("args", [["--max-frame", "10"], ["--rate", "0"], ["--workers", "100"], ["--port", "x"]])
def test_bad_values_are_refused_with_a_clear_message(captured: dict[str, Any], args: list[str]) -> None:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2 and "Invalid value" in result.output
    assert "config" not in captured
