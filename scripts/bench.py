#!/usr/bin/env python3
"""lanchat benchmark: the same loopback load generator against lanchat (1/2/4 workers), Redis pub/sub and
the classic thread-per-client server, in one run. See docs/benchmarks.md for what is measured and why.

Owned by the benchmark, with its helpers scripts/bench_gen.py (the generator processes),
scripts/bench_targets.py (starting and stopping the servers) and scripts/baseline_threaded.py (the
baseline server). Nothing here is part of lanchat.

Scenarios:
  fanout  C receivers in one room, S senders posting 100-byte stamped messages at a rising open-loop rate
          until p99 delivery latency passes --p99-limit (or anything is lost); then a step at half the
          maximum, and a step at half of Redis's maximum for the other targets.
  rooms   C clients in C/10 rooms of 10, everyone posting; the same search on the per-client rate.
  idle    N silent clients in one room: time to connect them all, server RSS per connection (all server
          processes), then broadcasts: time until the last client has one (kernel receive time).

Safety: every server listens on 127.0.0.1 only (lanchat with --no-discovery), every loop is bounded
in count and time, and every process started here (servers, redis-server, generator processes) is
stopped by this script, also on Ctrl-C and on errors.

  .venv/bin/python scripts/bench.py --quick            # smoke run, < 60 s
  .venv/bin/python scripts/bench.py                    # the full run of docs/benchmarks.md (< 20 min)
  .venv/bin/python scripts/bench.py --targets lanchat-w2,redis --scenarios fanout --clients 1000 --json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import signal
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gen import TEXT_LEN, ConnSpec, generator_main
from bench_targets import ROOT, Lanchat, Target, lanchat_source, make_target, nofile_limit

ALL_TARGETS = ["lanchat-w1", "lanchat-w2", "lanchat-w4", "redis", "threaded"]
SYNC_QUIET = 0.3  # seconds without a new delivery after a sync marker: the backlog of every sender is in


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    target: str
    scenario: str
    clients: int
    senders: int
    label: str  # "search", "retry", "half_max", "half_redis", "light", "fixed"
    offered_msgs_per_s: float
    offered_deliveries_per_s: float
    deliveries_per_s: float
    delivered: int
    expected: int
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    samples: int
    server_cpu: float  # cores (CPU seconds per second of the step, all server processes)
    generator_cpu: float  # cores, all generator processes
    other_cpu: float  # cores busy with anything else on the machine (other users, the orchestrator, the kernel)
    server_cpu_us_per_delivery: float | None
    duration_s: float
    closed: int
    ok: bool
    late: int = 0  # not delivered within the drain window, but delivered before the next step
    acks: int = 0  # --ids: acks the senders received (lanchat)
    note: str = ""

    def row(self) -> dict[str, Any]:
        return {"kind": "step", **asdict(self)}


@dataclass
class Summary:
    target: str
    scenario: str
    clients: int
    senders: int
    values: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"kind": "summary", "target": self.target, "scenario": self.scenario, "clients": self.clients,
                "senders": self.senders, **self.values}  # fmt: skip


class Output:
    """Human lines on stderr (or stdout without --json), JSON lines on stdout with --json."""

    def __init__(self, json_mode: bool, json_file: Path | None) -> None:
        self.json_mode = json_mode
        self.json_file = open(json_file, "w") if json_file else None  # noqa: SIM115 - closed in close()
        self.rows: list[dict[str, Any]] = []
        self.human = sys.stderr if json_mode else sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.human, flush=True)

    def record(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        line = json.dumps(row, separators=(",", ":"))
        if self.json_mode:
            print(line, flush=True)
        if self.json_file:
            self.json_file.write(line + "\n")
            self.json_file.flush()

    def close(self) -> None:
        if self.json_file:
            self.json_file.close()


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.0f}")


STEP_HEAD = (
    f"{'target':<11} {'scenario':<8} {'C':>5} {'S':>4} {'step':<10} {'offered/s':>9} {'deliv/s':>9} "
    f"{'p50ms':>6} {'p99ms':>6} {'maxms':>6} {'lost':>7} {'srvCPU':>6} {'genCPU':>6} {'other':>5} ok"
)


def step_line(r: StepResult) -> str:
    return (
        f"{r.target:<11} {r.scenario:<8} {r.clients:>5} {r.senders:>4} {r.label:<10} "
        f"{fmt_rate(r.offered_deliveries_per_s):>9} {fmt_rate(r.deliveries_per_s):>9} {fmt_ms(r.p50_ms):>6} "
        f"{fmt_ms(r.p99_ms):>6} {fmt_ms(r.max_ms):>6} {r.lost:>7} {r.server_cpu:>6.2f} {r.generator_cpu:>6.2f} "
        f"{r.other_cpu:>5.2f} "
        f"{'yes' if r.ok else 'NO'}{'  ' + r.note if r.note else ''}"
    )


def percentile(sorted_values: array[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[i])


def busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores), to see what else ran during a step."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


# --- a target with its clients -----------------------------------------------------------------------------


class Layout:
    """The connections of one scenario, split over generator processes."""

    def __init__(self, specs: list[ConnSpec], counted_per_msg: int, procs: int) -> None:
        self.specs = specs
        self.counted_per_msg = counted_per_msg  # receivers that count each message (same for every message)
        self.counted = sum(1 for s in specs if s.counted)
        self.senders = sum(1 for s in specs if s.sends)
        self.probes = sum(1 for s in specs if s.probe)
        self.per_proc: list[list[ConnSpec]] = [specs[i::procs] for i in range(procs)]


def fanout_layout(kind: str, clients: int, senders: int, procs: int, probes: int) -> Layout:
    every = max(1, clients // max(1, probes))
    specs = [
        ConnSpec(f"s{j}", "r0", False, True, False, j == 0, subscribe=kind != "redis", phase=j / senders)
        for j in range(senders)
    ]
    specs += [ConnSpec(f"c{i}", "r0", True, False, i % every == 0, False) for i in range(clients)]
    return Layout(specs, clients, procs)


def rooms_layout(kind: str, clients: int, room_size: int, procs: int, probes: int) -> Layout:
    n_rooms = max(1, clients // room_size)
    every = max(1, clients // max(1, probes))
    specs: list[ConnSpec] = []
    for i in range(clients):
        room = f"r{i % n_rooms}"
        first = i < n_rooms
        if kind == "redis":  # a subscribed RESP connection cannot publish: each user has two
            specs.append(ConnSpec(f"c{i}", room, True, False, i % every == 0, False))
            specs.append(ConnSpec(f"p{i}", room, False, True, False, first, subscribe=False, phase=i / clients))
        else:
            specs.append(ConnSpec(f"c{i}", room, True, True, i % every == 0, first, phase=i / clients))
    return Layout(specs, clients // n_rooms, procs)


def idle_layout(kind: str, clients: int, procs: int) -> Layout:
    specs = [ConnSpec("s0", "idle", False, False, False, True, subscribe=kind != "redis")]
    specs += [ConnSpec(f"c{i}", "idle", True, False, False, False) for i in range(clients)]
    return Layout(specs, clients, procs)


class Bench:
    """A running target plus generator processes holding one layout's connections."""

    def __init__(self, target: Target, layout: Layout, opts: dict[str, Any]) -> None:
        self.target = target
        self.layout = layout
        self.opts = opts
        self.pipes: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []
        self.connect_s = 0.0
        self.setup_error = ""

    # generator processes ------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        ctx = mp.get_context("fork")
        pings_after = getattr(self.target, "PING_INTERVAL", 0)
        for specs in self.layout.per_proc:
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=generator_main,
                args=(child, self.target.kind, self.target.port, specs, {**self.opts, "pings_after": pings_after}),
                daemon=True,
            )
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def call_all(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> list[Any]:
        for pipe in self.pipes:
            pipe.send((cmd, args or {}))
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError(f"generator did not answer {cmd!r} within {timeout} s")
            out.append(pipe.recv())
        return out

    def call(self, i: int, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        self.pipes[i].send((cmd, args or {}))
        if not self.pipes[i].poll(timeout):
            raise RuntimeError(f"generator did not answer {cmd!r} within {timeout} s")
        return self.pipes[i].recv()

    # lifecycle ----------------------------------------------------------------------------------------------

    def start(self, connect_timeout: float) -> bool:
        """Start the server and connect every client; False (with setup_error) if not all could join."""
        self.target.start()
        self.rss0 = self.server_rss()
        self.rss0_each = self.server_rss_each()
        self._spawn()
        self.call_all("connect")
        deadline = time.monotonic() + connect_timeout
        total = len(self.layout.specs)
        while True:
            st = self.call_all("status")
            ready = sum(s["ready"] for s in st)
            failed = sum(s["failed"] for s in st)
            if ready + failed >= total:
                break
            if time.monotonic() > deadline:
                self.setup_error = f"only {ready} of {total} connected within {connect_timeout:.0f} s"
                break
            time.sleep(0.05)
        firsts = [s["t_first"] for s in st if s["t_first"]]
        lasts = [s["t_ready"] for s in st if s["t_ready"]]
        self.connected = ready
        self.connect_s = (max(lasts) - min(firsts)) if firsts and lasts and not self.setup_error else float("nan")
        if failed:
            errors = [e for s in st for e in s["errors"]][:3]
            self.setup_error = f"{failed} of {total} connections failed: {errors}"
        if self.setup_error:
            return False
        return self.sync(timeout=connect_timeout)

    def sync(self, timeout: float = 30.0, token: list[int] = [0]) -> bool:  # noqa: B006 - a counter
        """Post a marker in every room and wait until every counted receiver saw it: everything sent
        before it (join storms, the previous step's tail) has been delivered."""
        token[0] += 1
        marker = f"SYNC{token[0]}"
        deadline = time.monotonic() + timeout
        while any(s["sending"] for s in self.call_all("status")):  # senders' queues first: the marker is last
            if time.monotonic() > deadline:
                self.setup_error = "sync: senders could not hand their messages to the server in time"
                return False
            time.sleep(0.02)
        self.call_all("marker", {"marker": marker})
        self.call_all("post")
        st: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            st = self.call_all("status")
            if sum(s["marker_seen"] for s in st) >= self.layout.counted:
                return self._quiet(deadline, sum(s["msgs"] for s in st))
            if sum(s["closed"] for s in st):
                break
            time.sleep(0.02)
        seen = sum(s["marker_seen"] for s in st)
        closed = sum(s["closed"] for s in st)
        errors = [e for s in st for e in s["errors"]][:3]
        self.setup_error = f"sync: {seen} of {self.layout.counted} receivers saw the marker ({closed} closed {errors})"
        return False

    def _quiet(self, deadline: float, msgs: int) -> bool:
        """The marker came from one sender per room: another sender's messages still queued in the server
        may come after it (Redis orders nothing across connections; lanchat's hub may sequence another
        worker's batch later). Wait until the receivers' count has not moved for SYNC_QUIET seconds."""
        still = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(SYNC_QUIET / 4)
            now = sum(s["msgs"] for s in self.call_all("status"))
            if now != msgs:
                msgs, still = now, time.monotonic()
            elif time.monotonic() - still >= SYNC_QUIET:
                break
        return True

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("quit", {}))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)
        for pipe in self.pipes:
            pipe.close()
        self.pipes, self.procs = [], []
        self.target.stop()

    # figures ------------------------------------------------------------------------------------------------

    def server_cpu(self) -> float:
        total = 0.0
        for p in self.target.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:
                pass
        return total

    def server_rss_each(self) -> list[int]:
        out = []
        for p in self.target.processes():
            try:
                out.append(p.memory_info().rss)
            except Exception:
                out.append(0)
        return out

    def server_rss(self) -> int:
        total = 0
        for p in self.target.processes():
            try:
                total += p.memory_info().rss
            except Exception:
                pass
        return total

    # one step -----------------------------------------------------------------------------------------------

    def step(self, scenario: str, label: str, msgs_per_s: float, duration: float) -> StepResult:
        lay = self.layout
        senders = max(1, lay.senders)
        per_sender = msgs_per_s / senders
        per_probe = msgs_per_s if scenario == "fanout" else msgs_per_s * lay.counted_per_msg / max(1, lay.counted)
        sample_every = max(1, round(lay.probes * per_probe / self.opts["samples_per_s"]))
        self.call_all("reset")
        cpu0 = self.server_cpu()
        sys0 = busy_cpu()
        t0 = time.monotonic() + 0.05
        self.call_all("step", {"t0": t0, "rate": per_sender, "duration": duration, "sample_every": sample_every})
        time.sleep(max(0.0, t0 + duration - time.monotonic()))
        # drain: until everything arrived, or no progress for `quiet` s, or the cap
        quiet, cap = self.opts["quiet"], time.monotonic() + self.opts["drain_cap"]
        last_total, last_change = -1, time.monotonic()
        while True:
            st = self.call_all("status")
            sent = sum(s["sent"] for s in st)
            received = sum(s["msgs"] for s in st)
            still_sending = any(s["sending"] for s in st)
            now = time.monotonic()
            if received != last_total:
                last_total, last_change = received, now
            if not still_sending and received >= sent * lay.counted_per_msg:
                break
            if now - last_change > quiet or now > cap:
                break
            time.sleep(0.02)
        res = self.call_all("collect")
        wall = time.monotonic() - t0
        cpu1 = self.server_cpu()
        sys1 = busy_cpu()
        sent = sum(r["sent"] for r in res)
        received = sum(r["msgs"] for r in res)
        expected = sent * lay.counted_per_msg
        closed = sum(r["closed"] for r in res)
        samples = array("q")
        for r in res:
            chunk = array("q")
            chunk.frombytes(r["samples"])
            samples.extend(chunk)
        samples = array("q", sorted(x for x in samples if 0 <= x < 3_600_000_000))
        last = max((r["last_recv"] for r in res), default=0.0)
        span = max(duration, last - t0) if last else duration
        lost = max(0, expected - received)
        p99 = percentile(samples, 0.99) / 1000 if samples else None
        srv = (cpu1 - cpu0) / wall
        gen = sum(r["cpu"] for r in res) / wall
        ok = lost == 0 and closed == 0 and p99 is not None and p99 <= self.opts["p99_limit"]
        return StepResult(
            target=self.target.name,
            scenario=scenario,
            clients=lay.counted,
            senders=lay.senders,
            label=label,
            offered_msgs_per_s=round(msgs_per_s, 1),
            offered_deliveries_per_s=round(msgs_per_s * lay.counted_per_msg, 1),
            deliveries_per_s=round(received / span, 1),
            delivered=received,
            expected=expected,
            lost=lost,
            p50_ms=round(percentile(samples, 0.5) / 1000, 3) if samples else None,
            p99_ms=round(p99, 3) if p99 is not None else None,
            max_ms=round(samples[-1] / 1000, 3) if samples else None,
            samples=len(samples),
            server_cpu=round(srv, 3),
            generator_cpu=round(gen, 3),
            other_cpu=round(max(0.0, (sys1 - sys0) / wall - srv - gen), 3),
            server_cpu_us_per_delivery=round((cpu1 - cpu0) / received * 1e6, 3) if received else None,
            duration_s=round(duration, 2),
            closed=closed,
            ok=ok,
            acks=sum(r.get("acks", 0) for r in res),
            note="" if received <= expected else f"{received - expected} more than expected",
        )


