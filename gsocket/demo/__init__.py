"""``gsocket demo``: a demo bench, web process and page that show gsocket working in a browser.

:mod:`gsocket.demo.runner` starts and stops the parts, :mod:`gsocket.demo.web` is the demo web
process, ``static/`` holds the page (with the vendored socket.io-client browser build) and
``app/gsocket_demo`` is the demo app copied onto the demo bench.
"""
