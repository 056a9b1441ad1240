"""Smoke run of the benchmark harness: it must run end to end and account for every message.

Behaviour only, never timing: the machine is shared, so throughput and latency numbers are
not asserted; what is asserted is that the run writes its reports, every client connects,
the auth and permission calls really happen, every published event is delivered exactly
once, and every event of the small frappe_context batch is acknowledged by its handler, with
every context's database connection closed and the batch faster than its events one after
another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PHASES = ("fanout_fixed", "fanout_max", "user_fixed", "user_max")


def check_case(case: dict) -> None:
    """Every client connected, subscribed and got every event of every phase, once."""
    assert "error" not in case

    assert case["connect"]["connected"] == 200
    assert case["connect"]["failed"] == 0
    assert case["connect"]["auth_calls"] == 200
    assert case["doc_subscribe"]["permission_calls"] == 200
    assert case["doc_subscribe"]["clients_ready"] == 200
    assert case["user_rooms"]["clients_ready"] == 200
    for key in PHASES:
        phase = case[key]
        assert phase["events"] > 0, key
        assert phase["delivered"] == phase["expected"] > 0, key
        assert phase["lost"] == 0, key
        assert phase["duplicates"] == 0, key
        assert phase["misrouted"] == 0, key
    assert case["fanout_fixed"]["expected"] == case["fanout_fixed"]["events"] * 200
    assert case["user_fixed"]["expected"] == case["user_fixed"]["events"]
    assert case["held"] == {"connected_at_end": 200, "disconnects": {}}
    assert case["memory"]["rss_connected"] > 0


@pytest.mark.timeout(600)
def test_quick_benchmark_run_delivers_everything(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--servers",
            "node,gsocket",
            "--results-dir",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    assert (results / "latest.md").is_file()
    jsonl = list(results.glob("*.jsonl"))
    assert len(jsonl) == 1
    lines = [json.loads(line) for line in jsonl[0].read_text().splitlines()]
    assert lines[0]["type"] == "run"
    cases = [line for line in lines if line["type"] == "case"]
    assert [(c["server"], c["n"]) for c in cases] == [("node", 200), ("gsocket", 200)]
    for case in cases:
        check_case(case)
    (batch,) = [line for line in lines if line["type"] == "frappe_ctx_concurrency"]
    assert batch["size"] == 20 and "error" not in batch
    assert batch["acks_ok"] == 20 and batch["acks_failed"] == batch["acks_missing"] == 0
    assert batch["wall_s"] < 20 * batch["query_s"], batch["wall_s"]
    assert batch["db_connections_left"] == 0 and batch["server_log_problems"] == 0
    assert batch["sequential"]["run_ms"] > 0

    report = (results / "latest.md").read_text()
    for heading in (
        "## Connect storm",
        "## Fan-out as fast as possible",
        "## Memory and holding",
        "## frappe_context concurrency",
    ):
        assert heading in report