# --- scenarios ---------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args = args
        self.out = out
        self.opts: dict[str, Any] = {
            "connect_window": args.connect_window,
            "spread_sources": not args.one_source,
            "ids": args.ids,
            "bulk_interval": args.bulk_interval,
            "tick": args.tick,
            "samples_per_s": args.samples_per_s,
            "quiet": args.quiet,
            "drain_cap": args.drain_cap,
            "p99_limit": args.p99_limit,
        }
        self.results: list[StepResult] = []
        self.summaries: list[Summary] = []
        self.redis_max: dict[tuple[str, int, int], float] = {}  # (scenario, C, S) -> deliveries/s

    def emit(self, r: StepResult) -> None:
        self.results.append(r)
        self.out.say(step_line(r))
        self.out.record(r.row())

    def summary(self, s: Summary) -> None:
        self.summaries.append(s)
        self.out.record(s.row())

    def _bench(self, name: str, layout: Layout) -> Bench | None:
        target = make_target(name)
        why = target.available()
        if why:
            self.out.say(f"{name}: skipped: {why}")
            return None
        b = Bench(target, layout, self.opts)
        try:
            ok = b.start(self.args.connect_timeout)
        except Exception:
            b.stop()
            raise
        if not ok:
            self.out.say(f"{name}: setup failed: {b.setup_error}\n{target.log_tail(10)}")
            b.stop()
            return None
        return b

    # rate search --------------------------------------------------------------------------------------------

    def search(self, name: str, scenario: str, make_layout: Any, per_msg: int) -> None:
        """Raise the offered rate until a step fails; refine between the last pass and the first failure."""
        a = self.args
        layout: Layout = make_layout()
        key = (scenario, layout.counted, layout.senders)
        b = self._bench(name, layout)
        if b is None:
            return
        results: list[StepResult] = []

        def run(label: str, deliveries: float) -> StepResult:
            nonlocal b
            assert b is not None
            r = b.step(scenario, label, deliveries / per_msg, a.step_duration)
            results.append(r)
            if not r.ok:
                if b.sync(timeout=a.drain_cap * 3):  # the backlog is delivered: count what came late
                    st = b.call_all("status")
                    final = sum(s["msgs"] for s in st)  # the sync marker has no END: not counted ...
                    if name == "threaded":  # ... except by the threaded baseline's newline count
                        final -= b.layout.counted
                    if r.lost and final > r.delivered:
                        r.late = min(r.lost, final - r.delivered)
                        r.lost -= r.late
                        r.note = f"{r.late} arrived after the drain window; really lost: {r.lost}"
                        self.out.say(f"{'':<11} ... {r.note}")
                else:  # a backlog that does not drain, or a dropped client: start over
                    self.out.say(f"{name}: restarting the target after a failed step ({b.setup_error})")
                    b.stop()
                    b = self._bench(name, make_layout())
                    if b is None:
                        raise RuntimeError(f"{name}: could not restart")
            self.emit(r)
            return r

        light = scenario == "fanout" and layout.senders == a.senders and a.light_rate > 0

        def light_step(values: dict[str, Any]) -> None:
            """The issue's light load: 50,000 deliveries/s (C=100 at 500 msg/s, C=1,000 at 50 msg/s)."""
            lt = run("light", a.light_rate)
            values.update(light_p50_ms=lt.p50_ms, light_p99_ms=lt.p99_ms, light_lost=lt.lost,
                          light_server_cpu=lt.server_cpu)  # fmt: skip

        try:
            if a.only_light:
                values: dict[str, Any] = {}
                if light:
                    light_step(values)
                    self.summary(Summary(name, scenario, layout.counted, layout.senders, values))
                return
            fixed = a.rooms_rates if scenario == "rooms" and a.rooms_rates else a.rates
            if fixed:
                for rate in fixed:
                    run("fixed", rate)
                return

            def probe(rate: float, retries: int = a.retries) -> StepResult:
                """A step that fails narrowly (p99 under 3x the limit, nothing lost) is repeated ``retries``
                times, and up to 2 more times while other processes on the machine took more than
                ``--disturbed`` cores during it. A clear failure is not repeated."""
                r = run("search", rate)
                attempts = 0
                while not r.ok and attempts < retries + 2 and retries > 0:
                    if r.lost or r.closed or r.p99_ms is None or r.p99_ms > 3 * a.p99_limit:
                        break
                    if attempts >= retries and r.other_cpu <= a.disturbed:
                        break
                    r = run("retry", rate)
                    attempts += 1
                return r

            tried: list[tuple[float, StepResult]] = []
            rate, skips, skipping = a.start_rate, 0, False
            for _ in range(a.max_steps):
                r = probe(rate, 0 if skipping else a.retries)  # the step above a failure: a look, no retries
                skipping = False
                tried.append((rate, r))
                passed = [x for x, y in tried if y.ok]
                if r.ok:
                    if rate >= a.max_rate or any(not y.ok and x > rate for x, y in tried):
                        break  # came down to a pass, or at the top
                    rate = min(a.max_rate, rate * a.factor)
                elif not passed:  # fails from the start: come down
                    if rate <= a.min_rate:
                        break
                    rate = max(a.min_rate, rate / a.factor)
                elif skips < a.skip_ahead and rate < a.max_rate:  # batching can make a higher rate pass: look
                    skips, skipping = skips + 1, True  # one step above (none above the ceiling: it failed there)
                    rate = min(a.max_rate, rate * a.factor)
                else:
                    break
            for _ in range(a.refine):
                good = [x for x, y in tried if y.ok]
                if not good:
                    break
                low = max(good)
                bad = [x for x, y in tried if not y.ok and x > low]
                if not bad:
                    break
                mid = math.sqrt(low * min(bad))
                tried.append((mid, probe(mid)))
            oks = [y for _, y in tried if y.ok]
            best = max(oks, key=lambda y: y.offered_deliveries_per_s) if oks else None
            fails = [x for x, y in tried if not y.ok]
            fail_rate = min(fails) if fails else None
            values = {
                "max_deliveries_per_s": best.deliveries_per_s if best else 0.0,
                "max_offered_deliveries_per_s": best.offered_deliveries_per_s if best else 0.0,
                "p99_at_max_ms": best.p99_ms if best else None,
                "first_failed_offered": fail_rate,
                # passed at --max-rate, the search's ceiling: the target's maximum is that or more
                "capped": best is not None and best.offered_deliveries_per_s >= 0.999 * a.max_rate,
                "steps": [[round(x), y.ok] for x, y in tried],
            }
            if values["capped"]:
                self.out.say(f"{name}: passed the search's ceiling ({fmt_rate(a.max_rate)}, --max-rate): a lower bound")
            if best:
                half = run("half_max", best.offered_deliveries_per_s / 2)
                values.update(half_max_p50_ms=half.p50_ms, half_max_p99_ms=half.p99_ms,
                              half_max_server_cpu=half.server_cpu, half_max_generator_cpu=half.generator_cpu,
                              half_max_cpu_us_per_delivery=half.server_cpu_us_per_delivery)  # fmt: skip
                if name == "redis":
                    self.redis_max[key] = best.offered_deliveries_per_s
            redis = self.redis_max.get(key)
            if redis and name != "redis":
                hr = run("half_redis", redis / 2)
                values.update(half_redis_p50_ms=hr.p50_ms, half_redis_p99_ms=hr.p99_ms, half_redis_lost=hr.lost,
                              half_redis_server_cpu=hr.server_cpu,
                              half_redis_cpu_us_per_delivery=hr.server_cpu_us_per_delivery)  # fmt: skip
            if light:
                light_step(values)
            self.summary(Summary(name, scenario, layout.counted, layout.senders, values))
        finally:
            if b is not None:
                b.stop()

    def fanout(self, name: str, clients: int, senders: int) -> None:
        kind = make_target(name).kind
        self.out.say(f"--- {name}: fanout C={clients} S={senders}")
        a = self.args
        self.search(name, "fanout", lambda: fanout_layout(kind, clients, senders, a.gen_procs, a.probes), clients)

    def rooms(self, name: str, clients: int) -> None:
        kind = make_target(name).kind
        if kind == "threaded":
            self.out.say(f"{name}: rooms: skipped (the classic server has one shared room)")
            return
        self.out.say(f"--- {name}: rooms C={clients} in {clients // self.args.room_size} rooms")
        self.search(name, "rooms",
                    lambda: rooms_layout(kind, clients, self.args.room_size, self.args.gen_procs, self.args.probes),
                    self.args.room_size)  # fmt: skip

    def idle(self, name: str, clients: int) -> None:
        a = self.args
        target = make_target(name)
        capacity = (nofile_limit() - 64) * target.client_processes
        self.out.say(f"--- {name}: idle N={clients}")
        note = ""
        if clients + 16 > capacity:  # as many as this target can hold here, in whole thousands
            capped = (capacity - 16) // 1000 * 1000
            note = (f"capped from {clients}: {target.client_processes} server process(es) x RLIMIT_NOFILE "
                    f"{nofile_limit()}")  # fmt: skip
            self.out.say(f"{name}: idle N={clients}: running {capped}, {note}")
            clients = capped
        procs = max(a.gen_procs, math.ceil((clients + 1) / a.idle_per_proc))
        layout = idle_layout(target.kind, clients, procs)
        b = self._bench(name, layout)
        if b is None:
            self.summary(Summary(name, "idle", clients, 0, {"connected": 0, "error": "setup failed"}))
            return
        try:
            time.sleep(0.5)  # let buffers drain and the allocator settle before reading RSS
            rss = b.server_rss()
            per_conn = (rss - b.rss0) / clients
            procs_rss = b.server_rss_each()
            main_rss = procs_rss[0] if procs_rss else 0
            times: list[float] = []
            reached: list[int] = []
            poster = next(i for i, specs in enumerate(layout.per_proc) if any(s.poster for s in specs))
            for n in range(a.idle_broadcasts):
                marker = f"BCAST{n}"
                b.call_all("marker", {"marker": marker, "eager": a.eager_broadcast, "stamped": not a.eager_broadcast})
                t_post = b.call(poster, "post")
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline:
                    st = b.call_all("status")
                    if sum(s["marker_seen"] for s in st) >= clients:
                        break
                    time.sleep(0.01)
                seen = sum(s["marker_seen"] for s in st)
                last = max(s["marker_last"] for s in st)
                reached.append(seen)
                times.append((last - t_post) * 1000 if seen else float("nan"))
                b.call_all("reset")
                time.sleep(0.3)
            ok_times = sorted(t for t in times if not math.isnan(t))
            values = {
                "connected": b.connected,
                "connect_s": round(b.connect_s, 3),
                "server_rss_mib": round(rss / 2**20, 1),
                "server_rss_base_mib": round(b.rss0 / 2**20, 1),
                "rss_per_conn_bytes": round(per_conn),
                # the first process is the main one (lanchat: hub, sessions); the others are its workers
                "rss_per_conn_main_bytes": round((main_rss - b.rss0_each[0]) / clients) if b.rss0_each else None,
                "broadcast_ms": [round(t, 2) for t in times],
                "broadcast_median_ms": round(ok_times[len(ok_times) // 2], 2) if ok_times else None,
                "broadcast_reached": reached,
                "broadcast_clock": "read by the generator" if a.eager_broadcast else "kernel receive timestamp",
                "server_processes": len(b.target.processes()),
                "note": note,
            }
            self.out.say(
                f"{name:<11} idle     {clients:>6}  connected {b.connected} in {b.connect_s:.2f} s, server RSS "
                f"{rss / 2**20:.0f} MiB ({per_conn:.0f} B/conn), broadcast to all: "
                f"{', '.join(f'{t:.1f}' for t in times)} ms (reached {reached})"
            )
            self.summary(Summary(name, "idle", clients, 0, values))
        finally:
            b.stop()


# --- goals, plot -------------------------------------------------------------------------------------------


def _find(summaries: list[Summary], target: str, scenario: str, clients: int, senders: int | None = None) -> Any:
    for s in summaries:
        if (
            s.target == target
            and s.scenario == scenario
            and s.clients == clients
            and (senders is None or s.senders == senders)
        ):
            return s.values
    return None


def goals(runner: Runner, args: argparse.Namespace) -> list[str]:
    """Ratios against Redis and the baseline, from this run only."""
    S = runner.summaries
    lines: list[str] = []

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None  # a = 0 (nothing passed): 0, not "no figure"

    def show(label: str, value: float | None, goal: str, good: bool | None) -> None:
        v = "n/a" if value is None else f"{value:.2f}"
        verdict = "" if good is None else ("  met" if good else "  NOT met")
        lines.append(f"{label:<62} {v:>8}   goal {goal}{verdict}")

    s = args.senders
    for c in args.clients:
        red = _find(S, "redis", "fanout", c, s)
        for w in ("lanchat-w1", "lanchat-w2", "lanchat-w4"):
            lc = _find(S, w, "fanout", c, s)
            if not (lc and red):
                continue
            if lc.get("light_p99_ms") is not None and red.get("light_p99_ms"):
                r = ratio(lc["light_p99_ms"], red["light_p99_ms"])
                show(f"fanout C={c}: {w} p99 / Redis p99 at light load", r, "<= 1.5", None if r is None else r <= 1.5)
            if "max_deliveries_per_s" not in lc or "max_deliveries_per_s" not in red:
                continue
            r = ratio(lc["max_deliveries_per_s"], red["max_deliveries_per_s"])
            need = 1.0 if c >= 1000 else 0.9
            at_least = " (at least: lanchat at the ceiling)" if lc.get("capped") else ""
            show(
                f"fanout C={c} S={s}: {w} max / Redis max{at_least}", r, f">= {need}", None if r is None else r >= need
            )
            if lc.get("half_redis_p99_ms") is not None and red.get("half_max_p99_ms"):
                r = ratio(lc["half_redis_p99_ms"], red["half_max_p99_ms"])
                show(f"fanout C={c}: {w} p99 / Redis p99 at half Redis max", r, "<= 1.5",
                     None if r is None else r <= 1.5)  # fmt: skip
    c = max(args.clients) if args.clients else 1000
    thr = _find(S, "threaded", "fanout", c, args.many_senders)
    for w in ("lanchat-w1", "lanchat-w2", "lanchat-w4"):
        lc = _find(S, w, "fanout", c, args.many_senders)
        if lc and thr:
            r = ratio(lc.get("max_deliveries_per_s"), thr.get("max_deliveries_per_s"))
            at_least = " (at least)" if lc.get("capped") else ""
            show(f"fanout C={c} S={args.many_senders}: {w} max / threaded max{at_least}", r, ">= 8",
                 None if r is None else r >= 8)  # fmt: skip
    for c in args.clients:
        w1 = _find(S, "lanchat-w1", "fanout", c, s)
        for w in ("lanchat-w2", "lanchat-w4"):
            lw = _find(S, w, "fanout", c, s)
            if w1 and lw:
                r = ratio(lw.get("max_deliveries_per_s"), w1.get("max_deliveries_per_s"))
                show(f"fanout C={c}: {w} max / lanchat-w1 max", r, ">= 0.8", None if r is None else r >= 0.8)
                r = ratio(lw.get("half_redis_cpu_us_per_delivery"), w1.get("half_redis_cpu_us_per_delivery"))
                show(f"fanout C={c}: {w} / w1 server CPU per delivery (half Redis max)", r, "<= 1.2",
                     None if r is None else r <= 1.2)  # fmt: skip
    for sm in S:
        if sm.scenario == "idle" and sm.target.startswith("lanchat") and "rss_per_conn_bytes" in sm.values:
            v = sm.values
            n = sm.clients
            show(f"idle N={n} {sm.target}: RSS per connection (bytes)", v["rss_per_conn_bytes"], "<= 4096",
                 v["rss_per_conn_bytes"] <= 4096)  # fmt: skip
            show(f"idle N={n} {sm.target}: seconds to connect all", v["connect_s"], "<= 10",
                 v["connect_s"] <= 10 and v["connected"] >= n)  # fmt: skip
            limit = 150 if n <= 10_000 else 250
            med = v.get("broadcast_median_ms")
            show(f"idle N={n} {sm.target}: broadcast to the last member (ms, median)", med, f"<= {limit}",
                 None if med is None else med <= limit and min(v["broadcast_reached"]) >= n)  # fmt: skip
    return lines


def plot(results: list[StepResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.scenario, r.clients, r.senders) for r in results if r.p99_ms is not None})
    if not groups:
        return
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    colors = {"lanchat-w1": "tab:blue", "lanchat-w2": "tab:green", "lanchat-w4": "tab:olive",
              "redis": "tab:red", "threaded": "tab:gray"}  # fmt: skip
    for ax, (scenario, clients, senders) in zip(axes.flat, groups, strict=False):
        for target in ALL_TARGETS:
            best: dict[int, tuple[float, float, float, bool]] = {}  # one point per rate: its best attempt
            for r in results:
                if (r.scenario, r.clients, r.senders, r.target) != (scenario, clients, senders, target):
                    continue
                if r.p99_ms is None or r.p50_ms is None:
                    continue
                k = int(round(r.offered_deliveries_per_s, -2))
                if k not in best or r.p99_ms < best[k][2]:
                    best[k] = (r.offered_deliveries_per_s, r.p50_ms, r.p99_ms, r.ok)
            pts = sorted(best.values())
            if not pts:
                continue
            xs = [p[0] for p in pts]
            color = colors.get(target, "black")
            ax.plot(xs, [p[2] for p in pts], "-o", color=color, label=f"{target} p99", markersize=4)
            ax.plot(xs, [p[1] for p in pts], "--", color=color, alpha=0.6, label=f"{target} p50")
            bad = [(p[0], p[2]) for p in pts if not p[3]]
            if bad:
                ax.plot(*zip(*bad, strict=True), "x", color=color, markersize=9)
        ax.axhline(100, color="black", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        what = f"{clients} clients, {senders} senders" if scenario == "fanout" else f"{clients} clients"
        ax.set_title(f"{scenario}: {what}")
        ax.set_xlabel("offered deliveries/s")
        ax.set_ylabel("delivery latency, ms (x: failed; best attempt per rate)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "kind": "machine",
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nofile": nofile_limit(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(s: str) -> list[int]:
        return [int(float(x)) for x in s.split(",") if x]

    def floats(s: str) -> list[float]:
        return [float(x) for x in s.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small scenarios, short steps (< 60 s)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma list (default: all)")
    p.add_argument("--scenarios", default="fanout,rooms,idle", help="comma list of fanout, rooms, idle")
    p.add_argument("--clients", type=ints, default=[100, 1000], help="fanout receivers C (comma list)")
    p.add_argument("--senders", type=int, default=2, help="fanout sender connections")
    p.add_argument("--many-senders", type=int, default=50, help="an extra fanout run at the largest C (0: none)")
    p.add_argument("--rooms-clients", type=int, default=1000, help="clients of the rooms scenario")
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--idle-clients", type=ints, default=[10_000, 20_000], help="idle scenario sizes")
    p.add_argument("--idle-broadcasts", type=int, default=3)
    p.add_argument(
        "--eager-broadcast", action="store_true",
        help="time the idle broadcast by reading every client as data comes (default: kernel receive timestamps, "
        "clients read once all have it; see bench_gen)",
    )  # fmt: skip
    p.add_argument("--idle-per-proc", type=int, default=8000, help="idle clients per generator process")
    p.add_argument("--rates", type=floats, default=[], help="fixed offered deliveries/s steps (no search)")
    p.add_argument("--light-rate", type=float, default=50_000.0,
                   help="the light-load step of fanout, deliveries/s (0: none)")  # fmt: skip
    p.add_argument("--only-light", action="store_true", help="fanout: only the light-load step (no search)")
    p.add_argument("--rooms-rates", type=floats, default=[], help="fixed steps for the rooms scenario only")
    p.add_argument("--start-rate", type=float, default=100_000, help="first step, offered deliveries/s")
    p.add_argument("--factor", type=float, default=2.0, help="rate multiplier between search steps")
    p.add_argument("--disturbed", type=float, default=0.3, help="other load (cores) that voids a failed step")
    p.add_argument("--skip-ahead", type=int, default=1, help="higher steps tried after the first failure")
    p.add_argument("--refine", type=int, default=2, help="bisection steps after the first failure")
    p.add_argument("--min-rate", type=float, default=5_000, help="stop lowering here (deliveries/s)")
    p.add_argument("--max-rate", type=float, default=8_000_000, help="stop raising here (deliveries/s)")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--retries", type=int, default=1, help="repeats of a failed search step before it counts")
    p.add_argument("--step-duration", type=float, default=3.0, help="seconds of sending per step")
    p.add_argument("--p99-limit", type=float, default=100.0, help="ms: a step passes with p99 at most this")
    p.add_argument("--gen-procs", type=int, default=2, help="generator processes")
    p.add_argument("--probes", type=int, default=32, help="receivers that sample latency")
    p.add_argument("--samples-per-s", type=float, default=40_000, help="latency samples wanted per second")
    p.add_argument("--bulk-interval", type=float, default=0.01, help="s between reads of non-probe clients")
    p.add_argument("--tick", type=float, default=0.001, help="s between sender wake-ups")
    p.add_argument("--connect-window", type=int, default=100, help="connections in progress per process")
    p.add_argument(
        "--one-source", action="store_true",
        help="connect every client from 127.0.0.1 (default: spread over 64 loopback source addresses, see bench_gen)",
    )  # fmt: skip
    p.add_argument(
        "--ids", action="store_true",
        help="lanchat: every post carries an increasing id, as the terminal client's do (the server stores the "
        "session's highest id with it and acks it); default: no ids, as for the other targets",
    )  # fmt: skip
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--quiet", type=float, default=0.5, help="s without progress that ends a step's drain")
    p.add_argument("--drain-cap", type=float, default=5.0, help="s at most to wait for a step's tail")
    p.add_argument("--lanchat-ref", help="measure this git commit's lanchat/ (exported), not the working tree")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (the table goes to stderr)")
    p.add_argument("--json-file", type=Path, help="also write the JSON lines here")
    p.add_argument(
        "--plot", type=Path,
        help="PNG of latency against offered rate (default: docs/bench-latency.png for a full run, the temporary "
        "directory for a run narrowed by --quick, --rates, --targets, --scenarios or --clients)",
    )  # fmt: skip
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
    if args.plot is None:  # an A/B of a few steps must not overwrite the full run's plot committed in docs/
        narrowed = given & {"--quick", "--rates", "--targets", "--scenarios", "--clients"}
        args.plot = (
            Path(tempfile.gettempdir()) / "lanchat-bench.png" if narrowed else ROOT / "docs" / "bench-latency.png"
        )
    if args.quick:

        def default(name: str, value: Any) -> None:
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)

        default("clients", [100])
        default("many_senders", 0)
        default("rooms_clients", 100)
        default("idle_clients", [500])
        default("idle_broadcasts", 1)
        default("step_duration", 0.7)
        default("start_rate", 200_000)
        default("factor", 4.0)
        default("refine", 0)
        default("max_steps", 2)
        default("retries", 0)
        default("skip_ahead", 0)
        default("rooms_rates", [100_000])
        default("drain_cap", 1.5)
        default("quiet", 0.3)
        default("targets", "lanchat-w1,lanchat-w2,redis,threaded")
    args.targets = [t for t in args.targets.split(",") if t]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for t in args.targets:
        make_target(t)  # validates the name
    for s in args.scenarios:
        if s not in ("fanout", "rooms", "idle"):
            p.error(f"unknown scenario {s!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Output(args.json, args.json_file)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    source, version = lanchat_source(args.lanchat_ref)
    Lanchat.source = source
    ids = args.ids and any(t.startswith("lanchat") for t in args.targets)  # only lanchat's posts can carry them
    info = {**machine(), "lanchat": version, "ids": ids}
    out.record(info)
    out.say(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB, Python {info['python']}, "
            f"RLIMIT_NOFILE {info['nofile']}, load {info['loadavg']}; {TEXT_LEN}-byte messages")  # fmt: skip
    out.say(f"lanchat measured: {version}" + (f" (exported to {source})" if source else " (working tree)")
            + ("; its posts carry ids (acked)" if ids else ""))  # fmt: skip
    runner = Runner(args, out)
    t_start = time.monotonic()
    # Redis first: the other targets are also measured at half of its maximum rate
    targets = sorted(args.targets, key=lambda t: (t != "redis", ALL_TARGETS.index(t) if t in ALL_TARGETS else 99))
    try:
        out.say(STEP_HEAD)
        if "fanout" in args.scenarios:
            for c in args.clients:
                for t in targets:
                    runner.fanout(t, c, args.senders)
            if args.many_senders:
                for t in targets:
                    runner.fanout(t, max(args.clients), args.many_senders)
        if "rooms" in args.scenarios:
            for t in targets:
                runner.rooms(t, args.rooms_clients)
        if "idle" in args.scenarios:
            for n in args.idle_clients:
                for t in targets:
                    runner.idle(t, n)
    except KeyboardInterrupt:
        out.say("interrupted: stopping everything")
        return 130
    finally:
        from bench_targets import _stop_all

        _stop_all()
        out.say(f"total time {time.monotonic() - t_start:.0f} s")
    lines = goals(runner, args)
    if lines:
        out.say("\ngoals (ratios from this run only):")
        for line in lines:
            out.say("  " + line)
    out.record({"kind": "goals", "lines": lines})
    if not args.no_plot and runner.results:
        try:
            plot(runner.results, args.plot)
            out.say(f"plot: {args.plot}")
        except ImportError:
            out.say("plot skipped: matplotlib is not installed (pip install -e '.[bench]')")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
