"""Issue 17, items 4-7: replication connections (replication=true / database) through the pooler, against
pgbouncer-py and the real PgBouncer 1.24.1 with the same assertions: each replication client gets a server of its
own, opened with its startup parameters and options, counted against pool_size; a refused login is "login failed"."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from pgutil import wait_until

BINARIES = ["py", "c124"]


@pytest.fixture
def repl_pg(pg):
    pg.allow_replication()
    return pg


def start(pooler_factory, binary, **ini):
    settings = {"pool_mode": "transaction", "server_tls_sslmode": "disable", **ini}
    return pooler_factory.start(settings, binary=binary)


def replication_conn(p, replication: str, user: str = "postgres", **kw):
    """A replication connection through the pooler (libpq, no query sent at connect)."""
    return psycopg.connect(p.dsn("testdb", user, replication=replication, **kw))


def run(conn, command: str) -> str:
    """One command in the simple query protocol (what a walsender accepts); its first value."""
    res = conn.pgconn.exec_(command.encode())
    assert res.error_message == b"", conn.pgconn.error_message
    return res.get_value(0, 0).decode()


def run_error(conn, command: str) -> str:
    """The error a command ends with (the connection's message when the pooler closed it)."""
    res = conn.pgconn.exec_(command.encode())
    assert res.error_message != b""
    return conn.pgconn.error_message.decode()


@pytest.mark.parametrize("binary", BINARIES)
@pytest.mark.parametrize("replication", ["true", "database"])
def test_options_reach_the_replication_server(pooler_factory, repl_pg, binary, replication):
    # any -c setting (an ordinary client may only use the tracked ones), spacing kept as the client wrote it
    p = start(pooler_factory, binary)
    with replication_conn(p, replication, options="-c work_mem=77kB  -c statement_timeout=7s",
                          application_name="walreader") as conn:
        assert run(conn, "SHOW work_mem") == "77kB"
        assert run(conn, "SHOW statement_timeout") == "7s"
        assert run(conn, "SHOW application_name") == "walreader"
        assert conn.info.parameter_status("application_name") == "walreader"   # the server's own welcome
        assert conn.info.parameter_status("is_superuser") == "on"
    shown = "yes" if replication == "true" else "database"
    p.wait_for_log(rf"login attempt: db=testdb user=postgres tls=no replication={shown}")
    p.wait_for_log(r"S-0x[0-9a-f]+: testdb/postgres@\S+ closing because: replication client was closed")
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter in options: work_mem"):
        psycopg.connect(p.dsn("testdb", "postgres", options="-c work_mem=77kB"))


@pytest.mark.parametrize("binary", BINARIES)
def test_refused_replication_login(pooler_factory, repl_pg, binary):
    # md5user has no REPLICATION attribute: PostgreSQL refuses the walsender. In a pool that never logged in,
    # the client's own server brings the welcome, so the login of the client fails
    p = start(pooler_factory, binary, server_login_retry=1)
    with pytest.raises(psycopg.OperationalError, match=r"FATAL:  login failed"):
        replication_conn(p, "true", user="md5user")
    p.wait_for_log(r"ERROR S: login failed: FATAL: must be superuser or replication role to start walsender")
    p.wait_for_log(r"S-0x[0-9a-f]+: testdb/md5user@\S+ closing because: login failed \(age=\d+s\)")
    p.wait_for_log(r"C-0x[0-9a-f]+: testdb/md5user@\S+ closing because: login failed \(age=\d+s\)")
    p.wait_for_log(r"WARNING C-0x[0-9a-f]+: testdb/md5user@\S+ pooler error: login failed")
    # an ordinary client of the pool is served (after server_login_retry)
    with p.connect(autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        # now the pool has its welcome: a replication client logs in, its first command needs its own server
        with replication_conn(p, "true", user="md5user") as repl:
            assert "FATAL:  login failed" in run_error(repl, "IDENTIFY_SYSTEM")
        assert p.log().count("ERROR S: login failed: FATAL: must be superuser or replication role") == 2
        assert conn.execute("select 2").fetchone() == (2,)


@pytest.mark.parametrize("binary", BINARIES)
def test_physical_replication_opens_only_a_walsender(pooler_factory, repl_pg, binary):
    p = start(pooler_factory, binary)
    mark = len(repl_pg.log())
    with replication_conn(p, "true") as conn:
        assert re.fullmatch(r"\d+", run(conn, "IDENTIFY_SYSTEM"))
    pglog = repl_pg.log(mark)
    assert re.search(r"postgres@\[unknown\] LOG:  replication connection authorized: user=postgres", pglog), pglog
    # no ordinary login before it (it would log "connection authorized: user=postgres database=...")
    assert not re.search(r"(?<!replication )connection authorized: user=postgres", pglog), pglog
    assert p.log().count("new connection to server") == 1


def pool_row(p) -> dict:
    return next(r for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb" and r["user"] == "postgres")


@pytest.mark.parametrize("binary", BINARIES)
def test_replication_servers_count_against_pool_size(pooler_factory, repl_pg, binary):
    p = start(pooler_factory, binary, default_pool_size=1)
    with p.connect(user="postgres", autocommit=True) as ordinary:
        ordinary.execute("select 1")                        # the pool's only server, now idle
    # a replication client at the full pool: the idle ordinary server makes room for its walsender
    first = replication_conn(p, "true")
    assert re.fullmatch(r"\d+", run(first, "IDENTIFY_SYSTEM"))
    p.wait_for_log(r"S-0x[0-9a-f]+: testdb/postgres@\S+ closing because: evicted \(age=\d+s\)")
    # a second one waits for a server until the first is gone
    second = replication_conn(p, "true")
    got = []
    waiter = threading.Thread(target=lambda: got.append(run(second, "IDENTIFY_SYSTEM")))
    waiter.start()
    wait_until(lambda: pool_row(p)["cl_waiting"] == 1)
    time.sleep(0.5)
    row = pool_row(p)
    assert (row["cl_active"], row["cl_waiting"], row["sv_active"], row["sv_login"]) == (1, 1, 1, 0)
    assert not got
    assert [r["replication"] for r in p.admin_dicts("SHOW SERVERS")] == ["physical"]
    first.close()
    waiter.join(15)
    assert re.fullmatch(r"\d+", got[0])
    second.close()
