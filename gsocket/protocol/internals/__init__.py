"""Every hook gsocket has into another library's internals, and nothing else.

A minor release of python-socketio, python-engineio, gevent, gevent-websocket, PyMySQL, Frappe
or the ``json`` module may change what is private to it; each module here names the versions its
hooks were verified against (the ranges of gsocket/ops/dependencies.py, which gsocket refuses
to start outside of), so that a new release is checked here and only here.  The rest of
gsocket uses public APIs of those libraries and of this package; tests/test_layout.py fails on
a private name used anywhere else.

- :mod:`.socketio_hooks`: python-socketio's server hooks and lazily started manager;
- :mod:`.engineio_hooks`: python-engineio's session class, websocket loop and queue;
- :mod:`.gevent_hooks`: gevent's tracer, raw sockets, gevent-websocket's frame reads, a
  websocket's connection taken from gevent's WSGI handler (parked websockets);
- :mod:`.json_hooks`: the C JSON encoder built once;
- :mod:`.pymysql_hooks`: PyMySQL's TLS context; the database pool's reset in one write and
  look at an idle connection's socket;
- :mod:`.frappe_db_hooks`: Frappe's ``Database`` connection attributes, for the pool; its
  commit callbacks and ``begin``, for a context's last commit;
- :mod:`.frappe_conf_hooks`: Frappe's ``get_site_config``, kept while its files are unchanged.
"""
