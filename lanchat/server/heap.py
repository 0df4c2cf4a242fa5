"""The server's processes and Python's garbage collector.

A full collection scans every object the collector tracks, and it comes once the objects that survived
younger collections reach a quarter of those already old: early in a busy room's load, at the latest, when
the load's first objects are promoted. In the main process that scan went over the start-up's ~38,000
objects (modules, functions, classes) and the resume ring's events, and took 12-35 ms, during which nothing
was relayed: in the benchmark's C = 100 steps, many of the slowest messages were in flight during one
(docs/benchmarks.md, "Where the slowest messages of C = 100 wait"). Once started, a process moves what it
has into the collector's permanent generation (gc.freeze): those objects live as long as the process
anyway, and later collections, full ones included, scan only what the process made since. (The ring's
events are tuples the collector stops tracking: hub._Recent.)
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what start-up left, then take the survivors out of every later collection. Call once, when
    the process is ready to serve: objects made later are collected as usual."""
    gc.collect()
    gc.freeze()
