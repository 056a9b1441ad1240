"""The ``gsocket`` command line: a thin layer over the application factory and the tools.

Run it through ``python -m gsocket`` or the ``gsocket`` script, both of which monkey-patch
with gevent before this module is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import gevent

from gsocket.config import ConfigError, load_config
from gsocket.errors import StartupError

log = logging.getLogger("gsocket.cli")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    """Send gsocket's log lines to stderr (supervisord collects them into the bench's logs/)."""
    logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("gsocket").setLevel(level.upper())


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a bench until SIGTERM or SIGINT."""
    from gsocket.app import create_app
    from gsocket.frappe_ctx import check_startup_guards

    config = load_config(args.bench).with_overrides(
        port=args.port, host=args.host, log_level=args.log_level
    )
    setup_logging(config.log_level)
    check_startup_guards()
    os.chdir(config.sites_path)
    app = create_app(config)
    stopping = gevent.event.Event()

    def request_stop(signum: int) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, request_stop, signum)
    app.start()
    stopping.wait()
    app.stop()
    log.info("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every ``gsocket`` command."""
    parser = argparse.ArgumentParser(
        prog="gsocket", description="A gevent socket.io server for Frappe benches."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a bench's realtime traffic")
    serve.add_argument("--bench", required=True, help="the bench folder (holds sites/ and apps/)")
    serve.add_argument("--port", type=int, help="override socketio_port")
    serve.add_argument("--host", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gsocket`` command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, StartupError) as e:
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
        log.error("%s", e)
        return 2
