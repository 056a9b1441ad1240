"""Smoke run of benchmarks/frappe_ctx_concurrency.py, so the benchmark keeps working.

Behaviour, not timing: every event of a small batch must be acknowledged by its handler,
every context must have closed its database connection, and the batch must have run
concurrently at all (the bound is the time the events would take one after another, far
above what a concurrent run needs on a loaded machine).
"""

from __future__ import annotations

from benchmarks.frappe_ctx_concurrency import QUERY_S, run

SIZE = 20


def test_a_small_batch_is_acknowledged_in_full_and_runs_concurrently() -> None:
    (result,) = run([SIZE], None)
    assert result["acks_ok"] == SIZE
    assert result["acks_failed"] == result["acks_missing"] == 0
    assert result["wall_s"] < SIZE * QUERY_S, result["wall_s"]
    assert result["db_connections_left"] == 0
    assert result["server_log_problems"] == 0
    assert result["sequential"]["run_ms"] > 0
