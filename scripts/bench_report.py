#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from the JSON lines of one or more runs of scripts/bench.py.

Owned by the benchmark. Every ratio is computed inside one run (lanchat and Redis measured minutes apart
under the same conditions), then the median over runs is shown with the per-run values beside it, so a
noisy run is visible instead of averaged away.

  .venv/bin/python scripts/bench_report.py run1.jsonl run2.jsonl ... > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS = ["lanchat-w1", "lanchat-w2", "lanchat-w4", "redis", "threaded"]
Key = tuple[str, str, int, int]  # target, scenario, clients, senders


def load(path: Path) -> tuple[dict[Key, dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    summaries: dict[Key, dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []
    machine: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if row["kind"] == "machine":
            machine = row
        elif row["kind"] == "summary":  # a run may come in parts (e.g. a separate --only-light file): merge
            key = (row["target"], row["scenario"], row["clients"], row["senders"])
            summaries[key] = {**summaries.get(key, {}), **row}
        elif row["kind"] == "step":
            steps.append(row)
    for st in steps:  # CPU at half of Redis's maximum: the one offered rate every target ran at
        key = (st["target"], st["scenario"], st["clients"], st["senders"])
        if (
            key in summaries
            and st["label"] in ("half_redis", "half_max")
            and (st["label"] == "half_redis" or st["target"] == "redis")
        ):
            summaries[key]["same_rate_cpu_us_per_delivery"] = st["server_cpu_us_per_delivery"]
            summaries[key]["same_rate_server_cpu"] = st["server_cpu"]
            summaries[key]["same_rate_lost"] = st["lost"]
    return summaries, steps, machine


def _at_least(limit: float, value: float) -> bool:
    return value >= limit


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.0f} k"


def ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def cell(values: list[float | None], show: Callable[[float | None], str]) -> str:
    m = med(values)
    if len(values) <= 1:
        return show(m)
    return f"**{show(m)}** ({', '.join(show(v) for v in values)})"


def ratio_mark(a_capped: bool, b_capped: bool) -> str:
    """What a ratio a / b of two maxima is when either passed the search's ceiling (a lower bound)."""
    return "?" if a_capped and b_capped else "≥" if a_capped else "≤" if b_capped else ""


def marked_cell(vals: list[float | None], marks: list[str], ok: Callable[[float], bool]) -> str:
    """The "value | met" cells of a goal row: median (with its bound mark), each run's value, the verdict."""
    mv = med(vals)
    if mv is None:
        return "- | -"
    lower = any(k in "≥?" and k and v is not None and v <= mv for v, k in zip(vals, marks, strict=True))
    upper = any(k in "≤?" and k and v is not None and v >= mv for v, k in zip(vals, marks, strict=True))
    head = "?" if lower and upper else "≥" if lower else "≤" if upper else ""
    met = ok(mv)
    # every goal on maxima is an at-least goal: a lower bound that meets it meets it, an upper bound that
    # fails it fails it; anything else is not known from this run
    known = not head or (head == "≥" and met) or (head == "≤" and not met)
    verdict = ("yes" if met else "**no**") if known else "?"
    shown = [(k + " " if k else "") + num(v) for v, k in zip(vals, marks, strict=True)]
    text = (head + " " if head else "") + num(mv)
    return (text if len(vals) <= 1 else f"**{text}** ({', '.join(shown)})") + f" | {verdict}"


def capped(summary: dict[str, Any]) -> bool:
    """The search passed its highest step and failed none above it (the ceiling, --max-rate): the maximum
    is that or more. Older JSON has no "capped": read it from the steps."""
    if "capped" in summary:
        return bool(summary["capped"])
    steps = summary.get("steps") or []
    passed = [r for r, ok in steps if ok]
    return bool(passed) and not any(r > max(passed) for r, ok in steps if not ok)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN.jsonl", help="the --json-file of a run of bench.py")
    runs = [load(path) for path in p.parse_args(argv).runs]
    summaries = [r[0] for r in runs]
    keys = sorted({k for s in summaries for k in s}, key=lambda k: (k[1], k[2], k[3], TARGETS.index(k[0])))

    def values(key: Key, field: str) -> list[float | None]:
        return [s[key].get(field) if key in s else None for s in summaries]

    def max_cell(key: Key) -> str:
        """The maximum, with ">=" where a run passed the search's ceiling (a lower bound)."""
        per_run = [
            (s[key].get("max_deliveries_per_s"), capped(s[key])) if key in s else (None, False) for s in summaries
        ]
        shown = [("≥ " if c else "") + rate(v) for v, c in per_run]
        mid = med([v for v, _ in per_run])
        low = mid is not None and any(c and v is not None and v <= mid for v, c in per_run)  # the median is a bound
        head = ("≥ " if low else "") + rate(mid)
        return head if len(per_run) <= 1 else f"**{head}** ({', '.join(shown)})"

    out: list[str] = []
    m = runs[0][2]
    loads = ", ".join(str(r[2].get("loadavg")) for r in runs)
    versions = ", ".join(str(r[2].get("lanchat", "?")) for r in runs)
    out.append(f"Runs: {len(runs)}. Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM, "
               f"Python {m.get('python')}, kernel {m.get('kernel')}, RLIMIT_NOFILE {m.get('nofile')}. "
               f"lanchat measured: {versions}. Load average at the start of each run: {loads}.\n")  # fmt: skip
    ids = [bool(r[2].get("ids")) for r in runs]
    if any(ids):  # --ids: lanchat's posts stored and acked as the terminal client's are; not comparable without
        numbers = [str(i + 1) for i, v in enumerate(ids) if v]
        which = "every run" if all(ids) else ("run " if len(numbers) == 1 else "runs ") + ", ".join(numbers)
        out.append(f"lanchat's posts carried ids (`--ids`, stored and acked) in {which}"
                   + ("" if all(ids) else ": **runs with and without ids are mixed here**") + ".\n")  # fmt: skip

    out.append("### Maximum sustainable rate (deliveries/s; p99 <= 100 ms, nothing lost)\n")
    out.append("Median of the runs in bold, each run's figure in brackets; ≥: the run passed the search's ceiling "
               "(`--max-rate`, 8 M by default), so the target's maximum is that or more.\n")  # fmt: skip
    out.append("| scenario | C | senders | target | max deliveries/s | p99 at max (ms) | p50 / p99 at half max (ms) "
               "| server CPU at half max (cores) | server CPU us/delivery at half max |")  # fmt: skip
    out.append("|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        target, scenario, clients, senders = key
        if scenario == "idle":
            continue
        out.append(
            f"| {scenario} | {clients} | {senders} | {target} | {max_cell(key)} "
            f"| {cell(values(key, 'p99_at_max_ms'), ms)} "
            f"| {ms(med(values(key, 'half_max_p50_ms')))} / {ms(med(values(key, 'half_max_p99_ms')))} "
            f"| {num(med(values(key, 'half_max_server_cpu')))} "
            f"| {num(med(values(key, 'half_max_cpu_us_per_delivery')))} |"
        )
    out.append("")
    out.append("### Latency at half of Redis's maximum rate (same offered rate for every target)\n")
    out.append(
        "| scenario | C | senders | target | p50 (ms) | p99 (ms) | lost | server CPU (cores) | server CPU us/delivery |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        target, scenario, clients, senders = key
        if scenario == "idle":
            continue
        if target == "redis":
            p50, p99 = values(key, "half_max_p50_ms"), values(key, "half_max_p99_ms")
        else:
            p50, p99 = values(key, "half_redis_p50_ms"), values(key, "half_redis_p99_ms")
        lost = values(key, "same_rate_lost")  # from that step itself: Redis's as every other target's
        out.append(f"| {scenario} | {clients} | {senders} | {target} | {cell(p50, ms)} | {cell(p99, ms)} "
                   f"| {num(med(lost), 0)} | {num(med(values(key, 'same_rate_server_cpu')))} "
                   f"| {num(med(values(key, 'same_rate_cpu_us_per_delivery')))} |")  # fmt: skip
    out.append("")
    out.append("### Light load: 50,000 deliveries/s (C = 100 at 500 msg/s, C = 1,000 at 50 msg/s)\n")
    out.append("| C | senders | target | p50 (ms) | p99 (ms) | lost | server CPU (cores) |")
    out.append("|---|---|---|---|---|---|---|")
    for key in keys:
        target, scenario, clients, senders = key
        if scenario == "fanout" and any(v is not None for v in values(key, "light_p99_ms")):
            out.append(f"| {clients} | {senders} | {target} | {cell(values(key, 'light_p50_ms'), ms)} "
                       f"| {cell(values(key, 'light_p99_ms'), ms)} | {num(med(values(key, 'light_lost')), 0)} "
                       f"| {num(med(values(key, 'light_server_cpu')))} |")  # fmt: skip
    out.append("")
    idle_keys = [key for key in keys if key[1] == "idle"]
    if idle_keys:  # a report of fan-out runs only has no idle table (an empty one read as a second heading)
        out.append("### Idle clients, then one broadcast to all\n")
        out.append("| clients | target | connect all (s) | server RSS (MiB, all processes) | RSS per connection "
                   "(bytes) | broadcast: last one has it (ms, median of 3) | note |")  # fmt: skip
        out.append("|---|---|---|---|---|---|---|")
    for key in idle_keys:
        target, _, clients, _ = key
        note = next((s[key].get("note") for s in summaries if key in s and s[key].get("note")), "") or ""
        out.append(
            f"| {clients} | {target} | {cell(values(key, 'connect_s'), lambda x: num(x, 1))} "
            f"| {num(med(values(key, 'server_rss_mib')), 0)} "
            f"| {cell(values(key, 'rss_per_conn_bytes'), lambda x: num(x, 0))} "
            f"| {cell(values(key, 'broadcast_median_ms'), ms)} | {note} |"
        )
    if idle_keys:
        out.append("")
    out.append("### Goals (ratio computed within each run; median, then each run)\n")
    out.append("A ratio of two maxima is a bound where a run passed the search's ceiling: ≥ where lanchat did, ≤ "
               "where the target it is compared with did, ? where both did; a median such a run could move is "
               "marked the same way, and is met (or not) only where the bound says so, else ?.\n")  # fmt: skip
    out.append("| goal | target | value | met (median) |")
    out.append("|---|---|---|---|")

    def ratio_rows(label: str, goal: str, ok: Callable[[float], bool], pairs: list[tuple[Key, str, Key, str]]) -> None:
        """One row per pair: a / b in each run, the median, and whether it meets the goal. A ratio of maxima
        where a run passed the search's ceiling is a bound: >= when a (the numerator) did, <= when b did,
        ? when both did; a median that such a run may move is a bound too, and a bound on the wrong side
        of the goal gives "?" (not known), not a verdict."""
        for a_key, a_field, b_key, b_field in pairs:
            vals: list[float | None] = []
            marks: list[str] = []
            for s in summaries:
                a_sum, b_sum = s.get(a_key, {}), s.get(b_key, {})
                a, b = a_sum.get(a_field), b_sum.get(b_field)
                vals.append(a / b if a is not None and b else None)  # a = 0 (nothing passed) is a ratio of 0
                marks.append(ratio_mark(a_field == "max_deliveries_per_s" and capped(a_sum),
                                        b_field == "max_deliveries_per_s" and capped(b_sum)))  # fmt: skip
            out.append(f"| {label} ({goal}) | {a_key[0]} | {marked_cell(vals, marks, ok)} |")

    lan = ["lanchat-w1", "lanchat-w2", "lanchat-w4"]
    cs = sorted({k[2] for k in keys if k[1] == "fanout"})
    two = min((k[3] for k in keys if k[1] == "fanout"), default=2)
    many = max((k[3] for k in keys if k[1] == "fanout"), default=50)
    for c in cs:
        need = 1.0 if c >= 1000 else 0.9
        ratio_rows(f"fanout C={c}, {two} senders: max / Redis max", f">= {need}", functools.partial(_at_least, need),
                   [((w, "fanout", c, two), "max_deliveries_per_s", ("redis", "fanout", c, two),
                     "max_deliveries_per_s") for w in lan])  # fmt: skip
        ratio_rows(f"fanout C={c}: p99 at half Redis max / Redis p99 there", "<= 1.5", lambda v: v <= 1.5,
                   [((w, "fanout", c, two), "half_redis_p99_ms", ("redis", "fanout", c, two), "half_max_p99_ms")
                    for w in lan])  # fmt: skip
        ratio_rows(f"fanout C={c}: p99 at light load / Redis p99 there", "<= 1.5", lambda v: v <= 1.5,
                   [((w, "fanout", c, two), "light_p99_ms", ("redis", "fanout", c, two), "light_p99_ms")
                    for w in lan])  # fmt: skip
    if many != two and cs:
        c = max(cs)
        ratio_rows(f"fanout C={c}, {many} senders: max / threaded max", ">= 8", lambda v: v >= 8,
                   [((w, "fanout", c, many), "max_deliveries_per_s", ("threaded", "fanout", c, many),
                     "max_deliveries_per_s") for w in lan])  # fmt: skip
    for c in cs:
        ratio_rows(f"fanout C={c}: max / lanchat-w1 max", ">= 0.8", lambda v: v >= 0.8,
                   [((w, "fanout", c, two), "max_deliveries_per_s", ("lanchat-w1", "fanout", c, two),
                     "max_deliveries_per_s") for w in lan[1:]])  # fmt: skip
        ratio_rows(f"fanout C={c}: server CPU per delivery / lanchat-w1's, at half Redis max", "<= 1.2",
                   lambda v: v <= 1.2,
                   [((w, "fanout", c, two), "same_rate_cpu_us_per_delivery", ("lanchat-w1", "fanout", c, two),
                     "same_rate_cpu_us_per_delivery") for w in lan[1:]])  # fmt: skip
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
