"""Smoke test of an installed gsocket wheel, run by ``scripts/check-wheel`` inside its venv.

It uses what the wheel itself installed (the ``gsocket`` script, ``requests``) and Debian's
``redis-server``: the package must come from the venv, carry its data files, serve a bench,
answer a Socket.IO handshake and a namespace connect, publish, run the doctor and stop cleanly.
Exit status 0 when every step passed; the first failure ends it with a message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

SITE = "site1.local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"wheel smoke: {what} did not happen within {timeout:g} s")
        time.sleep(0.05)


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
    redis_port, port, dead_web = free_port(), free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    server: subprocess.Popen[bytes] | None = None
    try:
        bench = work / "bench"
        (bench / "sites" / SITE).mkdir(parents=True)
        (bench / "sites" / SITE / "site_config.json").write_text("{}")
        (bench / "sites" / "apps.txt").write_text("frappe\n")
        (bench / "sites" / "common_site_config.json").write_text(
            json.dumps(
                {
                    "redis_queue": f"redis://127.0.0.1:{redis_port}",
                    "socketio_port": port,
                    "webserver_host": "127.0.0.1",
                    "webserver_port": dead_web,
                }
            )  # fmt: skip
        )
        log = (work / "gsocket.log").open("wb")
        server = subprocess.Popen(
            [script, "serve", "--bench", str(bench), "--host", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        wait(lambda: answers(f"{base}/health"), "gsocket's /health answering 200")
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
        server.send_signal(signal.SIGTERM)
        check(server.wait(timeout=20) == 0, "gsocket serve exits 0 on SIGTERM")
        server = None
    finally:
        if server is not None:
            server.kill()
            server.wait()
            sys.stderr.write((work / "gsocket.log").read_text(errors="replace"))
        redis.terminate()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    main(Path(sys.argv[1]))
