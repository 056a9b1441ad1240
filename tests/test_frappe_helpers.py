"""The documented publish helpers inside Frappe processes: ``gsocket/contract/frappe_hook.py``.

What the hook does to ``frappe.realtime`` is checked in fresh interpreters against the fake
v15-shaped Frappe of ``tests/fake_frappe`` (whose ``publish_realtime`` records what it is asked)
and a newer-shaped Frappe with helpers of its own; that the wheel carries the ``.pth`` file to
the top of site-packages is checked on a wheel built by pip.  The whole path in a real bench's
web process and worker is ``tests/realbench/test_publish_helpers.py``.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.bench import REPO

HELPERS = (
    "publish_to_user",
    "publish_to_doc",
    "publish_to_doctype",
    "publish_task_progress",
    "publish_to_website",
    "publish_to_all",
    "publish_to_room",
)

ON_V15 = """
import gsocket.contract.frappe_hook as hook
hook.install()
hook.install()
import sys
assert sum(isinstance(f, hook.FrappeRealtimeFinder) for f in sys.meta_path) == 1
import frappe
frappe.local.site = "site1.local"
from frappe.realtime import (publish_to_user, publish_to_doc, publish_to_doctype,
    publish_task_progress, publish_to_website, publish_to_all, publish_to_room, published)
publish_to_user("jane@x.com", "e1", {"a": 1})
publish_to_doc("ToDo", "TD-1", "e2")
publish_to_doctype("ToDo", "e3", {"b": 2})
publish_task_progress("job-1", {"progress": 5})
publish_to_website("e5")
publish_to_all("e6")
publish_to_room("project:P-1", "e7", after_commit=True)
import json
print(json.dumps(published))
"""


def run(code: str, *path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": ":".join(map(str, (REPO, *path))),
            "PATH": "/usr/bin:/bin",
            **(env or {}),
        },
        timeout=60,
    )


def test_v15_frappe_realtime_gets_the_helpers_and_each_goes_through_publish_realtime():
    import json

    out = run(ON_V15, REPO / "tests" / "fake_frappe")
    assert out.returncode == 0, out.stderr
    rooms = [(m["event"], m["room"], m["namespace"]) for m in json.loads(out.stdout)]
    assert rooms == [
        ("e1", "user:jane@x.com", "site1.local"),
        ("e2", "doc:ToDo/TD-1", "site1.local"),
        ("e3", "doctype:ToDo", "site1.local"),
        (None, "task_progress:job-1", "site1.local"),
        ("e5", "website", "site1.local"),
        ("e6", "all", "site1.local"),
        ("e7", "project:P-1", "site1.local"),
    ]


def test_helpers_added_when_frappe_realtime_was_imported_before_the_hook():
    code = (
        "import frappe.realtime\n"
        "import gsocket.contract.frappe_hook as hook\n"
        "hook.install()\n"
        "from frappe.realtime import publish_to_room\n"
        "print(publish_to_room.__module__)\n"
    )
    out = run(code, REPO / "tests" / "fake_frappe")
    assert out.stdout.strip() == "gsocket.contract.publish", out.stderr


def test_newer_frappe_keeps_its_own_helpers(tmp_path):
    package = tmp_path / "frappe" / "realtime"
    package.mkdir(parents=True)
    (tmp_path / "frappe" / "__init__.py").write_text("")
    (package / "__init__.py").write_text(
        "".join(f"def {name}(*args, **kwargs): return 'frappe'\n" for name in HELPERS)
    )
    code = (
        "import gsocket.contract.frappe_hook as hook\n"
        "hook.install()\n"
        "import frappe.realtime as r\n"
        f"print(sorted({{getattr(r, n).__module__ for n in {HELPERS!r}}}))\n"
    )
    out = run(code, tmp_path)
    assert out.stdout.strip() == "['frappe.realtime']", out.stderr


def test_switched_off_by_the_environment():
    code = (
        "import gsocket.contract.frappe_hook as hook\n"
        "hook.install()\n"
        "import frappe.realtime as r\n"
        "print(hasattr(r, 'publish_to_user'))\n"
    )
    out = run(code, REPO / "tests" / "fake_frappe", env={"GSOCKET_NO_FRAPPE_HELPERS": "1"})
    assert out.stdout.strip() == "False", out.stderr


def test_the_wheel_puts_the_pth_file_at_the_top_of_site_packages(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("frappe_gsocket-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        pth = archive.read("gsocket-frappe-helpers.pth").decode()
        assert "gsocket/contract/frappe_hook.py" in archive.namelist()
    assert pth.startswith("import gsocket.contract.frappe_hook") and "install()" in pth
