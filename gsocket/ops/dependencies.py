"""The dependency versions gsocket was tested with, and the check that refuses the others.

gsocket reaches into the private internals of python-socketio, python-engineio, gevent,
gevent-websocket and redis-py (hooks the public APIs do not offer: see issue 14).  Private code
changes without notice in any release, and what breaks then is rarely an import error: a
renamed attribute can switch a guard off, or a changed queue can lose messages under load.  So
the supported range of each of those libraries is the range the whole test suite ran against:
the lowest versions (CI's Python 3.10 lane, ``.ci/lowest-constraints.txt``, Frappe v15's pins)
up to the newest release tested (CI's main lane, ``.ci/newest-constraints.txt``).
``setup.cfg`` declares the same ranges, so pip keeps a fresh install inside them;
``tests/test_packaging.py`` checks that the three agree with :data:`SUPPORTED`.

pip does not keep an existing environment inside them: ``bench update`` installing a Frappe
whose pins need a newer redis-py only prints a conflict warning.  So ``gsocket serve`` refuses
to start outside the range (:func:`check_supported`), rather than only ``gsocket doctor``
failing: a refusal at start-up, during the deploy that caused it, with the package, the version
found and the range in the message, is found and fixed at once; a server that starts on untested
internals fails later, under load, in ways no message names.  ``gsocket doctor`` reports the
same finding (:func:`unsupported`) so it can be seen before a restart.

Raising an upper bound is a release step: run the suite at the new version (put it in
``.ci/newest-constraints.txt``), then move the bound here and in ``setup.cfg``.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable

from gsocket.errors import StartupError

SUPPORTED: dict[str, tuple[str, str]] = {
    "python-socketio": ("5.14.0", "5.18.1"),
    "python-engineio": ("4.11.0", "4.15.1"),
    "gevent": ("24.11.1", "26.9.0"),
    "gevent-websocket": ("0.10.1", "0.10.1"),
    "redis": ("4.5.5", "8.1.0"),
}
"""Distribution name -> (lowest, newest) version tested, both included."""

_VERSION = re.compile(r"(\d+(?:\.\d+)*)(.*)", re.ASCII)
_PRE_RELEASE = re.compile(r"[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)\d*", re.IGNORECASE)


def version_key(version: str) -> tuple[tuple[int, ...], int]:
    """An order on version strings, enough for release bounds.

    The release numbers compare with trailing zeros ignored (``5.18`` is ``5.18.0``); a
    pre-release or development version sorts before its release (``5.19.0rc1`` is above
    ``5.18.1`` and ``5.14.0rc1`` below ``5.14.0``); a post-release or local version counts
    as its release.  Written here rather than taken from ``packaging``, which a bench's
    environment need not have.
    """
    match = _VERSION.match(version.strip().lstrip("vV"))
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    release = tuple(int(part) for part in match.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    return release, 0 if _PRE_RELEASE.match(match.group(2)) else 1


def requirement(name: str) -> str:
    """The requirement ``setup.cfg`` declares for ``name``: ``python-socketio>=5.14.0,<=5.18.1``."""
    lowest, newest = SUPPORTED[name]
    return f"{name}>={lowest},<={newest}"


def unsupported(
    version_of: Callable[[str], str] = importlib.metadata.version,
) -> list[str]:
    """One sentence per dependency installed outside its tested range (or not installed).

    :param version_of: the installed version of a distribution, by name (raises
        ``importlib.metadata.PackageNotFoundError`` when it is not installed).
    """
    problems = []
    for name, (lowest, newest) in SUPPORTED.items():
        try:
            found = version_of(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed; gsocket supports {lowest} to {newest}")
            continue
        try:
            key = version_key(found)
        except ValueError:
            key = None
        if key is None or not version_key(lowest) <= key <= version_key(newest):
            problems.append(
                f"{name} {found} is installed; gsocket supports {lowest} to {newest} "
                f"(the versions it was tested with): pip install '{requirement(name)}', "
                "or a gsocket release that supports it"
            )
    return problems


def check_supported(
    version_of: Callable[[str], str] = importlib.metadata.version,
) -> None:
    """Refuse to start on a dependency outside its tested range.

    :raises StartupError: naming each such package, the version found and the range.
    """
    problems = unsupported(version_of)
    if problems:
        raise StartupError("gsocket does not start: " + "; ".join(problems))
