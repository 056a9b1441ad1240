"""Optional: the frappe_context checks against a real Frappe bench.

Runs only when ``FRAPPE_BENCH`` points at a bench folder (its MariaDB and Redis running, and
gsocket's dependencies installed into its ``env``); ``FRAPPE_SITE`` picks the site, else the
bench's ``default_site`` or its first site.  It writes only to a probe table that it creates
and drops.  Without ``FRAPPE_BENCH`` the test is skipped, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "tests" / "fake_frappe" / "scenarios.py"
BENCH = os.environ.get("FRAPPE_BENCH")

pytestmark = pytest.mark.skipif(
    not BENCH, reason="optional integration test: set FRAPPE_BENCH to a Frappe bench to run it"
)


def _pick_site(sites: Path) -> str:
    if os.environ.get("FRAPPE_SITE"):
        return os.environ["FRAPPE_SITE"]
    common = sites / "common_site_config.json"
    if common.exists():
        default = json.loads(common.read_text()).get("default_site")
        if default:
            return str(default)
    found = sorted(p.parent.name for p in sites.glob("*/site_config.json"))
    if not found:
        pytest.fail(f"no site with a site_config.json under {sites}")
    return found[0]


def test_frappe_context_against_a_real_bench() -> None:
    bench = Path(str(BENCH)).resolve()
    sites = bench / "sites"
    python = bench / "env" / "bin" / "python"
    assert python.exists(), f"{python} not found: FRAPPE_BENCH must be a bench folder"
    probe = subprocess.run([str(python), "-c", "import gevent, werkzeug"], capture_output=True)
    assert probe.returncode == 0, f"install gsocket's dependencies into {bench / 'env'} first"
    args = {"sites_path": str(sites), "site": _pick_site(sites), "events": 50}
    done = subprocess.run(
        [str(python), str(SCENARIOS), "real_bench", json.dumps(args)],
        input="\n",
        capture_output=True,
        text=True,
        cwd=sites,  # Frappe opens its log files relative to the working directory
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=300,
    )
    assert "RESULT " in done.stdout, done.stderr[-5000:]
    r = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert r["failures"] == [] and r["ok"] == args["events"]
    assert r["errors"] == [], r["errors"]
    assert r["spawner_intact"]
    assert r["elapsed"] < args["events"] * 0.2 / 2, r["elapsed"]
    assert r["rows"] == ["passing"] and "ValueError" in r["failing_raised"]
    assert r["left_open"] == 0
    assert "frappe" in r["installed_apps"]
