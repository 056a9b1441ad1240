"""The process entry point: gevent monkey-patching comes before any other import.

Locks, sockets and threads created before the patch would block the whole hub, so this module
patches first and only then imports the command line.  It is the only module of gsocket with an
import-time side effect.
"""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from gsocket.cli import main  # noqa: E402


def run() -> None:
    """Run the command line and end the process with its status.

    Once the command has finished, the process ends without Python's interpreter teardown: on
    Python 3.10 that teardown collects logging handlers after gevent's hub is gone and prints
    "RuntimeError: greenlet is being finalized" to stderr, which an operator would rightly take
    for a crash.  Logs and standard streams are flushed first.
    """
    status = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
