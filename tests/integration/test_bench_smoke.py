"""Smoke test of the benchmark (scripts/bench.py; scripts/bench_hops.py): it runs against lanchat, loses nothing.

Owned by the benchmark. Tiny scenarios (20 receivers, 2 s at a low fixed rate; 200 idle clients and one
broadcast; loopback only); no timed assertion: the figures depend on the machine, only "it runs, counts,
loses nothing and times the broadcast to every client" is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_against_lanchat_without_loss(tmp_path: Path) -> None:
    out_file = tmp_path / "bench.jsonl"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "bench.py"), "--targets", "lanchat-w1", "--scenarios", "fanout,idle",
        "--clients", "20", "--idle-clients", "200", "--idle-broadcasts", "1", "--many-senders", "0",
        "--rates", "2000", "--step-duration", "2", "--json",
        "--quiet", "3", "--drain-cap", "20",  # a busy machine may be slow, but must not lose anything
        "--json-file", str(out_file), "--no-plot",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows == [json.loads(line) for line in out_file.read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps, proc.stderr[-3000:]
    for step in steps:
        assert step["target"] == "lanchat-w1"
        assert step["scenario"] == "fanout"
        assert step["clients"] == 20
        assert step["expected"] > 0
        assert step["lost"] == 0, step
        assert step["delivered"] == step["expected"], step
        assert step["samples"] > 0
        for key in ("deliveries_per_s", "p50_ms", "p99_ms", "server_cpu", "generator_cpu", "offered_msgs_per_s"):
            assert key in step
    (idle,) = [r for r in rows if r["kind"] == "summary" and r["scenario"] == "idle"]
    assert idle["connected"] == 201 and idle["broadcast_reached"] == [200], idle  # 200 and the poster
    assert idle["broadcast_clock"] == "kernel receive timestamp"
    assert 0 < idle["broadcast_ms"][0] < 10_000, idle  # a kernel timestamp after the post, before the deadline


def test_bench_posts_with_ids_as_the_terminal_client_does(tmp_path: Path) -> None:
    """--ids: every post carries an increasing id, which the server stores with it and acks; the acks
    come back on the senders' connections and are not counted as deliveries."""
    cmd = [
        sys.executable, str(ROOT / "scripts" / "bench.py"), "--targets", "lanchat-w1", "--scenarios", "rooms",
        "--rooms-clients", "20", "--rooms-rates", "2000", "--step-duration", "2", "--ids", "--json",
        "--quiet", "3", "--drain-cap", "20", "--no-plot", "--json-file", str(tmp_path / "ids.jsonl"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["ids"] for r in rows if r["kind"] == "machine"] == [True]
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps, proc.stderr[-3000:]
    for step in steps:
        assert step["scenario"] == "rooms" and step["expected"] > 0
        assert step["lost"] == 0 and step["delivered"] == step["expected"], step
        assert step["acks"] > 0, step  # counted on the senders' connections (one cut by a read is missed)
    # The report says so, and warns when runs with and without ids are mixed.
    without = tmp_path / "without.jsonl"
    without.write_text((tmp_path / "ids.jsonl").read_text().replace('"ids":true', '"ids":false'))
    report = [sys.executable, str(ROOT / "scripts" / "bench_report.py")]
    alone = subprocess.run([*report, str(tmp_path / "ids.jsonl")], capture_output=True, text=True, timeout=60)
    assert "carried ids (`--ids`, stored and acked) in every run." in alone.stdout, alone.stderr[-2000:]
    mixed = subprocess.run([*report, str(without), str(tmp_path / "ids.jsonl")], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert "in run 2: **runs with and without ids are mixed here**" in mixed.stdout, mixed.stderr[-2000:]


def test_bench_hops_traces_every_hop() -> None:
    """scripts/bench_hops.py wraps lanchat's methods by name (Worker.post, Hub.drain, ...): a rename would
    leave it tracing nothing. A short light step must trace messages through every hop."""
    cmd = [
        sys.executable, str(ROOT / "scripts" / "bench_hops.py"),
        "--clients", "20", "--rate", "100000", "--duration", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "sampled messages; intended send -> end of the round" in out, out
    for hop in ("to worker", "in worker", "pipe to hub", "hub ", "pipe back", "wait round", "round "):
        assert "\n" + hop in out, (hop, out)
    assert "history checkpoints:" in out and "full collections in the main process:" in out, out
    assert "history commits: " in out, out  # the hub commits at every tick that has events


def test_the_generator_counts_every_message_however_reads_cut_the_stream() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_gen import END, TEXT_LEN, count_ends
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    text = b"@%016d s0:%09d " % (1, 2)
    text += b"x" * (TEXT_LEN - len(text) - len(END)) + END
    lanchat = b'{"type":"msg","seq":7,"ts":1.5,"room":"r","from":"s0","text":"%s"}\n' % text
    redis = b"*3\r\n$7\r\nmessage\r\n$1\r\nr\r\n$%d\r\n%s\r\n" % (len(text), text)
    for stream in (lanchat * 5 + b'{"type":"ping"}\n' + lanchat * 2, redis * 7):
        assert stream.count(END) == 7
        for size in (1, 2, len(END) - 1, len(END), 37, len(stream)):
            for first in range(1, min(size, len(END) + 1)):  # shifts every later cut by one byte
                tail, total, pos = b"", 0, 0
                while pos < len(stream):
                    chunk = stream[pos : pos + (first if pos == 0 else size)]
                    buf = bytearray(chunk) + END  # stale bytes past n, as in the real buffer: ignored
                    k, tail = count_ends(tail, buf, len(chunk))
                    total, pos = total + k, pos + len(chunk)
                assert total == 7, (size, first)
    lines = bytearray(b"a\nbb\n\nc")
    assert count_ends(b"", lines, len(lines) - 1, b"\n") == (3, b"")  # the threaded baseline's unit


def test_the_report_marks_ratios_of_capped_maxima_as_bounds() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_report import marked_cell, ratio_mark
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert [ratio_mark(a, b) for a, b in ((False, False), (True, False), (False, True), (True, True))] == [
        "", "≥", "≤", "?",
    ]  # fmt: skip
    at_least = lambda v: v >= 0.9  # noqa: E731
    assert marked_cell([1.4, 0.97, 0.71], ["", "", ""], at_least) == "**0.97** (1.40, 0.97, 0.71) | yes"
    # the other target passed the ceiling in the median's run: lanchat's share may be smaller, not known
    assert marked_cell([1.4, 0.97, 0.71], ["", "≤", ""], at_least) == "**≤ 0.97** (1.40, ≤ 0.97, 0.71) | ?"
    # a bound below the median cannot move it
    assert marked_cell([1.25, 0.81, 1.0], ["", "≤", ""], at_least) == "**1.00** (1.25, ≤ 0.81, 1.00) | yes"
    assert marked_cell([2.1, 2.1, 2.96], ["≥", "≥", "≥"], at_least) == "**≥ 2.10** (≥ 2.10, ≥ 2.10, ≥ 2.96) | yes"
    assert marked_cell([0.5, 0.6, 0.7], ["≤", "≤", "≤"], at_least) == "**≤ 0.60** (≤ 0.50, ≤ 0.60, ≤ 0.70) | **no**"
    assert marked_cell([0.5, 0.6, 0.7], ["≥", "≥", "≥"], at_least).endswith("| ?")  # may be higher
    assert marked_cell([1.0, 1.0, 1.0], ["?", "?", "?"], at_least) == "**? 1.00** (? 1.00, ? 1.00, ? 1.00) | ?"
    assert marked_cell([None], [""], at_least) == "- | -"


def test_only_a_full_run_writes_the_plot_committed_in_docs() -> None:
    """An A/B of a few fixed steps once overwrote docs/bench-latency.png, the full run's plot."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "scripts"))

    docs_plot = ROOT / "docs" / "bench-latency.png"
    assert bench.parse_args([]).plot == docs_plot
    assert bench.parse_args(["--lanchat-ref", "HEAD", "--json-file", "r1.jsonl"]).plot == docs_plot
    for narrowed in (
        ["--quick"],
        ["--rates", "4000000"],
        ["--targets=redis"],
        ["--scenarios", "idle"],
        ["--clients", "100"],
    ):
        assert bench.parse_args(narrowed).plot != docs_plot, narrowed
    assert bench.parse_args(["--rates", "5", "--plot", "/tmp/x.png"]).plot == Path("/tmp/x.png")


def test_the_idle_broadcast_is_timed_from_before_its_post_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator read the clock after sending the broadcast: descheduled in between (a busy machine),
    it read it after the last member's kernel receive stamp, and the broadcast took less than 0 ms (the
    smoke test above failed once so while the suite ran in 4 processes)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_gen import Generator
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    gen = Generator.__new__(Generator)  # only the "post" command's state: no processes, no sockets
    gen.marker, gen.stamped = b"BCAST0", True
    sent_at: list[float] = []
    monkeypatch.setattr(Generator, "_post_marker", lambda self, marker: sent_at.append(time.time()))
    posted = gen._command("post", {})
    assert sent_at and posted <= sent_at[0]


def test_the_report_explains_itself_and_refuses_no_runs() -> None:
    report = [sys.executable, str(ROOT / "scripts" / "bench_report.py")]
    helped = subprocess.run([*report, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "RUN.jsonl" in helped.stdout, helped.stderr[-2000:]
    bare = subprocess.run(report, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "RUN.jsonl" in bare.stderr
