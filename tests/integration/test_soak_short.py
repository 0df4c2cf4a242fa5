"""The soak test (scripts/soak.py) in its short CI form: 10 s of churn, a worker SIGKILL every 2 s and two
restarts (at 4 and 8 s; the second a SIGKILL of the main process), then the exactly-once and resource
checks. Members are in 8 rooms and post to all of them at once: a tick spans 8 rooms, so history goes
through the journal and a fold (docs/architecture.md) as well as the direct path (joins, one room each).
docs/security.md gives the figures of a long run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_short_soak_loses_nothing_and_returns_its_resources() -> None:
    soak = subprocess.Popen(
        [sys.executable, str(SOAK), "--duration", "10", "--clients", "20", "--rooms", "8", "--kill-interval", "2",
         "--restart-interval", "4", "--crash", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = soak.communicate(timeout=80)  # under pytest's 120 s
    except subprocess.TimeoutExpired:  # SIGTERM: the soak stops its server and says what it was waiting for
        soak.terminate()  # (a kill left the server running, its run's sessions held: seen once under load)
        out, err = soak.communicate(timeout=20)
        raise AssertionError(f"the soak did not end in 80 s; stderr:\n{err[-3000:]}") from None
    assert out.strip(), f"no result; stderr:\n{err[-3000:]}"
    result = json.loads(out.strip().splitlines()[-1])
    assert soak.returncode == 0 and result["ok"], f"{result}\n{err[-3000:]}"
    # the faults really happened, and something was checked
    assert result["worker_kills"] >= 3 and result["restarts"] >= 2 and result["crashes"] >= 1, result
    assert result["resumes"] > 0 and result["members_total"] > result["clients"], result
    assert result["deliveries_checked"] > 1000 and result["acked"] > 200, result
    assert result["missing"] == result["duplicates"] == result["dup_posts"] == result["out_of_order"] == 0
    assert result["fds_end"] <= result["fds_start"] + 4 and result["connections_at_end"] == 0
