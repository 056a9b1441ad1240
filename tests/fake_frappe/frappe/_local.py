"""The two shapes of ``frappe.local``, chosen by ``FAKE_FRAPPE_LOCAL`` when frappe is imported.

``werkzeug`` (the default) is Frappe v15: a ``werkzeug.local.Local``, whose storage is a
context variable holding a dict that is copied on every write.  ``contextvar`` is newer Frappe:
a context variable holding one plain dict that every write *mutates in place*, so two contexts
that share the dict (a copied context) share all of ``frappe.local``.  Both are looked up
through the current ``contextvars`` context, which is what gsocket's isolation relies on.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any

from werkzeug.local import Local as WerkzeugLocal
from werkzeug.local import LocalProxy
from werkzeug.local import release_local as release_werkzeug_local

SHAPE = os.environ.get("FAKE_FRAPPE_LOCAL", "werkzeug")
if SHAPE not in ("werkzeug", "contextvar"):
    raise ImportError(f"FAKE_FRAPPE_LOCAL must be 'werkzeug' or 'contextvar', not {SHAPE!r}")

_state: ContextVar[dict[str, Any]] = ContextVar("fake_frappe_local")


class DictLocal:
    """Newer Frappe's ``Local``: attributes live in the dict held by ``_state``."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        values = _state.get(None)
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        values = _state.get(None)
        if values is None:
            values = {}
            _state.set(values)
        values[name] = value

    def __delattr__(self, name: str) -> None:
        values = _state.get(None)
        if values is None or name not in values:
            raise AttributeError(name)
        del values[name]

    def __iter__(self) -> Any:
        return iter(_state.get({}).items())

    def __call__(self, name: str) -> LocalProxy:
        def lookup() -> Any:
            values = _state.get(None)
            if values is None or name not in values:
                raise RuntimeError(f"frappe.local.{name} is not bound")
            return values[name]

        return LocalProxy(lookup)


def new_local() -> Any:
    return WerkzeugLocal() if SHAPE == "werkzeug" else DictLocal()


def release_local(local: Any) -> None:
    if isinstance(local, DictLocal):
        _state.set({})
    else:
        release_werkzeug_local(local)


def local_is_empty(local: Any) -> bool:
    """Whether nothing at all is bound in ``local`` in the current context."""
    return not list(iter(local))
