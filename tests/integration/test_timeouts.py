"""Every timeout the janitor enforces, against a real PostgreSQL: the error text the client sees and the
"closing because: <reason> (age=Ns)" line in the log."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest
from pgutil import SilentServer, free_port, wait_until


def closing(reason: str, kind: str = "C") -> str:
    return rf"{kind}-0x[0-9a-f]+: \S+ closing because: {reason} \(age=\d+s\)"


def start(pooler_factory, ini=None, **kw):
    settings = {"default_pool_size": 1}
    settings.update(ini or {})
    return pooler_factory.start(settings, **kw)


# --- waiting for a server -------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["global", "database", "user"])
def test_query_wait_timeout(pooler_factory, pg, where):
    ini = {"pool_mode": "session", "query_wait_timeout": 1 if where == "global" else 60}
    db = pg.server_connstr("testdb") + (" query_wait_timeout=1" if where == "database" else "")
    users = {"md5user": "query_wait_timeout=1"} if where == "user" else None
    p = start(pooler_factory, ini, databases={"testdb": db}, users=users)
    holder = p.connect(autocommit=True)
    holder.execute("select 1")
    waiter = p.connect(autocommit=True)
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
        waiter.execute("select 1")
    assert time.monotonic() - t0 < 30
    p.wait_for_log(closing("query_wait_timeout"))
    assert holder.execute("select 2").fetchone() == (2,)


def test_query_timeout_while_waiting(pooler_factory):
    p = start(pooler_factory, {"pool_mode": "session", "query_timeout": 1})
    holder = p.connect(autocommit=True)
    holder.execute("select 1")
    with pytest.raises(psycopg.OperationalError, match="query_timeout"):
        p.connect(autocommit=True).execute("select 1")
    p.wait_for_log(closing("query_timeout"))


@pytest.mark.parametrize("where", ["global", "user"])
def test_query_timeout_running_query(pooler_factory, where):
    ini = {"pool_mode": "transaction", "query_timeout": 1 if where == "global" else 0}
    users = {"md5user": "query_timeout=1"} if where == "user" else None
    p = start(pooler_factory, ini, users=users)
    c = p.connect(autocommit=True)
    assert c.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="query timeout"):
        c.execute("select pg_sleep(20)")
    p.wait_for_log(closing("query timeout", "S"))
    p.wait_for_log(closing("query timeout", "C"))
    # the pool recovers with a new server connection
    assert p.connect(autocommit=True).execute("select 3").fetchone() == (3,)


# --- clients that stay idle -----------------------------------------------------------------------
def test_client_idle_timeout(pooler_factory):
    p = start(pooler_factory, {"pool_mode": "transaction", "client_idle_timeout": 1})
    c = p.connect(autocommit=True)
    c.execute("select 1")
    p.wait_for_log(closing("client_idle_timeout"))
    with pytest.raises(psycopg.OperationalError, match="client_idle_timeout|server closed|connection"):
        c.execute("select 1")


def test_client_idle_timeout_spares_busy_clients(pooler_factory):
    p = start(pooler_factory, {"pool_mode": "transaction", "client_idle_timeout": 2})
    c = p.connect(autocommit=True)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:    # never idle for 2 s
        c.execute("select pg_sleep(0.2)")
    assert "client_idle_timeout" not in p.log()


@pytest.mark.parametrize("where", ["global", "user"])
def test_idle_transaction_timeout(pooler_factory, where):
    ini = {"pool_mode": "transaction", "idle_transaction_timeout": 1 if where == "global" else 0}
    users = {"md5user": "idle_transaction_timeout=1"} if where == "user" else None
    p = start(pooler_factory, ini, users=users)
    c = p.connect()
    c.execute("select 1")          # psycopg opened a transaction and sits in it
    p.wait_for_log(closing("idle transaction timeout", "S"))
    p.wait_for_log(closing("idle transaction timeout", "C"))
    with pytest.raises(psycopg.OperationalError, match="idle transaction timeout|server closed|connection"):
        c.execute("select 1")


@pytest.mark.parametrize("where", ["global", "user"])
def test_transaction_timeout(pooler_factory, where):
    ini = {"pool_mode": "transaction", "transaction_timeout": 1 if where == "global" else 0}
    users = {"md5user": "transaction_timeout=1"} if where == "user" else None
    p = start(pooler_factory, ini, users=users)
    c = p.connect()
    with pytest.raises(psycopg.OperationalError, match="transaction timeout"):
        for _ in range(100):      # busy, never idle, but one long transaction
            c.execute("select pg_sleep(0.1)")
    p.wait_for_log(closing("transaction timeout", "S"))


def test_client_login_timeout(pooler_factory):
    p = start(pooler_factory, {"client_login_timeout": 1})
    with socket.create_connection((p.host, p.port), timeout=10) as s:
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data[:1] == b"E" and b"client_login_timeout" in data
    p.wait_for_log(closing("client_login_timeout"))


# --- server connections ---------------------------------------------------------------------------
def test_server_connect_timeout_covers_login(pooler_factory):
    # the login is bounded too; the client stays queued for the retries and ends at its query_wait_timeout
    silent = SilentServer()
    try:
        p = start(pooler_factory, {"server_connect_timeout": 1, "query_wait_timeout": 2},
                  databases={"hung": f"host=127.0.0.1 port={silent.port} dbname=x"})
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            psycopg.connect(p.dsn("hung"))
        p.wait_for_log(closing("connect timeout", "S"))
    finally:
        silent.close()


def test_server_login_retry_spaces_connect_attempts(pooler_factory):
    # a failed connect is tried again after server_login_retry; the waiting client is not failed by it
    dead = free_port()
    p = start(pooler_factory, {"server_login_retry": 30, "query_wait_timeout": 2},
              databases={"down": f"host=127.0.0.1 port={dead} dbname=x"})
    with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
        psycopg.connect(p.dsn("down"))
    p.wait_for_log(closing("connect failed", "S"))
    assert p.log().count("closing because: connect failed") == 1
    [pool] = [r for r in p.admin_dicts("SHOW POOLS") if r["database"] == "down"]
    assert pool["sv_login"] == 0 and pool["sv_idle"] == 0 and pool["cl_waiting"] == 0


@pytest.mark.parametrize("where", ["global", "database"])
def test_server_lifetime(pooler_factory, pg, where):
    ini = {"pool_mode": "transaction", "server_lifetime": 1 if where == "global" else 3600}
    db = pg.server_connstr("testdb") + (" server_lifetime=1" if where == "database" else "")
    p = start(pooler_factory, ini, databases={"testdb": db})
    c = p.connect(autocommit=True)
    first = c.execute("select pg_backend_pid()").fetchone()[0]
    p.wait_for_log(closing("server lifetime over", "S"))
    assert c.execute("select pg_backend_pid()").fetchone()[0] != first


def test_server_idle_timeout_keeps_min_pool_size(pooler_factory, pg):
    p = start(pooler_factory, {"pool_mode": "transaction", "server_idle_timeout": 1, "default_pool_size": 3,
                               "min_pool_size": 1})
    conns = [p.connect() for _ in range(3)]
    for c in conns:
        c.execute("select 1")     # three transactions open: three servers
    for c in conns:
        c.rollback()
    p.wait_for_log(closing("server idle timeout", "S"))
    wait_until(lambda: p.log().count("server idle timeout") == 2)
    time.sleep(1.5)
    assert p.log().count("server idle timeout") == 2   # min_pool_size keeps one
    [pool] = [r for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb"]
    assert pool["sv_idle"] == 1


def test_server_check_query_runs_after_check_delay(pooler_factory):
    p = start(pooler_factory, {"pool_mode": "transaction", "server_check_delay": 0,
                               "server_check_query": "set myapp.checked = 'yes'"})
    c = p.connect(autocommit=True)
    c.execute("select 1")
    assert c.execute("show myapp.checked").fetchone() == ("yes",)


def test_failing_server_check_query_replaces_the_server(pooler_factory):
    p = start(pooler_factory, {"pool_mode": "transaction", "server_check_delay": 0,
                               "server_check_query": "select 1/0"})
    c = p.connect(autocommit=True)
    first = c.execute("select pg_backend_pid()").fetchone()[0]
    second = c.execute("select pg_backend_pid()").fetchone()[0]
    assert first != second
    p.wait_for_log(closing("server check query failed: division by zero", "S"))


@pytest.mark.parametrize("fast_close", [0, 1])
def test_server_fast_close_on_reload(pooler_factory, pg, fast_close):
    p = start(pooler_factory, {"pool_mode": "session", "server_fast_close": fast_close})
    c = p.connect(autocommit=True)
    c.execute("select 1")
    text = p.ini_path.read_text().replace(f"testdb = {pg.server_connstr('testdb')}",
                                          f"testdb = {pg.server_connstr('testdb')} connect_query='select 1'")
    p.ini_path.write_text(text)
    mark = p.log_mark()
    p.reload()
    p.wait_for_log("got SIGHUP", since=mark)
    if fast_close:
        p.wait_for_log(closing("database configuration changed", "S"), since=mark)
        with pytest.raises(psycopg.OperationalError):
            c.execute("select 1")
    else:
        time.sleep(1)
        assert c.execute("select 1").fetchone() == (1,)
        c.close()
        p.wait_for_log(closing("database configuration changed", "S"), since=mark)


def test_changed_database_closes_servers_when_released(pooler_factory, pg):
    p = start(pooler_factory, {"pool_mode": "transaction"})
    c = p.connect()
    c.execute("select 1")                      # inside a transaction over the reload
    text = p.ini_path.read_text().replace(f"testdb = {pg.server_connstr('testdb')}",
                                          f"testdb = {pg.server_connstr('testdb')} connect_query='select 1'")
    p.ini_path.write_text(text)
    mark = p.log_mark()
    p.reload()
    p.wait_for_log("got SIGHUP", since=mark)
    c.commit()
    p.wait_for_log(closing("database configuration changed", "S"), since=mark)
    assert c.execute("show application_name").fetchone() is not None


def test_removed_database_tells_clients(pooler_factory, pg):
    p = start(pooler_factory, {"pool_mode": "session"})
    c = p.connect(db="otherdb", autocommit=True)
    c.execute("select 1")
    text = "\n".join(line for line in p.ini_path.read_text().splitlines() if not line.startswith("otherdb ="))
    p.ini_path.write_text(text + "\n")
    mark = p.log_mark()
    p.reload()
    p.wait_for_log(closing("database removed"), since=mark)
    with pytest.raises(psycopg.OperationalError):
        c.execute("select 1")


def test_autodb_idle_timeout(pooler_factory, pg):
    p = start(pooler_factory, {"autodb_idle_timeout": 1},
              databases={"*": f"host=127.0.0.1 port={pg.port}"})
    with psycopg.connect(p.dsn("otherdb"), autocommit=True) as c:
        assert c.execute("select current_database()").fetchone() == ("otherdb",)
    p.wait_for_log(r"registered new auto-database: otherdb")
    p.wait_for_log(r"dropping database 'otherdb' as it does not exist anymore or inactive auto-database")
    assert "otherdb" not in {r["name"] for r in p.admin_dicts("SHOW DATABASES")}
    with psycopg.connect(p.dsn("otherdb"), autocommit=True) as c:   # comes back on demand
        assert c.execute("select 1").fetchone() == (1,)


def test_pool_idle_timeout(pooler_factory):
    p = start(pooler_factory, {"pool_idle_timeout": 1, "server_idle_timeout": 1, "pool_mode": "transaction"})
    with p.connect(db="otherdb", autocommit=True) as c:
        c.execute("select 1")
    p.wait_for_log(r"cleaning up idle pool for user md5user on db otherdb because: pool idle timeout \(age= \d+s\)",
                   timeout=15)
    assert ("otherdb", "md5user") not in {(r["database"], r["user"]) for r in p.admin_dicts("SHOW POOLS")}


# --- cancel requests ------------------------------------------------------------------------------
def test_cancel_request_is_held_until_delivered_and_cancel_wait_timeout(pooler_factory, pg):
    """A cancel request's connection stays open until PostgreSQL has taken the cancel (libpq waits for that
    EOF): with the postmaster stopped it cannot be delivered, the request shows in SHOW POOLS as
    cl_active_cancel_req, and cancel_wait_timeout ends the wait. Once PostgreSQL runs again, cancels work."""
    import os
    import signal
    import struct

    from test_prepared import Raw, error_text, query

    p = start(pooler_factory, {"pool_mode": "transaction", "cancel_wait_timeout": 1})

    def active():
        return any(int(r["sv_active"]) for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb")

    def cancel_socket(raw):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s.sendall(struct.pack("!II", 16, 80877102) + raw.backend_key)
        return s

    c = Raw(p.port)
    c.send(query("select pg_sleep(8)"))
    wait_until(active)
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        s = cancel_socket(c)
        wait_until(lambda: any(int(r["cl_active_cancel_req"]) == 1 for r in p.admin_dicts("SHOW POOLS")
                               if r["database"] == "testdb"), timeout=5)
        assert s.recv(100) == b""                      # EOF only when the pooler gives up
        held = time.monotonic() - t0
        s.close()
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert 0.8 < held < 5, held
    p.wait_for_log(closing("cancel_wait_timeout"))
    c.until()                                          # the query ends (canceled late, or finished)
    c.send(query("select pg_sleep(8)"))
    wait_until(active)
    time.sleep(0.2)
    s = cancel_socket(c)
    assert s.recv(100) == b""
    s.close()
    assert "57014" in error_text(c.until())
    assert not any(int(r["cl_active_cancel_req"]) for r in p.admin_dicts("SHOW POOLS"))
    c.close()


def test_suspend_timeout_drops_a_client_that_does_not_read(pooler_factory):
    """SUSPEND waits for every socket's output to be flushed; a client that stopped reading a large result is
    closed after suspend_timeout, then SUSPEND answers. Other clients carry on after RESUME."""
    from test_prepared import Raw, query

    p = start(pooler_factory, {"pool_mode": "session", "default_pool_size": 2, "suspend_timeout": 1})
    other = p.connect(autocommit=True)
    assert other.execute("select 1").fetchone() == (1,)
    stuck = Raw(p.port)
    stuck.send(query("select repeat('x', 100000) from generate_series(1, 2000)"))    # ~200 MB, never read
    time.sleep(1)                                      # the pooler's buffer towards `stuck` fills up
    t0 = time.monotonic()
    p.admin("SUSPEND")                                 # the console leaves right after: automatic RESUME
    held = time.monotonic() - t0
    assert 0.8 < held < 10, held
    p.wait_for_log(closing("suspend_timeout"))
    p.wait_for_log("admin disappeared when suspended, doing RESUME")
    assert other.execute("select 2").fetchone() == (2,)
    assert stuck.closed()
    other.close()
