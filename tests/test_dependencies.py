"""gsocket runs only on the dependency versions it was tested with (issue 14, item 2).

The supported ranges live in gsocket/ops/dependencies.py and are declared again where pip and CI
read them (setup.cfg, .ci/lowest-constraints.txt, .ci/newest-constraints.txt): these tests hold
the four together, and show ``gsocket serve`` refusing, and ``gsocket doctor`` failing, on a
version outside its range.  The out-of-range versions are fake distribution metadata (a
``.dist-info`` folder put first on the path), so ``importlib.metadata`` reports them exactly as
it would report a real install, while the real libraries still import.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gsocket.errors import StartupError
from gsocket.ops.dependencies import (
    SUPPORTED,
    check_supported,
    requirement,
    unsupported,
    version_key,
)
from tests.support.bench import REPO, make_bench
from tests.test_ops_doctor import doctor


def fake_distributions(folder: Path, **versions: str) -> Path:
    """A folder whose ``.dist-info`` metadata claims the given versions (keys: ``gevent``,
    ``python_socketio``, ...)."""
    for key, version in versions.items():
        name = key.replace("_", "-")
        info = folder / f"{key}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def _constraints(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_setup_cfg_and_ci_constraints_declare_the_supported_ranges() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    declared = setup["options"]["install_requires"].split()
    assert [requirement(name) for name in SUPPORTED] == [
        r for r in declared if r.split(">=")[0] in SUPPORTED
    ]
    lowest = _constraints(REPO / ".ci" / "lowest-constraints.txt")
    newest = _constraints(REPO / ".ci" / "newest-constraints.txt")
    for name, (low, high) in SUPPORTED.items():
        assert lowest[name] == low
        assert newest[name] == high
    assert set(newest) == set(SUPPORTED)


def test_this_environment_is_supported() -> None:
    assert unsupported() == []


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("5.18.1", "5.19.0"),
        ("5.18", "5.18.1"),
        ("5.14.0rc1", "5.14.0"),
        ("5.18.1", "5.19.0rc1"),
        ("5.18.0", "5.18.1.post1"),
        ("9.0.0", "10.0.0"),
        ("0.9.5", "0.10"),
    ],
)
def test_version_order(lower: str, higher: str) -> None:
    assert version_key(lower) < version_key(higher)


def test_equal_versions() -> None:
    assert version_key("26.9") == version_key("26.9.0")
    assert version_key("0.10.1.post1") == version_key("0.10.1")
    assert version_key("8.1.0+local") == version_key("8.1.0")


def test_bounds_are_included_and_everything_beyond_refused() -> None:
    def at(versions: dict[str, str]):
        def version_of(name: str) -> str:
            if name not in versions:
                raise importlib.metadata.PackageNotFoundError(name)
            return versions[name]

        return version_of

    lowest = {name: low for name, (low, _) in SUPPORTED.items()}
    newest = {name: high for name, (_, high) in SUPPORTED.items()}
    assert unsupported(at(lowest)) == []
    assert unsupported(at(newest)) == []
    beyond = {**newest, "redis": "8.2.0", "gevent": "24.10.3", "python-socketio": "5.19.0rc1"}
    del beyond["gevent-websocket"]
    problems = unsupported(at(beyond))
    assert problems == [
        "python-socketio 5.19.0rc1 is installed; gsocket supports 5.14.0 to 5.18.1 (the "
        "versions it was tested with): pip install 'python-socketio>=5.14.0,<=5.18.1', "
        "or a gsocket release that supports it",
        "gevent 24.10.3 is installed; gsocket supports 24.11.1 to 26.9.0 (the versions it was "
        "tested with): pip install 'gevent>=24.11.1,<=26.9.0', or a gsocket release that "
        "supports it",
        "gevent-websocket is not installed; gsocket supports 0.10.1 to 0.10.1",
        "redis 8.2.0 is installed; gsocket supports 4.5.5 to 8.1.0 (the versions it was tested "
        "with): pip install 'redis>=4.5.5,<=8.1.0', or a gsocket release that supports it",
    ]
    with pytest.raises(StartupError, match="^gsocket does not start: python-socketio 5.19.0rc1"):
        check_supported(at(beyond))


def test_serve_refuses_to_start_outside_the_range(tmp_path: Path) -> None:
    fake = fake_distributions(tmp_path / "fake", redis="9.0.0", python_engineio="4.10.1")
    bench = tmp_path / "bench"  # never read: the environment is checked first
    result = subprocess.run(
        [sys.executable, "-m", "gsocket", "serve", "--bench", str(bench)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(fake), str(REPO)))},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "gsocket does not start: " in result.stderr
    assert "python-engineio 4.10.1 is installed; gsocket supports 4.11.0 to 4.15.1" in (
        result.stderr
    )
    assert "redis 9.0.0 is installed; gsocket supports 4.5.5 to 8.1.0" in result.stderr
    assert "pip install 'redis>=4.5.5,<=8.1.0'" in result.stderr
    assert "python-socketio" not in result.stderr  # the real, supported one
    assert "common_site_config" not in result.stderr


def test_doctor_fails_outside_the_range(tmp_path: Path) -> None:
    bench = make_bench(tmp_path, {})
    fake = fake_distributions(tmp_path / "fake", gevent_websocket="0.10.2")
    status, verdicts, output = doctor(bench, pythonpath=(str(fake),))
    assert status == 1, output
    assert verdicts["dependencies"] == (
        "FAIL gevent-websocket 0.10.2 is installed; gsocket supports 0.10.1 to 0.10.1 (the "
        "versions it was tested with): pip install 'gevent-websocket>=0.10.1,<=0.10.1', or a "
        "gsocket release that supports it"
    )
    _, verdicts, output = doctor(bench)
    assert verdicts["dependencies"].startswith("OK tested versions: python-socketio "), output
