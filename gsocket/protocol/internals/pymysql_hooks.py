"""PyMySQL's internals that gsocket relies on, in one place.

- :func:`share_pymysql_default_tls_context`: PyMySQL builds its TLS context in the private
  ``Connection._create_ssl_ctx``; the one for connections without TLS settings is built once.
- :func:`write_reset`, :func:`read_commit`, :func:`read_reset`, :func:`connection_socket`:
  what the database pool (gsocket/contract/dbpool.py) needs and PyMySQL does not offer:
  ``COM_RESET_CONNECTION`` with the commands after it (and a ``COMMIT`` before it) in one
  write, and the socket of an idle connection to look at.

Verified against PyMySQL 1.1.1 (the version Frappe v15 and develop pin) and 1.2.x (1.2.4);
the TLS hook is only put in place for PyMySQL from 1.2 below 2.0, where that method exists,
and the pool is only used where :func:`pool_supported` says so.
"""

from __future__ import annotations

from typing import Any

POOL_VERIFIED = ((1, 1, 1), (1, 3, 0))
"""The PyMySQL versions the pool's hooks were verified with: the lowest, and the first not."""

COM_RESET_CONNECTION = 0x1F
"""The command PyMySQL does not name or offer as a method."""

COM_QUERY = 0x03
"""A text query: the ``COMMIT`` and the statements written with the reset."""


def pool_supported() -> bool:
    """Whether the installed PyMySQL is one the pool's hooks were verified with."""
    try:
        import pymysql

        version = tuple(int(part) for part in pymysql.VERSION[:3])
    except (ImportError, AttributeError, ValueError):
        return False
    low, high = POOL_VERIFIED
    return low <= version < high


def is_connection(conn: Any) -> bool:
    """Whether ``conn`` is a PyMySQL connection (what the pool knows how to reset)."""
    from pymysql.connections import Connection

    return isinstance(conn, Connection)


def connection_socket(conn: Any) -> Any:
    """The socket of a PyMySQL connection (``Connection._sock``), None once it is closed."""
    return conn._sock


def result_unread(conn: Any) -> bool:
    """Whether an unbuffered result of ``conn`` is still being read (``_result`` with
    ``unbuffered_active``): PyMySQL's ``commit()`` reads its rest first, a command written
    after it would be read as its rows."""
    return conn._result is not None and conn._result.unbuffered_active


def write_reset(conn: Any, statements: list[str], commit: bool = False) -> None:
    """Write ``COMMIT`` (with ``commit``), ``COM_RESET_CONNECTION`` and each of
    ``statements``, all in one write; the answers are read by :func:`read_commit` (first,
    with ``commit``) and :func:`read_reset`.

    One write instead of one round trip each: on loopback each ``send`` of a command costs the
    hub about as much CPU as parsing its answer.  MariaDB reads the commands one after another
    from the socket and answers each in order, whatever the one before answered.  Uses
    ``Connection._sock``, ``_result`` (with ``unbuffered_active``), ``_write_bytes``: the same
    in PyMySQL 1.1.1 and 1.2.4.
    """
    if conn._sock is None:
        raise ConnectionError("the connection is closed")
    if result_unread(conn):
        raise RuntimeError("an unbuffered result was left unread")
    packets = [bytes((COM_QUERY,)) + b"COMMIT"] if commit else []
    packets.append(bytes((COM_RESET_CONNECTION,)))
    packets += [bytes((COM_QUERY,)) + sql.encode(conn.encoding) for sql in statements]
    conn._write_bytes(b"".join(len(p).to_bytes(3, "little") + b"\0" + p for p in packets))


def read_commit(conn: Any) -> None:
    """Read the answer to the ``COMMIT`` of :func:`write_reset`; raise PyMySQL's error when
    the server refused it or the connection was lost before it answered (as ``commit()``
    would), and ``OperationalError`` (commands out of sync) when the answer is not an OK
    packet.  ``_next_seq_id`` and ``_read_ok_packet()``, as in :func:`read_reset`."""
    conn._next_seq_id = 1
    conn._read_ok_packet()


def read_reset(conn: Any, statements: list[str]) -> int | None:
    """Read the answers to ``COM_RESET_CONNECTION`` and ``statements`` of :func:`write_reset`
    in turn; return the integer the last one answered, or None when its answer was not one
    row of one integer (the connection is then out of step with its commands).

    ``statements`` are what :func:`write_reset` sent: the first answered by an OK packet (a
    ``SET``), the last a ``SELECT`` of one integer, any between them read as PyMySQL reads a
    query's answer.  The first and last are read packet by packet instead of through
    PyMySQL's result objects (column descriptions, converters): the same checks for a third
    of the hub's CPU.  Uses ``_next_seq_id``, ``_read_ok_packet()`` (no argument; raises on
    anything but an OK packet and updates ``server_status``, which ``get_autocommit()``
    reads), ``_read_query_result()``, ``_read_packet()`` (raises the server's error on an
    error packet), ``_result`` (None, as ``connect()`` leaves it) and the packets'
    ``get_all_data()``, ``is_eof_packet()``, ``read_length_coded_string()``: the same in
    PyMySQL 1.1.1 and 1.2.4.  The answer to a one-column ``SELECT`` is, without
    ``CLIENT_DEPRECATE_EOF`` (which PyMySQL does not ask for): the column count, the
    column's description, EOF, the row, EOF.
    """
    conn._next_seq_id = 1
    conn._read_ok_packet()
    conn._next_seq_id = 1
    conn._read_ok_packet()
    for _ in statements[1:-1]:
        conn._next_seq_id = 1
        conn._read_query_result()
    conn._next_seq_id = 1
    conn._result = None
    if conn._read_packet().get_all_data() != b"\x01":
        return None
    conn._read_packet()
    if not conn._read_packet().is_eof_packet():
        return None
    value = conn._read_packet().read_length_coded_string()
    if not conn._read_packet().is_eof_packet() or value is None or not value.isdigit():
        return None
    return int(value)


def share_pymysql_default_tls_context() -> bool:
    """Make PyMySQL build its default TLS context once per process instead of per connection.

    PyMySQL 1.2 tries TLS on every connection that has no TLS settings ("preferred" mode) and
    builds a fresh ``ssl`` default context for it, loading the system CA bundle each time:
    tens of milliseconds of CPU per ``frappe.connect``, all of it blocking the gevent hub
    (measured in benchmarks/FRAPPE_CTX.md).  That context is the same every time (no CA, no
    certificate, no host check), and an ``SSLContext`` is made to be shared, so the first
    one is kept and reused.  Connections with TLS settings (``db_ssl_ca`` and friends in the
    site config) still get a context of their own.  Returns whether the sharing is in place.
    """
    try:
        import pymysql
        from pymysql import connections
    except ImportError:
        return False
    original = getattr(connections.Connection, "_create_ssl_ctx", None)
    if original is None or not (1, 2) <= tuple(pymysql.VERSION[:2]) < (2, 0):
        return False
    if getattr(original, "__gsocket_shared__", False):
        return True
    shared: list[Any] = []

    def create_ssl_ctx(self: Any, sslp: Any) -> Any:
        if isinstance(sslp, dict) and not sslp:
            if not shared:
                shared.append(original(self, sslp))
            return shared[0]
        return original(self, sslp)

    create_ssl_ctx.__gsocket_shared__ = True  # type: ignore[attr-defined]
    connections.Connection._create_ssl_ctx = create_ssl_ctx  # type: ignore[method-assign]
    return True
