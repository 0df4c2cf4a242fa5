"""Per-hop stamps of the benchmark's sampled messages, inside lanchat's server processes (scripts/bench_hops.py
puts this directory on their PYTHONPATH, so Python imports it at start). Inert unless LANCHAT_HOPS_DIR is
set; lanchat's code is not changed: its classes are wrapped as their modules load.

Each process appends "KIND STAMP MICROSECONDS" lines (CLOCK_MONOTONIC, as the stamps) to
LANCHAT_HOPS_DIR/hops-PID.log at exit, plus "CKPT"/"COMMIT"/"GC2" lines (duration, start) for history
checkpoints, history commits and full garbage collections of the main process."""

from __future__ import annotations

import asyncio
import atexit
import gc
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

DIGITS = 16  # bench_gen.STAMP_DIGITS: a sampled message's text starts "@" + this many digits
_DIR = os.environ.get("LANCHAT_HOPS_DIR")
_out: list[str] = []
_gc_start = [0.0]


def _log(kind: str, stamps: list[bytes], t: float | None = None) -> None:
    us = int((time.monotonic() if t is None else t) * 1e6)
    _out.extend(f"{kind} {s.decode()} {us}\n" for s in stamps)


def _flush() -> None:
    if _out:
        with open(f"{_DIR}/hops-{os.getpid()}.log", "a") as f:
            f.writelines(_out)
        _out.clear()


def _stamps(data: bytes) -> list[bytes]:
    found, i = [], data.find(b"@")
    while i >= 0:
        s = data[i + 1 : i + 1 + DIGITS]
        if len(s) == DIGITS and s.isdigit():
            found.append(s)
        i = data.find(b"@", i + 1)
    return found


def _noting(kind: str, pending: list[bytes], method: Callable[[Any, bytes], None]) -> Callable[[Any, bytes], None]:
    """``method``, after it logs the stamps in its argument as ``kind`` and notes them in ``pending``."""

    def wrapper(self: Any, data: bytes) -> None:
        s = _stamps(data)
        _log(kind, s)
        pending.extend(s)
        method(self, data)

    return wrapper


def _patch_worker(mod: Any) -> None:
    w = mod.Worker
    fwd: list[bytes] = []  # read from clients, not yet written to the hub
    rly: list[bytes] = []  # relayed by the hub, not yet sent in a round
    post, flush_hub, from_hub, fanout = w.post, w._flush_hub, w.from_hub, w._fanout

    def p_flush_hub(self: Any) -> None:
        flush_hub(self)
        if fwd and not self._hub_out:
            _log("Wfwd", fwd)
            fwd.clear()

    def p_fanout(self: Any) -> None:
        t0, ran = time.monotonic(), bool(self.dirty)
        fanout(self)
        if ran and rly:
            _log("Ws0", rly, t0)
            _log("Ws1", rly)
            rly.clear()

    w.post, w.from_hub = _noting("Win", fwd, post), _noting("Wrly", rly, from_hub)
    w._flush_hub, w._fanout = p_flush_hub, p_fanout


def _patch_main(mod: Any) -> None:
    from_worker, start = mod.Server._from_worker, mod.Server.start
    if os.environ.get("LANCHAT_HOPS_FREEZE"):  # a lever to measure: start-up's objects out of the collector's way

        async def p_start(self: Any) -> None:
            await start(self)
            gc.collect()
            gc.freeze()

        mod.Server.start = p_start
    post_frame = mod.control.PostFrame

    def p_from_worker(self: Any, slot: Any, frames: list[Any]) -> None:
        for f in frames:
            if isinstance(f, post_frame):
                _log("Hin", _stamps(f.text))
        from_worker(self, slot, frames)

    mod.Server._from_worker = p_from_worker

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _gc_start[0] = time.monotonic()
        elif info["generation"] == 2:
            _out.append(f"GC2 {int((time.monotonic() - _gc_start[0]) * 1e6)} {int(_gc_start[0] * 1e6)}\n")

    gc.callbacks.append(on_gc)


def _patch_hub(mod: Any) -> None:
    drain = mod.Hub.drain

    def p_drain(self: Any, worker: int) -> bytes:
        data: bytes = drain(self, worker)
        if worker == 0:  # written to the worker's pipe right after
            _log("Hout", _stamps(data))
        return data

    mod.Hub.drain = p_drain


def _patch_history(mod: Any) -> None:
    checkpoint = mod.HistoryStore.checkpoint

    def p_checkpoint(self: Any) -> Any:
        t = time.monotonic()
        try:
            return checkpoint(self)
        finally:  # on the checkpoint's thread: list.append is atomic
            _out.append(f"CKPT {int((time.monotonic() - t) * 1e6)} {int(t * 1e6)}\n")

    mod.HistoryStore.checkpoint = p_checkpoint
    commit = mod.HistoryStore.commit

    def p_commit(self: Any, *a: Any, **k: Any) -> Any:  # on the hub's loop: it waits for each
        t = time.monotonic()
        try:
            return commit(self, *a, **k)
        finally:
            _out.append(f"COMMIT {int((time.monotonic() - t) * 1e6)} {int(t * 1e6)}\n")

    mod.HistoryStore.commit = p_commit


_PATCHES: dict[str, Callable[[Any], None]] = {
    "lanchat.server.main": _patch_main,
    "lanchat.server.hub": _patch_hub,
    "lanchat.storage.history": _patch_history,
}


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the modules above as usual, then wraps their classes once the module has run."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in _PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched(module: ModuleType) -> None:
            exec_module(module)
            _PATCHES[name](module)

        spec.loader.exec_module = patched  # type: ignore[method-assign]
        return spec


_asyncio_run = asyncio.run


def _run(main: Any, **kwargs: Any) -> Any:
    # A worker runs as ``python -m lanchat.server.worker``: its module is __main__, run by runpy without an
    # import the finder would see, so it is patched when it starts its loop (its Worker is made inside).
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == "lanchat.server.worker":
        _patch_worker(sys.modules["__main__"])
        if os.environ.get("LANCHAT_HOPS_FREEZE"):
            gc.collect()
            gc.freeze()
    return _asyncio_run(main, **kwargs)


if _DIR:
    asyncio.run = _run
    sys.meta_path.insert(0, _Finder())
    atexit.register(_flush)
