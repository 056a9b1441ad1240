"""``gsocket demo``: a demo bench, web process and page that show gsocket working in a browser.

:mod:`gsocket.demo.runner` starts and stops the parts, :mod:`gsocket.demo.web` is the demo web
process, ``static/`` holds the page (with the vendored socket.io-client browser build) and
``app/gsocket_demo`` is the demo app copied onto the demo bench.

The local-stack pieces the runner starts its parts with are written once here and shared with
the test suite, the benchmarks and the scripts (which import them; never the other way):
:mod:`~gsocket.demo.processes` (a child process, a bounded poll), :mod:`~gsocket.demo.ports`
(free ports, waiting for one) and :mod:`~gsocket.demo.redis_server` (a throw-away
``redis-server``).  They use only the standard library and redis-py.
"""
