"""The process entry point: gevent monkey-patching comes before any other import.

Locks, sockets and threads created before the patch would block the whole hub, so this module
patches first and only then imports the command line.  It is the only module of gsocket with an
import-time side effect.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from gsocket.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
