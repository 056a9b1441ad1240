"""Make Frappe's realtime import paths resolve to gsocket's objects, on every Frappe version.

App authors write ``from frappe.realtime import Socket, realtime`` in
``<app>/realtime/handlers.py``, and code written for Frappe's own Python realtime server also
imports ``from frappe.realtime.socket import Socket, SyncSocket`` or
``from frappe.realtime.registry import realtime``.  Frappe v15 has a ``frappe.realtime`` module
(not a package) without those names, newer Frappe has its own server behind them, and tests or
the demo may have no Frappe at all; in every case the handler modules must register into the
registry this process dispatches from.  So before any handler module is imported:

- ``Socket``, ``SyncSocket`` and ``realtime`` are set on ``frappe.realtime`` (module
  attributes win over the lazy ``__getattr__`` newer Frappe uses for them);
- ``frappe.realtime.socket`` and ``frappe.realtime.registry`` are entered in ``sys.modules``
  as small modules carrying gsocket's objects, so the import system finds them without asking
  whether ``frappe.realtime`` is a package, and never loads Frappe's server modules of those
  names;
- when Frappe is not importable, a minimal stand-in ``frappe`` package is created (marked
  ``__gsocket_stub__`` so that nothing mistakes it for Frappe).

This happens only in the gsocket process, which replaces Frappe's realtime server; the web
process and workers keep Frappe's modules.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import Any

from gsocket.handlers.registry import Handler, Registry, is_async_callable
from gsocket.handlers.socket import AsyncSocket, Socket, SyncSocket

log = logging.getLogger("gsocket.frappe_shim")


def _stub_package(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"gsocket stand-in for {name}: Frappe is not installed here.")
    module.__path__ = []
    module.__gsocket_stub__ = True  # type: ignore[attr-defined]
    sys.modules[name] = module
    return module


def install_frappe_realtime(registry: Registry) -> types.ModuleType:
    """Expose gsocket's handler API under ``frappe.realtime`` and its submodules.

    :param registry: the registry handler modules must register into.
    :returns: the ``frappe.realtime`` module that now carries the names.
    """
    try:
        frappe = importlib.import_module("frappe")
    except ImportError:
        log.info("Frappe is not importable; handler modules get a stand-in frappe.realtime")
        frappe = _stub_package("frappe")
    try:
        module = importlib.import_module("frappe.realtime")
    except ImportError:
        module = types.ModuleType("frappe.realtime")
        sys.modules["frappe.realtime"] = module
    frappe.realtime = module  # type: ignore[attr-defined]
    module.Socket = Socket  # type: ignore[attr-defined]
    module.SyncSocket = SyncSocket  # type: ignore[attr-defined]
    module.realtime = registry  # type: ignore[attr-defined]
    submodules: dict[str, dict[str, Any]] = {
        "socket": {"Socket": Socket, "SyncSocket": SyncSocket, "AsyncSocket": AsyncSocket},
        "registry": {
            "realtime": registry,
            "Registry": Registry,
            "Handler": Handler,
            "is_async_callable": is_async_callable,
        },
    }
    for name, names in submodules.items():
        full_name = f"frappe.realtime.{name}"
        alias = types.ModuleType(full_name, f"gsocket's {full_name}: the names handlers import.")
        alias.__dict__.update(names)
        alias.__gsocket_alias__ = True  # type: ignore[attr-defined]
        sys.modules[full_name] = alias
        setattr(module, name, alias)
    return module
