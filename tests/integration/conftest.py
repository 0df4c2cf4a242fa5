from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import ServerProcess


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real servers; each is killed (with its workers) at the end of the test."""
    servers: list[ServerProcess] = []

    def make(*args: str, workers: int = 4, data_dir: Path | None = None, **kw: object) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / f"data{len(servers)}", *args, workers=workers, **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()
