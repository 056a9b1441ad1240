"""Real Frappe apps of the test suite, put into a real bench the way an operator adds an app.

``bench get-app`` + ``bench --site S install-app`` amount to: the app's folder in ``apps/``,
``pip install -e`` into the bench's env, its name in ``sites/apps.txt``, and Frappe's own
``install_app`` on the chosen sites.  Benches are cached between sessions and
``build-bench`` rewrites ``apps.txt`` on every start, so each step here checks first and is
safe to repeat; the web process is restarted afterwards so it imports the app.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .bench import FIXTURE_APPS
from .realbench import SHARED_FRAPPE, RealBench

RTSCOPE = FIXTURE_APPS / "rtscope"
"""An app with realtime handlers (plain and ``frappe_context=True``) and nothing else."""


def install_app(bench: RealBench, source: Path, sites: tuple[str, ...]) -> None:
    """Put the app at ``source`` into ``bench`` and install it on ``sites`` (only those).

    :raises AssertionError: a step failed, or the app is installed on a site not named.
    """
    app = source.name
    target = bench.path / "apps" / app
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    where = bench.run_python(
        f"try:\n    import {app}, os\n    print(os.path.dirname({app}.__file__))\n"
        "except ImportError:\n    print()"
    )
    if Path(where.strip()) != target / app:
        _pip_install_editable(bench, target)
    apps_txt = bench.path / "sites" / "apps.txt"
    listed = apps_txt.read_text().split()
    if app not in listed:
        apps_txt.write_text("\n".join([*listed, app]) + "\n")
    for site in bench.sites:
        body = (
            f"if {app!r} not in frappe.get_installed_apps():\n"
            "    from frappe.installer import install_app\n"
            f"    install_app({app!r}, set_as_patched=True)\n"
            if site in sites
            else ""
        ) + "print(frappe.get_installed_apps())"
        installed = bench.in_site(site, body).strip().splitlines()[-1]
        assert (app in installed) == (site in sites), f"{app} on {site}: {installed}"
    _restart_web(bench)


def _pip_install_editable(bench: RealBench, target: Path) -> None:
    pip = str(bench.path / "env" / "bin" / "pip")
    done = subprocess.run(
        [pip, "install", "-q", "--disable-pip-version-check", "--no-build-isolation", "-e", target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"pip install -e {target} failed:\n{done.stdout}\n{done.stderr}"


def _restart_web(bench: RealBench) -> None:
    """Restart the web process: a running one neither sees a new ``.pth`` nor re-reads apps."""
    done = subprocess.run(
        [str(SHARED_FRAPPE / "bench" / "start.sh"), "web"],
        env=bench.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"restarting the web process failed:\n{done.stdout}\n{done.stderr}"
