"""The server id: a random 128-bit identity kept in the data directory, stable across restarts.

Owns the file ``<data dir>/server_id`` (32 lowercase hex characters and a newline). Browsers list a
server once per id, however many interfaces it beacons on, so the id must not change when the server
restarts, and two servers must never share a data directory. Never touches the network.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Final

log = logging.getLogger("lanchat.discovery")

SERVER_ID_FILE: Final = "server_id"
_VALID: Final = re.compile(r"[0-9a-f]{32}")


def load_or_create_server_id(data_dir: Path) -> str:
    """The id stored in ``data_dir``, created (with the directory) on first use.

    Creation is atomic and never overwrites: two servers racing on a fresh directory both end up with
    the id that reached the disk first. A damaged file is replaced with a new id (logged).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SERVER_ID_FILE
    for _ in range(3):  # bounded: only a concurrent writer could make us go round again
        existing = _read(path)
        if existing is not None:
            return existing
        if path.exists():
            log.warning("server id file %s is damaged: creating a new id (browsers will list a new server)", path)
            path.unlink(missing_ok=True)
        new_id = uuid.uuid4().hex
        tmp = data_dir / f".{SERVER_ID_FILE}.{os.getpid()}.{new_id[:8]}"
        try:  # (the write inside: a full disk left the temporary file behind, one per start, an operator's review)
            tmp.write_text(new_id + "\n", encoding="ascii")
            try:
                os.link(tmp, path)  # fails if another process created it meanwhile: then we read theirs
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system: exclusive create (a reader may see it empty)
                try:
                    with path.open("x", encoding="ascii") as f:
                        f.write(new_id + "\n")
                except FileExistsError:
                    continue
        finally:
            tmp.unlink(missing_ok=True)
        log.info("created server id %s in %s", new_id, path)
        return new_id
    raise OSError(f"cannot create a server id in {data_dir}")


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return text if _VALID.fullmatch(text) else None
