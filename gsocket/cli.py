"""The ``gsocket`` command line: a thin layer over the application factory and the tools.

Run it through ``python -m gsocket`` or the ``gsocket`` script, both of which monkey-patch
with gevent before this module is imported.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import gevent

from gsocket import __version__
from gsocket.config import LOG_FORMATS, ConfigError, load_config
from gsocket.errors import StartupError
from gsocket.ops.dependencies import check_supported
from gsocket.ops.logs import LOG_FORMAT, setup_logging

if TYPE_CHECKING:
    from gsocket.app import App

log = logging.getLogger("gsocket.cli")

#: Seconds a child of ``serve --handover`` waits for its bridge before it reports ready anyway.
READY_SUBSCRIBE_WAIT = 3.0
#: Allocations between the cyclic collector's youngest collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Run Python's cyclic collector less often in a server that holds 10 000 connections.

    With the default thresholds a full collection came every ~1 000 connects of a storm and
    walked every live object (0.1-0.4 s each, a million objects at 10 000 clients): about a
    third of a connect's CPU, and a stall of every socket each time.  Fourteen times fewer
    young collections also mean fourteen times fewer full ones; garbage without cycles is
    still freed at once by reference counting.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a bench until SIGTERM or SIGINT (with ``--handover``, through a parent process).

    Refuses first to run on dependency versions it was not tested with (see
    :mod:`gsocket.ops.dependencies`), before it reads the bench: the environment is at fault then.
    """
    check_supported()
    config = load_config(args.bench)
    if args.process is not None:
        config = config.for_process(args.process)
    elif config.processes > 1:
        raise ConfigError(
            f"gsocket.processes is {config.processes}: start each with --process K "
            "(gsocket setup supervisor writes them)"
        )
    config = config.with_overrides(
        port=args.port,
        host=args.host,
        log_level=args.log_level,
        log_format=args.log_format,
        drain_timeout=args.drain_timeout,
        reuse_port=args.reuse_port,
        scale_out=args.scale_out,
    )
    setup_logging(config.log_level, config.log_format, split=True)
    tune_collector()
    if args.handover:
        from gsocket.ops.handover import Master

        return Master(config, args.argv).run()

    from gsocket.app import create_app
    from gsocket.frappe_ctx import check_startup_guards

    check_startup_guards()
    os.chdir(config.sites_path)
    app = create_app(config)
    stopping = gevent.event.Event()

    def request_stop(signum: int) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            # A second Ctrl-C (or an impatient operator): leave now, drain or not.
            log.warning("received %s again: exiting before the drain is over", name)
            os._exit(1)
        log.info("received %s: draining for up to %.1f s", name, config.drain_timeout)
        stopping.set()

    listener = None
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    if args.listen_fd is not None:
        from gsocket.ops.handover import watch_parent

        # A child of --handover: the parent forwards Ctrl-C as SIGTERM, so the terminal's own
        # SIGINT to the whole process group must not count as a second signal; SIGHUP is the
        # parent's (a hand-over), never a reason for a child to die.
        stop_signals = (signal.SIGTERM,)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        watch_parent(stopping)
        listener = socket.socket(fileno=args.listen_fd)
    for signum in stop_signals:
        gevent.signal_handler(signum, request_stop, signum)
    app.start(listener)
    if args.ready_fd is not None:
        gevent.spawn(_report_ready, app, args.ready_fd)
    stopping.wait()
    app.stop()
    log.info("stopped")
    return 0


