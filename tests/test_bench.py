"""The benchmarks still run, and still notice when deliveries go wrong.

The README's figures come from `bench/compare.py`; a benchmark that rots, or one that would print a clean
table over lost events, would make them worthless. These tests run the real scripts on tiny loads (real
servers, peers and load-client processes) and check what they report about deliveries — never a timing:
timings belong to the benchmark's own output, not to assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]   # a whole comparison run, peers included

FANOUT_TARGETS = ("ours-ws", "tornado_ws", "websockets_broadcast", "ours-sse", "tornado_sse", "starlette_sse")


def run_bench(script: str, output: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run([sys.executable, f"bench/{script}", *args, "--output", str(output)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert output.exists(), f"{script} wrote no results (exit {done.returncode}):\n{done.stdout[-4000:]}" \
                            f"\n{done.stderr[-4000:]}"
    return done, json.loads(output.read_text())


def test_the_quick_comparison_measures_every_target_and_every_delivery_arrives(tmp_path):
    done, result = run_bench("compare.py", tmp_path / "compare.json", "--quick")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = {(row["section"], row["target"]): row for row in result["rows"]}
    assert set(rows) == {*(("1k", t) for t in FANOUT_TARGETS), *(("10k", t) for t in FANOUT_TARGETS),
                         ("10k", "ours-mixed"), ("paced", "ours-ws"), ("paced", "ours-sse"),
                         ("replay", "ours-ws"), ("replay", "ours-sse")}
    for key, row in rows.items():
        assert row["missing"] == 0 and not any(row["anomalies"].values()), (key, row["anomalies"])
        if key[0] == "replay":
            assert row["replay_ms"] is not None, key
        else:
            assert row["deliveries_per_second"] > 0 and row["event_bytes"] >= 200, key
    ours = [row for (section, target), row in rows.items() if target.startswith("ours") and section != "replay"]
    assert all(row["server_us_per_delivery"] for row in ours), "the server's own CPU accounting is missing"
    assert len(result["goals"]) == 8 and not [line for line in result["goals"] if "not measured" in line]
    assert "deliveries missing" not in done.stdout


def test_lost_deliveries_are_reported_and_fail_the_run(tmp_path):
    """A server that refuses some subscribers (`--max-connections` below their number): the report must
    say which deliveries never arrived and why, and the exit status must say the figures are not to be
    trusted."""
    done, result = run_bench("fanout.py", tmp_path / "fanout.json", "--subscribers", "60", "--events", "20",
                             "--runs", "1", "--transport", "ws", "--server-arg=--max-connections=50")
    assert done.returncode == 1, done.stdout[-4000:]
    [row] = result["summary"]
    assert row["missing"] == 10 * 20, row
    assert row["anomalies"]["connect_failures"] == {"ConnectionError: close 1013 too many connections": 10}
    assert "200 of 1,200 deliveries missing" in done.stdout
    assert "no anomalies" not in done.stdout
