"""Frappe's own Node realtime server, unmodified, from the archives in ``../shared/frappe``.

The baseline of the benchmarks is what a bench runs today: ``apps/frappe/socketio.js`` with
``node_utils.js`` and ``realtime/`` of that Frappe version, with the npm dependencies that
version's ``package.json`` asks for. Only those files are extracted, into a cache folder
outside the repository (``~/.cache/gsocket/frappe-node/<archive>/apps/frappe``), and only the
realtime server's own dependencies are installed there (socket.io, @redis/client, superagent,
cookie, at the archive's ranges), as ``../shared/frappe/bench/setup.sh`` does: the full
``package.json`` needs GitHub. The server is started as the bench starts it, under
``bench/loopback.js`` so it binds 127.0.0.1, with ``FRAPPE_BENCH_ROOT`` pointing at the
benchmark's bench folder and ``FRAPPE_SOCKETIO_PORT`` choosing the port.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gsocket.bench.frappe_node")

# Archive name patterns of the two versions (see ../shared/frappe/README.md).
ARCHIVES = {"v15": "frappe-15.*.tar.gz", "develop": "frappe-16.*-dev-*.tar.gz"}
# The realtime server's own npm dependencies; the rest of package.json is the desk's build.
NODE_DEPS = ("socket.io", "@redis/client", "superagent", "cookie")
SERVER_FILES = ("socketio.js", "node_utils.js", "realtime/")
CACHE_ENV = "GSOCKET_FRAPPE_NODE_CACHE"


def default_cache() -> Path:
    """Where extracted servers live: ``$GSOCKET_FRAPPE_NODE_CACHE`` or ``~/.cache/gsocket``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "gsocket" / "frappe-node"


def frappe_dir(repo: Path) -> Path:
    """The shared Frappe folder next to the repository (``<repo>/../shared/frappe``)."""
    return repo.parent / "shared" / "frappe"


@dataclass(frozen=True)
class FrappeNode:
    """One version's server, ready to run: ``node -r LOOPBACK apps/frappe/socketio.js`` in ROOT."""

    version: str
    archive: Path
    root: Path
    loopback: Path
    frappe_version: str
    packages: dict[str, str]

    def argv(self) -> list[str]:
        return ["node", "-r", str(self.loopback), "apps/frappe/socketio.js"]

    def env(self, bench: Path, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env["FRAPPE_BENCH_ROOT"] = str(bench)
        env["FRAPPE_SOCKETIO_PORT"] = str(port)
        return env


def _archive(shared: Path, version: str) -> Path:
    found = sorted(shared.glob(ARCHIVES[version]))
    if not found:
        raise FileNotFoundError(f"no Frappe {version} archive ({ARCHIVES[version]}) in {shared}")
    return found[-1]


def _extract(archive: Path, dest: Path) -> tuple[str, dict[str, str]]:
    """Extract the server's files of ARCHIVE into DEST/apps/frappe; return the Frappe
    version and the npm ranges of the realtime server's dependencies."""
    app = dest / "apps" / "frappe"
    app.mkdir(parents=True)
    package: dict = {}
    frappe_version = "?"
    with tarfile.open(archive) as tar:
        for member in tar:
            # frappe/<path>: the archive's top folder is the app folder
            top, _, rel = member.name.partition("/")
            if top != "frappe" or not rel:
                continue
            if rel == "package.json":
                package = json.load(tar.extractfile(member))  # type: ignore[arg-type]
            elif rel == "frappe/__init__.py":
                for line in tar.extractfile(member).read().decode().splitlines():  # type: ignore[union-attr]
                    if line.startswith("__version__"):
                        frappe_version = line.split("=", 1)[1].strip().strip("\"'")
            elif member.isfile() and any(
                rel == f or (f.endswith("/") and rel.startswith(f)) for f in SERVER_FILES
            ):
                target = app / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, target.open("wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out)
    missing = [f for f in SERVER_FILES if not (app / f).exists()]
    if missing:
        raise RuntimeError(f"{archive.name} lacks {', '.join(missing)}")
    deps = package.get("dependencies", {})
    return frappe_version, {name: deps[name] for name in NODE_DEPS if name in deps}


def _installed_versions(app: Path) -> dict[str, str]:
    versions = {}
    for name in NODE_DEPS:
        try:
            meta = json.loads((app / "node_modules" / name / "package.json").read_text())
            versions[name] = meta["version"]
        except (OSError, ValueError, KeyError):
            continue
    return versions


def prepare(version: str, repo: Path, cache: Path | None = None) -> FrappeNode:
    """Extract and install VERSION's server once (cached, keyed on the archive's name);
    concurrent runs wait for each other on a lock file instead of installing twice."""
    shared = frappe_dir(repo)
    archive = _archive(shared, version)
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / archive.name.removesuffix(".tar.gz")
    marker = root / "ready.json"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            log.info("extracting Frappe's Node realtime server from %s", archive.name)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
            try:
                frappe_version, ranges = _extract(archive, tmp)
                app = tmp / "apps" / "frappe"
                # A package.json of its own, so npm installs these and nothing else.
                (app / "package.json").write_text('{"private": true}\n')
                specs = [f"{name}@{spec}" for name, spec in ranges.items()]
                log.info("npm install %s", " ".join(specs))
                subprocess.run(
                    ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *specs],
                    cwd=app,
                    check=True,
                )
                facts = {
                    "archive": archive.name,
                    "frappe_version": frappe_version,
                    "ranges": ranges,
                    "packages": _installed_versions(app),
                }
                (tmp / "ready.json").write_text(json.dumps(facts, indent=1) + "\n")
                if root.exists():
                    shutil.rmtree(root)
                tmp.rename(root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    facts = json.loads(marker.read_text())
    return FrappeNode(
        version=version,
        archive=archive,
        root=root,
        loopback=shared / "bench" / "loopback.js",
        frappe_version=facts["frappe_version"],
        packages=facts["packages"],
    )