def _report_ready(app: App, ready_fd: int) -> None:
    """Tell the --handover parent that this process serves (once its bridge is subscribed)."""
    deadline = time.monotonic() + READY_SUBSCRIBE_WAIT
    while not app.bridge.subscribed and time.monotonic() < deadline:
        gevent.sleep(0.02)
    os.write(ready_fd, b"1")
    os.close(ready_fd)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check a bench for everything gsocket needs, or (``--url``) the path a browser takes to
    it; non-zero exit when a check fails."""
    # Verdict lines go to stdout; the modules' own warnings would only repeat them.
    setup_logging("ERROR")
    if args.url:
        from gsocket.ops.doctor_url import Target, run_url_doctor

        try:
            target = Target(
                args.url,
                site=args.site,
                resolve=args.resolve,
                ca_bundle=args.ca_bundle,
                sid=args.sid,
                token=args.token,
                timeout=args.timeout,
            )
        except ValueError as e:
            print(f"gsocket doctor: {e}", file=sys.stderr)
            return 2
        return run_url_doctor(target, bench=args.bench)
    if not args.bench:
        print("gsocket doctor: give --bench PATH, --url URL, or both", file=sys.stderr)
        return 2
    from gsocket.ops.doctor import run_doctor

    bench = os.path.abspath(args.bench)
    sites = os.path.join(bench, "sites")
    if os.path.isdir(sites):
        os.chdir(sites)  # as gsocket serve does: Frappe opens files relative to sites/
    return run_doctor(bench)


def cmd_setup_nginx(args: argparse.Namespace) -> int:
    """Write a complete nginx.conf for the bench, or show/make the change to its own."""
    from gsocket.ops.nginx_setup import setup_nginx

    return setup_nginx(
        load_config(args.bench), listen=args.listen, output=args.output, apply=args.apply
    )


def cmd_setup(args: argparse.Namespace) -> int:
    """Write the supervisord program or the Procfile line that runs gsocket on a bench."""
    from gsocket.ops.supervisor_setup import setup_procfile, setup_supervisor

    config = load_config(args.bench)
    setup = setup_supervisor if args.target == "supervisor" else setup_procfile
    return setup(config, apply=args.apply, python=args.python)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start Redis, a demo web process and gsocket on a demo bench; run until Ctrl-C."""
    from gsocket.demo.runner import DemoOptions, run_demo

    setup_logging(args.log_level)
    return run_demo(
        DemoOptions(
            web_port=args.web_port,
            socketio_port=args.socketio_port,
            redis_url=args.redis_url,
            log_level=args.log_level,
        )
    )


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish one realtime event on a bench's Redis, as ``frappe.publish_realtime`` does."""
    from gsocket.contract.publish import publish_command

    setup_logging("WARNING")
    return publish_command(
        args.bench,
        args.site,
        args.event,
        args.message,
        room=args.room,
        user=args.user,
        doctype=args.doctype,
        docname=args.docname,
        task_id=args.task_id,
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every ``gsocket`` command."""
    parser = argparse.ArgumentParser(
        prog="gsocket", description="A gevent socket.io server for Frappe benches."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"gsocket {__version__} (frappe-gsocket, Python {sys.version.split()[0]})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a bench's realtime traffic")
    serve.add_argument(
        "--bench",
        default=os.environ.get("FRAPPE_BENCH_ROOT"),
        required="FRAPPE_BENCH_ROOT" not in os.environ,
        help="the bench folder (holds sites/ and apps/); default: $FRAPPE_BENCH_ROOT",
    )
    serve.add_argument("--port", type=int, help="override socketio_port")
    serve.add_argument("--host", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text (default) or json: one JSON object a line"
    )
    serve.add_argument(
        "--drain-timeout", type=float, help="override gsocket.drain_timeout (seconds)"
    )
    serve.add_argument(
        "--reuse-port",
        action="store_const",
        const=True,
        help="bind with SO_REUSEPORT, for hand-over restarts (gsocket.reuse_port)",
    )
    serve.add_argument(
        "--scale-out",
        action="store_const",
        const=True,
        help="share rooms with other gsocket processes through Redis (gsocket.scale_out)",
    )
    serve.add_argument(
        "--process",
        type=int,
        metavar="K",
        help="serve process K (0-based) of gsocket.processes, on socketio_port + K",
    )
    serve.add_argument(
        "--handover",
        action="store_true",
        help="hold the socket in a parent process; SIGHUP restarts without a gap",
    )
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    doctor = commands.add_parser(
        "doctor",
        help="check a bench for everything gsocket needs, or the path a browser takes to it",
        description="With --bench: check the bench from the inside (configuration, Redis, web "
        "process, handlers). With --url: walk the path a browser takes through the proxy "
        "(gsocket reports what arrived at its end) and name the hop that changed what; with "
        "both, the published-event check uses the bench's Redis.",
    )
    doctor.add_argument("--bench", help="the bench folder")
    doctor.add_argument(
        "--url", help="the site's URL as users open it, e.g. https://erp.example.com"
    )
    doctor.add_argument("--site", help="the site (namespace) expected; default: the URL's host")
    doctor.add_argument("--sid", help="connect with this sid cookie instead of as Guest")
    doctor.add_argument("--token", help="connect with Authorization: token API_KEY:API_SECRET")
    doctor.add_argument(
        "--resolve", metavar="ADDRESS", help="connect there instead of the URL host's address"
    )
    doctor.add_argument("--ca-bundle", help="trust this CA file for the URL's certificate")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds per step (5)")
    doctor.set_defaults(func=cmd_doctor)

    setup = commands.add_parser("setup", help="run gsocket in place of the Node realtime process")
    targets = setup.add_subparsers(dest="target", required=True)
    for target, text in (
        ("supervisor", "write config/gsocket.conf and the change to config/supervisor.conf"),
        ("procfile", "show or write the Procfile line of a development bench"),
    ):
        sub = targets.add_parser(target, help=text)
        sub.add_argument("--bench", required=True, help="the bench folder")
        sub.add_argument("--apply", action="store_true", help="edit the file (keeps a copy)")
        sub.add_argument("--python", help="interpreter with gsocket (default: this one)")
        sub.set_defaults(func=cmd_setup)
    nginx = targets.add_parser(
        "nginx",
        help="nginx in front of the web process and every gsocket process (routes by session)",
    )
    nginx.add_argument("--bench", required=True, help="the bench folder")
    nginx.add_argument("--listen", help="with --output: where nginx listens, e.g. 0.0.0.0:80")
    nginx.add_argument("--output", help="write a complete nginx.conf to this file")
    nginx.add_argument("--apply", action="store_true", help="edit config/nginx.conf (keeps a copy)")
    nginx.set_defaults(func=cmd_setup_nginx)

    demo = commands.add_parser(
        "demo",
        help="see gsocket work: Redis, a demo site and gsocket, one URL to open",
        description="Start a Redis (the system's redis-server), a demo web process with three "
        "users and a demo app with custom handlers, and gsocket on a temporary demo bench, all "
        "on 127.0.0.1; print the URL of the demo page. Ctrl-C stops everything. Without "
        "redis-server, install it (apt-get install redis-server, brew install redis) or pass "
        "--redis-url of a scratch Redis.",
    )
    demo.add_argument(
        "--web-port", type=int, help="port of the page (default 8000, or a free one if taken)"
    )
    demo.add_argument(
        "--socketio-port", type=int, help="port of gsocket (default 9000, or a free one if taken)"
    )
    demo.add_argument("--redis-url", help="use this running Redis instead of redis-server")
    demo.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    demo.set_defaults(func=cmd_demo)

    publish = commands.add_parser(
        "publish",
        help="publish a realtime event on a bench's Redis",
        description="Publish EVENT with the JSON message on the bench's redis_queue, exactly "
        "as frappe.publish_realtime does: without --room, the room is derived from --task-id, "
        "--user or --doctype/--docname, else 'all'.",
    )
    publish.add_argument("--bench", required=True, help="the bench folder (holds sites/)")
    publish.add_argument("--site", required=True, help="the site whose sockets receive it")
    publish.add_argument("--room", help="e.g. user:jane@example.com, doc:ToDo/TD-0001, website")
    publish.add_argument("--user", help="publish to this user's room")
    publish.add_argument("--doctype", help="with --docname: publish to that document's room")
    publish.add_argument("--docname", help="the document name")
    publish.add_argument("--task-id", help="publish to this task's task_progress room")
    publish.add_argument("event", help="the event name, e.g. msgprint or list_update")
    publish.add_argument("message", nargs="?", help="the message as JSON (default {})")
    publish.set_defaults(func=cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gsocket`` command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except (ConfigError, StartupError) as e:
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
        log.error("%s", e)
        return 2
