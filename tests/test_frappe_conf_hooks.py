"""The environment part of the kept site config's stamp (gsocket/protocol/internals/
frappe_conf_hooks.py): read from ``os.environ``'s own dict for speed, it must still follow every
change Frappe's ``os.environ.get`` would see.  The whole cache is tested through Frappe on both
real benches (tests/realbench/ctx_scenarios.py)."""

from __future__ import annotations

import os

import pytest

from gsocket.protocol.internals import frappe_conf_hooks


def test_the_environment_stamp_follows_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAPPE_DB_HOST", raising=False)
    read = frappe_conf_hooks._environment_reader()
    before = read()
    monkeypatch.setenv("FRAPPE_DB_HOST", "db.elsewhere")
    changed = read()
    assert changed != before
    monkeypatch.setenv("FRAPPE_DB_HOST", "db.third")
    assert read() not in (before, changed)
    monkeypatch.delenv("FRAPPE_DB_HOST")
    assert read() == before


def test_another_mapping_put_in_os_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code that replaces ``os.environ`` changes what Frappe reads, so the stamp reads it too."""
    read = frappe_conf_hooks._environment_reader()
    before = read()
    monkeypatch.setattr(os, "environ", {**os.environ, "FRAPPE_DB_PORT": "3307"})
    assert read() != before
