"""The database pool (gsocket.contract.dbpool) against a real MariaDB: what a reused
connection keeps of its last user (nothing), and which connections are never reused.

The pool here is driven directly, with PyMySQL connections as Frappe opens them; the same
pool under Frappe contexts of the real Frappe v15 and develop is tested in
tests/realbench/test_frappe_ctx_real.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymysql.constants import COMMAND

from gsocket.contract.dbpool import ConnectTimeout, DBPool, PoolExhausted
from gsocket.metrics import Metrics
from gsocket.protocol.internals.pymysql_hooks import pool_supported
from tests.support.bench import wait_until
from tests.support.mariadb import MariaDBServer

KEY = ("site.test", "db")


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb")).start()
    try:
        server.create_database("pooltest")
        server.admin_sql("CREATE TABLE pooltest.t (v VARCHAR(40)) ENGINE=InnoDB")
        yield server
    finally:
        server.stop()


@pytest.fixture
def connect(mariadb: MariaDBServer) -> Callable[[], pymysql.Connection]:
    """Opens connections the way Frappe's MariaDB ``get_connection`` does (no autocommit
    argument: PyMySQL turns autocommit off; ``charset`` utf8mb4)."""
    return lambda: mariadb.connect("pooltest", charset="utf8mb4")


def one(conn: pymysql.Connection, query: str) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchone()[0]


def conn_id(conn: pymysql.Connection) -> int:
    return int(one(conn, "SELECT CONNECTION_ID()"))


def server_ids(mariadb: MariaDBServer) -> set[int]:
    rows = mariadb.admin_sql(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (mariadb.user,)
    )
    return {int(row[0]) for row in rows}


def test_the_installed_pymysql_is_one_the_pool_was_verified_with() -> None:
    assert pool_supported(), pymysql.VERSION


def test_a_returned_connection_keeps_nothing_of_its_last_user(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    pool = DBPool(4)
    first = pool.checkout(KEY, connect)
    first_id = conn_id(first)
    charset = one(first, "SELECT @@character_set_client")
    collation = one(first, "SELECT @@collation_connection")
    global_wait = one(first, "SELECT @@global.wait_timeout")
    with first.cursor() as cursor:
        cursor.execute("SET NAMES latin1")
        cursor.execute("SET autocommit = 1")
        cursor.execute("CREATE TEMPORARY TABLE secret (v INT)")
        cursor.execute("SET @user_var = 'left behind'")
        cursor.execute("SET SESSION wait_timeout = 12345")
        cursor.execute("SELECT GET_LOCK('gsocket-pool-test', 0)")
        cursor.execute("START TRANSACTION")
        cursor.execute("INSERT INTO t VALUES ('uncommitted')")  # a transaction left open
    pool.checkin(KEY, first)
    assert pool.idle(KEY) == 1

    # Seen from elsewhere at once: the row was rolled back, the named lock released.
    other = connect()
    try:
        assert one(other, "SELECT COUNT(*) FROM t") == 0
        assert one(other, "SELECT IS_FREE_LOCK('gsocket-pool-test')") == 1
    finally:
        other.close()

    second = pool.checkout(KEY, connect)
    assert second is first and conn_id(second) == first_id
    assert pool.counts["opened"] == 1 and pool.counts["reused"] == 1
    assert one(second, "SELECT @user_var") is None
    assert one(second, "SELECT @@session.wait_timeout") == global_wait
    assert one(second, "SELECT IS_USED_LOCK('gsocket-pool-test')") is None
    assert (
        one(second, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'secret'")
        == 0
    )
    with pytest.raises(pymysql.err.ProgrammingError):
        one(second, "SELECT COUNT(*) FROM secret")
    # PyMySQL's own settings are back: charset, and autocommit off (a new transaction).
    assert one(second, "SELECT @@character_set_client") == charset
    assert one(second, "SELECT @@collation_connection") == collation
    assert one(second, "SELECT @@autocommit") == 0 and second.get_autocommit() is False
    with second.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES ('rolled back')")
    second.rollback()
    assert one(second, "SELECT COUNT(*) FROM t") == 0
    pool.checkin(KEY, second)
    pool.close()
    assert mariadb.wait_for_connections(0) == 0


def test_a_commit_sent_with_the_reset_is_answered_first_and_its_failure_raised(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    """``checkin(commit=True)``: the borrower's transaction is committed (seen from another
    connection) and the connection reset and kept; a ``COMMIT`` the server refuses raises
    PyMySQL's error, as ``conn.commit()`` would, and closes the connection; with nowhere to
    keep the connection, the ``COMMIT`` is sent on its own before it closes."""
    token = f"committed-{time.monotonic_ns()}"
    pool = DBPool(4)
    conn = pool.checkout(KEY, connect)
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (%s)", (token,))
        cursor.execute("SET @left = 1")
    pool.checkin(KEY, conn, commit=True)
    assert pool.idle(KEY) == 1 and pool.counts["reset_failed"] == 0
    other = connect()
    try:
        assert one(other, f"SELECT COUNT(*) FROM t WHERE v = '{token}'") == 1
    finally:
        other.close()
    again = pool.checkout(KEY, connect)
    assert again is conn and one(again, "SELECT @left") is None
    assert one(again, "SELECT @@autocommit") == 0

    # XA START makes a bare COMMIT fail (XAER_RMFAIL): the error of conn.commit() itself.
    with again.cursor() as cursor:
        cursor.execute("COMMIT")
        cursor.execute("XA START 'gsocket-pool-test'")
        cursor.execute("INSERT INTO t VALUES ('in xa')")
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pool.checkin(KEY, again, commit=True)
    assert refused.value.args[0] == 1399, refused.value
    assert not again.open and pool.idle(KEY) == 0 and pool.counts["reset_failed"] == 1
    assert mariadb.wait_for_connections(0) == 0  # the XA transaction went with it

    pool.close()  # a closed pool keeps nothing: COMMIT alone, then close
    last = pool.checkout(KEY, connect)
    with last.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (%s)", (token + "-closed",))
    pool.checkin(KEY, last, commit=True)
    assert not last.open
    other = connect()
    try:
        assert one(other, f"SELECT COUNT(*) FROM t WHERE v LIKE '{token}%'") == 2
        assert one(other, "SELECT COUNT(*) FROM t WHERE v = 'in xa'") == 0
    finally:
        other.close()


def test_a_commit_that_cannot_be_sent_with_the_reset_raises(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    """A ``COMMIT`` never sent (the connection was lost and its error swallowed by the
    handler, or an unbuffered result left unread) fails as one refused: the event must not
    report success for a transaction that was never committed."""
    pool = DBPool(4)
    conn = pool.checkout(KEY, connect)
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES ('never sent')")
    conn._force_close()  # what PyMySQL does when a query finds the connection lost
    with pytest.raises(ConnectionError):
        pool.checkin(KEY, conn, commit=True)
    unread = pool.checkout(KEY, connect)
    cursor = unread.cursor(pymysql.cursors.SSCursor)
    cursor.execute("SELECT SEQ FROM seq_1_to_1000")
    with pytest.raises(RuntimeError, match="unbuffered"):
        pool.checkin(KEY, unread, commit=True)
    unread._result.unbuffered_active = False  # see the unbuffered test below
    assert pool.idle(KEY) == 0 and pool.counts["reset_failed"] == 2
    assert mariadb.wait_for_connections(0) == 0
    other = connect()
    try:
        assert one(other, "SELECT COUNT(*) FROM t WHERE v = 'never sent'") == 0
    finally:
        other.close()


@pytest.mark.parametrize(
    "unread",
    [
        pytest.param("SELECT SLEEP(0.2)", id="a result set"),
        pytest.param("DO 1", id="an OK packet, which the reset alone would take for its own"),
    ],
)
def test_a_connection_still_owing_an_answer_is_closed_not_reused(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection], unread: str
) -> None:
    """What a query interrupted by a time limit or a kill leaves behind: its answer, unread.

    Reused, the connection would give that answer to the next event's first query.
    """
    pool = DBPool(4)
    conn = pool.checkout(KEY, connect)
    conn._execute_command(COMMAND.COM_QUERY, unread)  # sent; the answer is never read
    pool.checkin(KEY, conn)
    assert pool.counts["reset_failed"] == 1
    assert pool.idle(KEY) == 0 and not conn.open
    fresh = pool.checkout(KEY, connect)
    assert fresh is not conn and one(fresh, "SELECT 7") == 7
    pool.checkin(KEY, fresh, reusable=False)  # the caller's verdict: closed, not kept
    assert not fresh.open and pool.idle(KEY) == 0 and pool.counts["not_kept"] == 1
    assert mariadb.wait_for_connections(0) == 0


def test_a_commit_sent_with_the_reset_on_a_connection_owing_an_answer_never_keeps_it(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    """A late result set where the COMMIT's OK belongs fails the commit (out of sync); a late
    OK packet is taken for the COMMIT's, and the nonce then fails the reset.  Either way the
    connection is closed."""
    pool = DBPool(4)
    conn = pool.checkout(KEY, connect)
    conn._execute_command(COMMAND.COM_QUERY, "SELECT SLEEP(0.1)")
    with pytest.raises(pymysql.err.OperationalError, match="Out of Sync"):
        pool.checkin(KEY, conn, commit=True)
    assert not conn.open and pool.idle(KEY) == 0
    conn = pool.checkout(KEY, connect)
    conn._execute_command(COMMAND.COM_QUERY, "DO 1")
    pool.checkin(KEY, conn, commit=True)
    assert not conn.open and pool.idle(KEY) == 0 and pool.counts["reset_failed"] == 2
    assert mariadb.wait_for_connections(0) == 0


def test_a_connection_killed_while_idle_is_not_lent(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    pool = DBPool(4)
    conn = pool.checkout(KEY, connect)
    victim = conn_id(conn)
    pool.checkin(KEY, conn)
    mariadb.admin_sql(f"KILL {victim}")
    wait_until(lambda: victim not in server_ids(mariadb), 10, "KILL did not end the connection")
    lent = pool.checkout(KEY, connect)
    assert lent is not conn and conn_id(lent) != victim
    assert pool.counts["dead"] == 1 and pool.counts["opened"] == 2
    pool.checkin(KEY, lent)
    pool.close()


def test_connections_to_a_restarted_server_are_not_lent(tmp_path: Path) -> None:
    server = MariaDBServer(tmp_path / "mariadb").start()
    try:
        server.create_database("restart")

        def connect() -> pymysql.Connection:
            return server.connect("restart", charset="utf8mb4")

        pool = DBPool(4)
        borrowed = [pool.checkout(KEY, connect) for _ in range(3)]
        for conn in borrowed:
            pool.checkin(KEY, conn)
        assert pool.idle(KEY) == 3
        server.stop()
        server.start()
        lent = pool.checkout(KEY, connect)
        assert all(lent is not conn for conn in borrowed)
        assert one(lent, "SELECT 1") == 1
        assert pool.counts["dead"] == 3 and pool.idle(KEY) == 0
        pool.close()
    finally:
        server.stop()


def test_the_pool_is_bounded_per_key_expires_idle_connections_and_closes(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    pool = DBPool(2, idle_seconds=3600)
    other_key = ("other.test", "db")
    borrowed = [pool.checkout(KEY, connect) for _ in range(3)]
    for conn in borrowed:
        pool.checkin(KEY, conn)
    assert pool.idle(KEY) == 2 and pool.counts["not_kept"] == 1
    pool.checkin(other_key, pool.checkout(other_key, connect))
    assert pool.idle() == 3
    assert mariadb.wait_for_connections(3) == 3

    assert pool.sweep() == 0  # none is an hour old
    pool.idle_seconds = 0.0
    assert pool.sweep() == 3 and pool.idle() == 0
    assert mariadb.wait_for_connections(0) == 0

    pool.idle_seconds = 3600
    kept = pool.checkout(KEY, connect)
    lent = pool.checkout(KEY, connect)
    pool.checkin(KEY, kept)
    pool.close()  # on shutdown: the idle one closes now, the lent one when it comes back
    assert not kept.open and lent.open
    pool.checkin(KEY, lent)
    assert not lent.open and pool.idle() == 0
    assert mariadb.wait_for_connections(0) == 0


def test_a_connection_with_an_unread_unbuffered_result_is_closed(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    pool = DBPool(4)
    conn = pool.checkout(KEY, connect)
    cursor = conn.cursor(pymysql.cursors.SSCursor)
    cursor.execute("SELECT SEQ FROM seq_1_to_1000")  # rows left on the wire
    pool.checkin(KEY, conn)
    assert pool.counts["reset_failed"] == 1 and pool.idle(KEY) == 0 and not conn.open
    # Left as it is, PyMySQL's abandoned result would try to drain its rows from the closed
    # connection when collected, and print that failure.
    conn._result.unbuffered_active = False


# ---------------------------------------------------------------- db_max_connections


def test_at_the_cap_an_event_waits_for_a_returned_connection_and_gets_it(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    pool = DBPool(4, max_connections=2)
    first, second = pool.checkout(KEY, connect), pool.checkout(KEY, connect)
    waiter = gevent.spawn(pool.checkout, KEY, connect)
    gevent.sleep(0.05)
    assert not waiter.ready() and pool.in_use() == 2
    assert _families(pool)["gsocket_db_pool_waiting_contexts"][()] == 1
    first_id = conn_id(first)
    pool.checkin(KEY, first)
    handed = waiter.get(timeout=5)
    # The same connection, reset on its way: no third one was opened.
    assert handed is first and conn_id(handed) == first_id
    assert pool.counts["opened"] == 2 and pool.counts["waited"] == 1
    assert server_ids(mariadb) >= {first_id} and pool.in_use() == 2
    pool.checkin(KEY, second)
    pool.checkin(KEY, handed)
    pool.close()
    assert mariadb.wait_for_connections(0) == 0


def test_a_wait_that_runs_out_fails_with_an_error_naming_the_setting(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection], caplog: Any
) -> None:
    pool = DBPool(4, max_connections=1, wait_seconds=0.2)
    held = pool.checkout(KEY, connect)
    began = time.monotonic()
    with pytest.raises(PoolExhausted, match="gsocket.db_max_connections") as failed:
        pool.checkout(KEY, connect)
    assert 0.2 <= time.monotonic() - began < 2
    assert "site.test" in str(failed.value) and "all 1 " in str(failed.value)
    assert "db_max_connections" in caplog.text  # the operator's log line
    counts = pool.site_counts("site.test")
    assert counts["waited"] == 1 and counts["wait_timeouts"] == 1
    # Nothing leaked: the slot is still the held connection's, and frees when it returns.
    assert pool.in_use() == 1 and _families(pool)["gsocket_db_pool_waiting_contexts"][()] == 0
    pool.checkin(KEY, held)
    assert pool.checkout(KEY, connect) is held
    pool.checkin(KEY, held)
    pool.close()


def test_at_the_cap_a_closed_or_idle_connection_of_another_site_makes_room(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    other = ("other.test", "db")
    pool = DBPool(4, max_connections=1)
    mine = pool.checkout(KEY, connect)
    waiter = gevent.spawn(pool.checkout, other, connect)
    gevent.sleep(0.05)
    assert not waiter.ready()
    # Returned while another site waits: closed, and its slot goes to the waiter.
    pool.checkin(KEY, mine)
    theirs = waiter.get(timeout=5)
    assert not mine.open and theirs.open and pool.idle(KEY) == 0
    pool.checkin(other, theirs)
    assert pool.idle(other) == 1
    # Nobody waits now: at the cap, the other site's idle connection is closed to make room.
    again = pool.checkout(KEY, connect)
    assert not theirs.open and pool.idle() == 0 and pool.in_use() == 1
    pool.checkin(KEY, again, reusable=False)
    assert pool.in_use() == 0 and pool.counts["opened"] == 3
    pool.close()
    assert mariadb.wait_for_connections(0) == 0


def test_a_failed_connect_or_a_killed_waiter_leaves_no_slot_taken(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    pool = DBPool(4, max_connections=1)

    def refused() -> pymysql.Connection:
        raise pymysql.err.OperationalError(1045, "Access denied")

    with pytest.raises(pymysql.err.OperationalError):
        pool.checkout(KEY, refused)
    held = pool.checkout(KEY, connect)
    waiter = gevent.spawn(pool.checkout, KEY, connect)
    gevent.sleep(0.05)
    waiter.kill()
    pool.checkin(KEY, held)
    assert pool.idle(KEY) == 1 and pool.in_use() == 0  # kept: nobody waits any more
    assert pool.checkout(KEY, connect) is held
    pool.checkin(KEY, held)
    pool.close()


def test_a_server_that_accepts_and_never_answers_fails_only_that_event_within_the_bound(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection], monkeypatch: Any
) -> None:
    """PyMySQL bounds only the TCP connect; its handshake read has no time limit.  A listener
    that accepts and says nothing must fail the event that opens a connection to it, with an
    error saying so, within the pool's ``connect_timeout``, close the socket, free the slot,
    and leave other events running meanwhile."""
    # gsocket runs monkey-patched; here only PyMySQL's sockets are made gevent's.
    monkeypatch.setattr(pymysql.connections, "socket", gevent.socket)
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[Any] = []
    acceptor = gevent.spawn(lambda: accepted.append(listener.accept()[0]))
    port = listener.getsockname()[1]
    silent_key = ("silent.test", "db")
    pool = DBPool(4, connect_timeout=0.5)

    def silent() -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=port, user="u", connect_timeout=10)

    other_done: list[int] = []
    other = gevent.spawn(lambda: other_done.append(conn_id(pool.checkout(KEY, connect))))
    began = time.monotonic()
    with pytest.raises(ConnectTimeout, match=r"silent\.test took over 0\.5 s.*handshake"):
        # Without the bound the checkout would hang: the outer limit makes that a failure.
        gevent.with_timeout(5, pool.checkout, silent_key, silent)
    took = time.monotonic() - began
    assert 0.5 <= took < 2.0
    other.join(5)
    assert other_done, "another event did not run while one waited for a handshake"
    assert pool.in_use(silent_key) == 0 and pool.idle(silent_key) == 0
    acceptor.join(1)
    assert len(accepted) == 1
    accepted[0].settimeout(2)
    assert accepted[0].recv(1) == b""  # gsocket's end was closed
    accepted[0].close()
    listener.close()
    pool.close()


# ---------------------------------------------------------------- what /metrics shows


def _families(pool: DBPool) -> dict[str, dict[tuple[str, ...], float]]:
    """The pool's families as Prometheus parses them: values by sample name and labels."""
    metrics = Metrics()
    metrics.collect(pool.metric_families)
    found: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(metrics.render()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sample.labels.values())] = sample.value
    return found


