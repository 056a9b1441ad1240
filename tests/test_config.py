"""Reading a bench's configuration like the Node server reads it (contract section 2)."""

from __future__ import annotations

import json

import pytest

from gsocket.config import DEFAULT_REDIS_QUEUE, ConfigError, load_config
from gsocket.contract.sites import hostname_of, is_trusted_proxy, origin_matches_host, resolve_site


def bench(tmp_path, conf):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "common_site_config.json").write_text(json.dumps(conf))
    return tmp_path


def test_defaults(tmp_path):
    config = load_config(bench(tmp_path, {}), env={})
    assert config.port == 9000 and config.uds is None
    assert config.redis_url == DEFAULT_REDIS_QUEUE
    assert config.webserver_port == 8000 and config.webserver_host is None
    assert config.sites_path == tmp_path.resolve() / "sites"
    assert not config.developer_mode


def test_bench_keys(tmp_path):
    conf = {
        "socketio_port": 9012,
        "socketio_uds": "/run/x.sock",
        "redis_queue": "redis://q:1",
        "redis_socketio": "redis://s:2",
        "default_site": "a.local",
        "webserver_port": 8004,
        "webserver_host": "10.0.0.2",
        "developer_mode": 1,
    }
    config = load_config(bench(tmp_path, conf), env={})
    assert (config.port, config.uds, config.redis_url) == (9012, "/run/x.sock", "redis://q:1")
    assert (config.default_site, config.webserver_port) == ("a.local", 8004)
    assert config.webserver_host == "10.0.0.2" and config.developer_mode


def test_older_benches_publish_on_redis_socketio(tmp_path):
    assert load_config(bench(tmp_path, {"redis_socketio": "redis://s:2"}), env={}).redis_url == (
        "redis://s:2"
    )


def test_environment_overrides(tmp_path):
    env = {
        "FRAPPE_REDIS_QUEUE": "redis://env:3",
        "FRAPPE_SOCKETIO_PORT": "9100",
        "FRAPPE_SOCKETIO_UDS": "/tmp/e.sock",
        "FRAPPE_SITE": "env.local",
    }
    config = load_config(bench(tmp_path, {"socketio_port": 9000, "default_site": "x"}), env=env)
    assert (config.redis_url, config.port, config.uds, config.default_site) == (
        "redis://env:3",
        9100,
        "/tmp/e.sock",
        "env.local",
    )


@pytest.mark.parametrize(
    "conf, fragment",
    [
        ({"socketio_port": "nine"}, "bad port"),
        ({"gsocket": {"limits": {"nope": 1}}}, "unknown gsocket.limits"),
        ({"gsocket": {"trusted_proxies": "10.0.0.1"}}, "must be a list"),
        ({"gsocket": {"recovery_seconds": -1}}, "recovery_seconds must be 0"),
        ({"gsocket": {"recovery_missed": 0}}, "recovery_missed 1 or more"),
    ],
)
def test_bad_values_say_what_is_wrong(tmp_path, conf, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(bench(tmp_path, conf), env={})


def test_recovery_is_off_unless_asked(tmp_path):
    assert load_config(bench(tmp_path, {}), env={}).recovery_seconds == 0
    conf = {"gsocket": {"recovery_seconds": 120, "recovery_events": 500, "recovery_missed": 50}}
    (tmp_path / "on").mkdir()
    config = load_config(bench(tmp_path / "on", conf), env={})
    assert (config.recovery_seconds, config.recovery_events, config.recovery_missed) == (
        120,
        500,
        50,
    )


def test_not_a_bench(tmp_path):
    with pytest.raises(ConfigError, match="no sites/ folder"):
        load_config(tmp_path, env={})


def test_limits_from_config(tmp_path):
    config = load_config(bench(tmp_path, {"gsocket": {"limits": {"handler_timeout": 2}}}), env={})
    assert config.limits.handler_timeout == 2.0


@pytest.mark.parametrize(
    "value, host",
    [
        ("site1.local:8000", "site1.local"),
        ("http://Site1.Local:8000", "site1.local"),
        ("https://[::1]:9000", "::1"),
        ("", None),
        (None, None),
    ],
)
def test_hostname_of(value, host):
    assert hostname_of(value) == host
    assert hostname_of(value) == host  # the remembered answer is the same


def test_long_values_are_answered_but_not_remembered():
    """The parse caches hold short values only: a client's 64 KiB headers must not fill
    them (1 024 such values would pin 64 MiB)."""
    from gsocket.contract import sites

    long_origin = "http://" + "a" * 5000 + ".example"
    before = sites._cached_hostname.cache_info().currsize
    assert hostname_of(long_origin) == "a" * 5000 + ".example"
    assert sites._cached_hostname.cache_info().currsize == before
    assert not is_trusted_proxy("1" * 5000, None)
    assert is_trusted_proxy("127.0.0.1", None) and not is_trusted_proxy("10.0.0.1", None)
    assert is_trusted_proxy("10.0.0.1", ("10.0.0.0/8",)) and not is_trusted_proxy("x", ())


def test_site_resolution_order():
    env = {
        "HTTP_X_FRAPPE_SITE_NAME": "a.local:80",
        "HTTP_HOST": "localhost:9000",
        "HTTP_ORIGIN": "http://c.local",
        "REMOTE_ADDR": "127.0.0.1",
    }
    assert resolve_site(env, "d.local") == "a.local"
    del env["HTTP_X_FRAPPE_SITE_NAME"]
    assert resolve_site(env, "d.local") == "d.local"
    assert resolve_site(env, None) == "c.local"
    del env["HTTP_ORIGIN"]
    assert resolve_site(env, None) == "localhost"


def test_site_header_only_from_trusted_proxies():
    env = {
        "HTTP_X_FRAPPE_SITE_NAME": "victim.local",
        "HTTP_HOST": "attacker.local",
        "HTTP_ORIGIN": "http://attacker.local",
        "REMOTE_ADDR": "203.0.113.9",
    }
    assert resolve_site(env, None) == "attacker.local"
    assert resolve_site(env, None, ("203.0.113.0/24",)) == "victim.local"
    assert is_trusted_proxy("", None) and is_trusted_proxy("::1", None)
    assert not is_trusted_proxy("10.1.1.1", None)


def test_origin_must_match_host():
    assert origin_matches_host({"HTTP_ORIGIN": "https://a.local", "HTTP_HOST": "a.local:9000"})
    assert not origin_matches_host({"HTTP_ORIGIN": "https://b.local", "HTTP_HOST": "a.local"})
    assert not origin_matches_host({"HTTP_HOST": "a.local"})
