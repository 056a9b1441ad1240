"""Smoke test of an installed gsocket wheel, run by ``scripts/check-wheel`` inside its venv.

It uses what the wheel itself installed (the ``gsocket`` script, ``requests``, the demo's
local-stack pieces: ports, child processes, the ``redis-server`` launcher) and Debian's
``redis-server``: the package must come from the venv, carry its data files, serve a bench,
answer a Socket.IO handshake and a namespace connect, publish, run the doctor and stop cleanly.
Exit status 0 when every step passed; the first failure ends it with a message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from gsocket.demo.ports import free_port
from gsocket.demo.processes import Child, wait_until
from gsocket.demo.redis_server import RedisServer

SITE = "site1.local"


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"wheel smoke: {message}")
    print(f"wheel smoke: ok: {message}")


def main(venv: Path) -> None:
    import gsocket

    check(
        Path(gsocket.__file__).resolve().is_relative_to(venv.resolve()),
        f"gsocket is imported from the venv ({gsocket.__file__})",
    )
    package = Path(gsocket.__file__).parent
    for data in ("demo/static/index.html", "demo/static/socket.io.min.js",
                 "demo/app/gsocket_demo/realtime/handlers.py"):  # fmt: skip
        check((package / data).is_file(), f"package data {data} is installed")

    script = str(venv / "bin" / "gsocket")
    work = Path(tempfile.mkdtemp(prefix="gsocket-wheel-"))
    port, dead_web = free_port(), free_port()
    redis = RedisServer(work / "redis").start()
    server: Child | None = None
    try:
        bench = work / "bench"
        (bench / "sites" / SITE).mkdir(parents=True)
        (bench / "sites" / SITE / "site_config.json").write_text("{}")
        (bench / "sites" / "apps.txt").write_text("frappe\n")
        (bench / "sites" / "common_site_config.json").write_text(
            json.dumps(
                {
                    "redis_queue": redis.url,
                    "socketio_port": port,
                    "webserver_host": "127.0.0.1",
                    "webserver_port": dead_web,
                }
            )  # fmt: skip
        )
        server = Child(
            "gsocket",
            [script, "serve", "--bench", str(bench), "--host", "127.0.0.1"],
            log_path=work / "gsocket.log",
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: answers(f"{base}/health"),
            20,
            "wheel smoke: gsocket's /health did not answer 200 within 20 s",
            error=SystemExit,
        )
        check(True, "gsocket serve is healthy (bridge subscribed to Redis)")

        # The checks run on the handshake's headers, as the desk sends them through nginx.
        headers = {"Origin": "http://127.0.0.1", "X-Frappe-Site-Name": SITE, "Cookie": "sid=Guest"}
        handshake = requests.get(
            f"{base}/socket.io/?EIO=4&transport=polling", headers=headers, timeout=5
        )
        check(handshake.text.startswith("0{"), f"Engine.IO handshake: {handshake.text[:60]}")
        sid = json.loads(handshake.text[1:])["sid"]
        url = f"{base}/socket.io/?EIO=4&transport=polling&sid={sid}"
        requests.post(url, data=f"40/{SITE},", headers=headers, timeout=5).raise_for_status()
        answer = requests.get(url, headers=headers, timeout=10).text
        # No web process listens on dead_web: the connect is refused the documented way.
        check(
            answer.startswith(f"44/{SITE},") and "Invalid" not in answer,
            f"namespace connect passes the header checks, refused at the web call: {answer}",
        )

        publish = subprocess.run(
            [script, "publish", "--bench", str(bench), "--site", SITE, "smoke", '{"a": 1}'],
            capture_output=True,
            text=True,
        )
        check(publish.returncode == 0, f"gsocket publish exits 0 ({publish.stderr.strip()})")
        doctor = subprocess.run(
            [script, "doctor", "--bench", str(bench)], capture_output=True, text=True
        )
        check(
            doctor.returncode == 1 and "OK    redis" in doctor.stdout,
            "gsocket doctor runs (Redis OK, the missing web process FAILs)",
        )
        url_doctor = subprocess.run(
            [script, "doctor", "--url", base, "--site", SITE, "--bench", str(bench)],
            capture_output=True,
            text=True,
        )
        check(
            url_doctor.returncode == 1 and "OK    reach:" in url_doctor.stdout,
            "gsocket doctor --url reaches gsocket's report of what arrived",
        )
        stopped = server.stop(timeout=20)
        check(stopped and server.returncode == 0, "gsocket serve exits 0 on SIGTERM")
        server = None
    finally:
        if server is not None:
            server.kill()
            sys.stderr.write((work / "gsocket.log").read_text(errors="replace"))
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    main(Path(sys.argv[1]))
