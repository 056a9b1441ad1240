"""The database pool (gsocket.contract.dbpool) against a real MariaDB: what a reused
connection keeps of its last user (nothing), and which connections are never reused.

The pool here is driven directly, with PyMySQL connections as Frappe opens them; the same
pool under Frappe contexts of the real Frappe v15 and develop is tested in
tests/realbench/test_frappe_ctx_real.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import COMMAND

from gsocket.contract.dbpool import DBPool
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