def test_the_pool_counts_per_site_are_on_metrics(
    mariadb: MariaDBServer, connect: Callable[[], pymysql.Connection]
) -> None:
    other = ("other.test", "db")
    pool = DBPool(1, max_connections=10)
    lent = [pool.checkout(KEY, connect) for _ in range(3)]
    pool.checkin(other, pool.checkout(other, connect))
    f = _families(pool)
    assert f["gsocket_db_pool_in_use_connections"] == {("site.test",): 3, ("other.test",): 0}
    assert f["gsocket_db_pool_idle_connections"] == {("site.test",): 0, ("other.test",): 1}
    assert f["gsocket_db_pool_max_connections"] == {(): 10}
    for conn in lent:
        pool.checkin(KEY, conn)  # one kept (db_pool_size 1), two closed
    pool.checkin(KEY, pool.checkout(KEY, connect))  # reused
    f = _families(pool)
    assert f["gsocket_db_pool_in_use_connections"][("site.test",)] == 0
    assert f["gsocket_db_pool_idle_connections"][("site.test",)] == 1
    assert f["gsocket_db_pool_opened_total"] == {("site.test",): 3, ("other.test",): 1}
    assert f["gsocket_db_pool_reused_total"] == {("site.test",): 1, ("other.test",): 0}
    assert f["gsocket_db_pool_not_kept_total"][("site.test",)] == 2
    assert f["gsocket_db_pool_reset_failed_total"][("site.test",)] == 0
    pool.close()
    assert _families(pool)["gsocket_db_pool_idle_connections"][("site.test",)] == 0
