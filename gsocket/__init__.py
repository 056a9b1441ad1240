"""gsocket: a gevent socket.io server that replaces a Frappe bench's Node realtime process.

The public surface is small: ``realtime`` (the handler registry app authors decorate with),
``Socket`` (what handlers receive), ``Registry``, ``create_app`` and ``load_config``.  They are
resolved lazily so that importing the package does not import networking libraries before the
entry point has monkey-patched with gevent.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "realtime": "gsocket.handlers.registry",
    "Registry": "gsocket.handlers.registry",
    "Socket": "gsocket.handlers.socket",
    "create_app": "gsocket.app",
    "load_config": "gsocket.config",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gsocket' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
