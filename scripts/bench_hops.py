#!/usr/bin/env python3
"""Where a message's latency goes, hop by hop: one fixed fan-out step of scripts/bench.py against lanchat,
with every *sampled* message (its text starts with "@" and its intended send time, see bench_gen) stamped
by the server's own processes at each hop, then which hops the slowest 1 % waited in.

The hops: the worker reads the message (``Worker.post``), writes it to the hub (``_flush_hub``); the main
process reads it (``_from_worker``), commits and relays it (``Hub.drain`` for worker 0); the worker reads
the relay (``from_hub``) and sends it in a fan-out round (``_fanout``: its start and end). Also logged: each
history checkpoint's span and every full garbage collection (generation 2) of the main process, so that
the slowest messages can be set beside them, and each history commit (the main process's loop waits for
it): how many a second, how long, and their share of the step. The instrumentation is
scripts/hops/sitecustomize.py, put on the servers' PYTHONPATH for the run: lanchat itself is not changed;
it costs a ``find`` per frame.

  .venv/bin/python scripts/bench_hops.py --workers 1 --rate 2700000 --duration 5 [--lanchat-ref REF]

Loopback only (bench.py's rules); one step of ``--duration`` seconds. The table's "end" is the end of the
round that sent the message (the generator's read of it comes after), so its p99 is a little under the
benchmark's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEGMENTS = [  # name, from, to (None: the message's intended send time)
    ("to worker", None, "Win"),
    ("in worker", "Win", "Wfwd"),
    ("pipe to hub", "Wfwd", "Hin"),
    ("hub", "Hin", "Hout"),
    ("pipe back", "Hout", "Wrly"),
    ("wait round", "Wrly", "Ws0"),
    ("round", "Ws0", "end"),
]


# --- the analysis ------------------------------------------------------------------------------------------


def analyse(out_dir: Path) -> None:
    first: dict[int, dict[str, int]] = defaultdict(dict)
    events: list[tuple[str, int, int]] = []  # kind, start (µs), duration (µs)
    for f in out_dir.glob("hops-*.log"):
        for line in f.read_text().splitlines():
            kind, a, b = line.split()
            if kind in ("CKPT", "COMMIT", "GC2"):
                events.append((kind, int(b), int(a)))
                continue
            stamp, t = int(a), int(b)
            e = first[stamp]
            if kind == "Ws1":
                e["end"] = max(e.get("end", 0), t)
            elif kind not in e or t < e[kind]:
                e[kind] = t
    rows = []
    for stamp, e in first.items():
        if all(k in e for _, a, b in SEGMENTS for k in (a, b) if k):
            rows.append(
                ((e["end"] - stamp) / 1e3, stamp, [(e[b] - (e[a] if a else stamp)) / 1e3 for _, a, b in SEGMENTS])
            )
    if len(rows) < 100:
        sys.exit(f"only {len(rows)} messages traced through every hop: nothing to tell")
    rows.sort()
    n = len(rows)
    slow = rows[int(n * 0.99) :]

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))]

    print(f"\n{n} sampled messages; intended send -> end of the round that sent it: p50 {rows[n // 2][0]:.2f} ms, "
          f"p99 {rows[int(n * 0.99)][0]:.2f} ms, max {rows[-1][0]:.2f} ms")  # fmt: skip
    print(f"{'hop':12} {'p50':>6} {'p90':>6} {'p99':>6} {'mean':>6}   mean in the slowest 1 % ({len(slow)})")
    for i, (name, _, _) in enumerate(SEGMENTS):
        xs = [r[2][i] for r in rows]
        print(f"{name:12} {pct(xs, 0.5):6.2f} {pct(xs, 0.9):6.2f} {pct(xs, 0.99):6.2f} "
              f"{statistics.fmean(xs):6.2f}   {statistics.fmean(r[2][i] for r in slow):6.2f}")  # fmt: skip
    t0, t1 = min(r[1] for r in rows), max(r[1] for r in rows)
    quarters = Counter(int((r[1] - t0) / 250_000) / 4 for r in slow)
    print("the slowest 1 % by quarter second of the step: "
          + ", ".join(f"{q:.2f} s: {c}" for q, c in sorted(quarters.items())))  # fmt: skip
    for kind, what in (("CKPT", "history checkpoints"), ("GC2", "full collections in the main process")):
        spans = sorted((t, t + d) for k, t, d in events if k == kind and t0 <= t <= t1)
        if not spans:
            print(f"{what}: none during the step")
            continue
        near = sum(1 for _, stamp, _ in slow if any(a <= first[stamp]["end"] and stamp <= b for a, b in spans))
        share = sum(b - a for a, b in spans) / max(1, t1 - t0)
        durations = ", ".join(f"{(b - a) / 1e3:.0f}" for a, b in spans[:12])
        print(f"{what}: {len(spans)} ({durations} ms; {share:.1%} of the step); "
              f"the slowest 1 % in flight during one: {near} of {len(slow)}")  # fmt: skip
    commits = sorted(float(d) for k, t, d in events if k == "COMMIT" and t0 <= t <= t1)
    if commits:  # the hub's loop waits for each: its share of the step is time the main process reads nothing
        print(f"history commits: {len(commits) / max(1e-6, (t1 - t0) / 1e6):.0f} a second, "
              f"p50 {pct(commits, 0.5) / 1e3:.2f} ms, p99 {pct(commits, 0.99) / 1e3:.2f} ms, "
              f"max {commits[-1] / 1e3:.1f} ms; {sum(commits) / max(1, t1 - t0):.1%} of the step")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rate", type=int, default=2_700_000, help="offered deliveries per second")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of the step")
    p.add_argument("--lanchat-ref", help="measure this commit's lanchat/ (bench.py --lanchat-ref)")
    p.add_argument("--keep", type=Path, help="keep the per-process logs in this directory")
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() in every server process once started (lanchat does since 4c88154)",
    )
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lanchat-hops-"))
    out = args.keep or tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LANCHAT_HOPS_DIR": str(out), "LANCHAT_INTERFACE": "lo"}
    if args.gc_freeze:
        env["LANCHAT_HOPS_FREEZE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "hops"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(HERE / "bench.py"), "--targets", f"lanchat-w{args.workers}", "--scenarios", "fanout",
           "--clients", str(args.clients), "--rates", str(args.rate), "--step-duration", str(args.duration),
           "--light-rate", "0", "--many-senders", "0", "--no-plot"]  # fmt: skip
    if args.lanchat_ref:
        cmd += ["--lanchat-ref", args.lanchat_ref]
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.duration + 240)
        print("\n".join(line for line in run.stdout.splitlines() if line.startswith(("target", "lanchat"))))
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return run.returncode
        analyse(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
