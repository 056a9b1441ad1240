"""Make ``from frappe.realtime import Socket, realtime`` resolve to gsocket's objects.

App authors write that import in ``<app>/realtime/handlers.py``.  Frappe v15 has a
``frappe.realtime`` module without those names, newer Frappe has its own, and tests or the
demo may have no Frappe at all; in every case the handler modules must register into the
registry this process dispatches from.  So before any handler module is imported, the two
names are set on ``frappe.realtime`` — creating a minimal stand-in ``frappe`` package when
Frappe is not importable (marked ``__gsocket_stub__`` so that nothing mistakes it for Frappe).
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

from gsocket.registry import Registry
from gsocket.socket import Socket

log = logging.getLogger("gsocket.frappe_shim")


def _stub_package(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"gsocket stand-in for {name}: Frappe is not installed here.")
    module.__path__ = []
    module.__gsocket_stub__ = True  # type: ignore[attr-defined]
    sys.modules[name] = module
    return module


def install_frappe_realtime(registry: Registry) -> types.ModuleType:
    """Expose ``Socket`` and ``registry`` as ``frappe.realtime.Socket``/``.realtime``.

    :param registry: the registry handler modules must register into.
    :returns: the ``frappe.realtime`` module that now carries both names.
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
    module.realtime = registry  # type: ignore[attr-defined]
    return module
