"""Give ``frappe.realtime`` the documented publish helpers in every Python process of a bench.

App code in the web process and the workers writes ``from frappe.realtime import
publish_to_user`` as Frappe's documentation shows; Frappe v15's ``frappe.realtime`` has no
such names.  Making gsocket a Frappe app would not be enough: a worker imports the job's module
before it reads any app hooks, and the web process imports app modules in an order nobody
controls.  So the names are added by the import system itself:

installing gsocket puts ``gsocket-frappe-helpers.pth`` into the environment's site-packages,
whose one line imports this module and calls :func:`install` at interpreter start.  That
only puts a finder first in ``sys.meta_path``, which notices the import of ``frappe.realtime``
and, right after Frappe's own module has run, adds the helpers it lacks
(:func:`gsocket.contract.publish.add_frappe_helpers`); on newer Frappe, which has them, it adds
nothing.  The cost for every other import is one string comparison; nothing else of gsocket
is imported until Frappe's module is.  ``GSOCKET_NO_FRAPPE_HELPERS=1`` in the environment
turns it off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "frappe.realtime"


class _HelpersLoader(importlib.abc.Loader):
    """Runs Frappe's loader, then adds the helpers; everything else is Frappe's loader's."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        from gsocket.contract.publish import add_frappe_helpers

        add_frappe_helpers(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class FrappeRealtimeFinder(importlib.abc.MetaPathFinder):
    """Finds ``frappe.realtime`` as the other finders do and wraps its loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HelpersLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Append the finder once (a second ``.pth`` run or an explicit call adds nothing)."""
    if os.environ.get("GSOCKET_NO_FRAPPE_HELPERS") == "1":
        return
    if any(isinstance(finder, FrappeRealtimeFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, FrappeRealtimeFinder())
    module = sys.modules.get(TARGET)
    if module is not None:
        from gsocket.contract.publish import add_frappe_helpers

        add_frappe_helpers(module)
