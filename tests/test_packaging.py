"""The distribution is ``frappe-gsocket`` (``gsocket`` on PyPI is somebody else's) and the
command says which version it is.  ``scripts/check-wheel`` builds and installs the real wheel."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys

import gsocket
from tests.support.bench import REPO


def test_distribution_name_and_single_version() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["metadata"]["name"] == "frappe-gsocket"
    assert setup["metadata"]["version"] == "attr: gsocket.__version__"
    assert "pip install frappe-gsocket" in (REPO / "README.md").read_text()


def test_version_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gsocket", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"gsocket {gsocket.__version__} (frappe-gsocket, Python 3.")
