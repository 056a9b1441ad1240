"""Smoke run of the benchmark harness: it must run end to end and account for every message.

Behaviour only, never timing: the machine is shared, so throughput and latency numbers are
not asserted; what is asserted is that the run writes its reports, that Frappe's own Node
servers of v15 and develop (unmodified, from ../shared/frappe) and gsocket each serve every
client, that the auth and permission calls really happen and the web stand-in refuses none
of the Node servers' calls (it answers as their Frappe version does), that every published
event is delivered exactly once, also in the desk mix with its reconnects, and that every
event of the small frappe_context batch is acknowledged by its handler, with every context's
database connection closed and the batch faster than its events one after another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PHASES = ("fanout_fixed", "fanout_max", "user_fixed", "user_max")
SERVERS = ["node-v15", "node-develop", "gsocket"]


def check_case(case: dict) -> None:
    """Every client connected, subscribed and got every event of every phase, once."""
    assert "error" not in case

    assert case["connect"]["connected"] == 200
    assert case["connect"]["failed"] == 0
    assert case["connect"]["auth_calls"] == 200
    assert case["doc_subscribe"]["permission_calls"] == 200
    assert case["doc_subscribe"]["clients_ready"] == 200
    if case["server"].startswith("node-"):
        # Frappe's own server got every answer it expected from the stand-in
        assert case["doc_subscribe"]["web_refusals"] == 0
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
    check_mix(case["mix"])


def check_mix(mix: dict) -> None:
    """Every desk user took its four rooms, every event reached exactly the clients of its
    room, and the page reloads of the mix reconnected."""
    # two doctype_subscribe, doc_subscribe and doc_open per client, all checked and allowed
    assert mix["subscribe"]["permission_calls"] == 4 * 200
    assert mix["subscribe"]["clients_ready"] == 200
    assert all(mix["events_by_kind"][kind] > 0 for kind in "ldug")
    assert mix["delivered"] == mix["expected"] > mix["events"]
    assert mix["lost"] == mix["duplicates"] == mix["misrouted"] == 0
    assert mix["reconnects"] > 0 and mix["reconnect_failed"] == 0
    assert mix["churned_clients"] == mix["reconnects"]
    # five viewers per document: doc_open tells the others who is viewing
    assert mix["doc_viewers"] > 0


@pytest.mark.timeout(600)
def test_quick_benchmark_run_delivers_everything(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
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
    assert [(c["server"], c["n"]) for c in cases] == [(s, 200) for s in SERVERS]
    for case in cases:
        check_case(case)
    goals = [line for line in lines if line["type"] == "goal"]
    assert {g["goal"] for g in goals} >= {"cpu_per_user_event", "mix_cpu", "clean"}
    assert all(g["node"] in ("node-v15", "node-develop") for g in goals if g["ratio"])
    assert [g["ok"] for g in goals if g["goal"] == "clean"] == [True]
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
        "## Desk mix",
        "## Goals of issue 16 on the medians",
        "## frappe_context concurrency",
    ):
        assert heading in report
