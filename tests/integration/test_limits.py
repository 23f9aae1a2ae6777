"""Connection limits and queueing against a real PostgreSQL: max_client_conn, pool sizes, reserve pool,
per-database/per-user server and client limits, FIFO order of waiting clients, query_wait_notify, and the
counts after failed server connects; the error texts are compared with Debian's PgBouncer where it has them."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from pgutil import free_port, wait_until


def closing(reason: str, kind: str = "C") -> str:
    return rf"{kind}-0x[0-9a-f]+: \S+ closing because: {reason} \(age=\d+s\)"


def pool_row(p, db="testdb", user="md5user"):
    rows = [r for r in p.admin_dicts("SHOW POOLS") if r["database"] == db and r["user"] == user]
    return rows[0] if rows else None


def backends(pg, db="testdb", user="md5user") -> int:
    return pg.query("select count(*) from pg_stat_activity where datname = %s and usename = %s", [db, user])[0][0]


@pytest.mark.parametrize("binary", ["py", "c"])
def test_max_client_conn_and_admin_exemption(pooler_factory, binary):
    p = pooler_factory.start({"max_client_conn": 2}, binary=binary)
    a = p.connect(autocommit=True)
    b = p.connect(autocommit=True)
    with pytest.raises(psycopg.OperationalError, match=r"no more connections allowed \(max_client_conn\)"):
        psycopg.connect(p.dsn())
    p.wait_for_log(closing(r"no more connections allowed \(max_client_conn\)"))
    assert p.admin("SHOW VERSION")           # the console is exempt
    a.close()
    wait_until(lambda: psycopg.connect(p.dsn()).close() is None, ignore=(psycopg.OperationalError,))
    b.close()


@pytest.mark.parametrize(("kind", "where"), [("db", "global"), ("db", "database"), ("user", "global"),
                                             ("user", "user")])
def test_max_client_connections_per_db_and_user(pooler_factory, pg, kind, where):
    setting = f"max_{kind}_client_connections"
    ini = {setting: 1} if where == "global" else {}
    databases = {"testdb": pg.server_connstr("testdb") + (f" {setting}=1" if where == "database" else ""),
                 "otherdb": pg.server_connstr("otherdb")}
    users = {"md5user": f"{setting}=1"} if where == "user" else None
    p = pooler_factory.start(ini, databases=databases, users=users)
    first = p.connect(autocommit=True)
    with pytest.raises(psycopg.OperationalError, match=rf"client connections exceeded \({setting}\)"):
        psycopg.connect(p.dsn("testdb"))
    p.wait_for_log(closing(rf"client connections exceeded \({setting}\)"))
    # the limit counts only its own database / user
    other = psycopg.connect(p.dsn("otherdb", "scramuser" if kind == "user" else "md5user"))
    if kind == "user" and where == "global":
        other.close()
        other = psycopg.connect(p.dsn("testdb", "scramuser"))
    other.close()
    first.close()
    wait_until(lambda: psycopg.connect(p.dsn("testdb")).close() is None, ignore=(psycopg.OperationalError,))


def run_in_thread(fn):
    result = {}

    def target():
        try:
            result["value"] = fn()
        except Exception as e:  # reported by the caller
            result["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result


def test_default_pool_size_queues_clients_fifo(pooler_factory, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1})
    holder = p.connect()
    holder.execute("select 1")                                   # holds the only server in a transaction
    finished = []
    threads = []
    for i in range(4):
        c = p.connect(autocommit=True)
        t, _ = run_in_thread(lambda c=c, i=i: (c.execute("select pg_sleep(0.05)"), finished.append(i)))
        threads.append(t)
        wait_until(lambda i=i: pool_row(p)["cl_waiting"] == i + 1)   # queued in this order
    assert backends(pg) == 1
    holder.rollback()
    for t in threads:
        t.join(20)
    assert finished == [0, 1, 2, 3]
    assert backends(pg) == 1


def test_query_wait_notify(pooler_factory):
    p = pooler_factory.start({"pool_mode": "session", "default_pool_size": 1, "query_wait_notify": 1})
    holder = p.connect(autocommit=True)
    holder.execute("select 1")
    waiter = p.connect(autocommit=True)
    notices = []
    waiter.add_notice_handler(lambda d: notices.append(d.message_primary))
    t, res = run_in_thread(lambda: waiter.execute("select 5").fetchone())
    wait_until(lambda: pool_row(p)["cl_waiting"] == 1)
    time.sleep(1.5)
    holder.close()
    t.join(20)
    assert res.get("value") == (5,)
    assert notices == ["No server connection available in postgres backend, client being queued"]


@pytest.mark.parametrize("key", ["reserve_pool_size", "reserve_pool"])
def test_reserve_pool_after_reserve_pool_timeout(pooler_factory, pg, key):
    db = pg.server_connstr("testdb") + f" {key}=1"
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1, "reserve_pool_timeout": 1},
                             databases={"testdb": db})
    holder = p.connect()
    holder.execute("select 1")
    waiter = p.connect(autocommit=True)
    t0 = time.monotonic()
    assert waiter.execute("select 7").fetchone() == (7,)
    assert time.monotonic() - t0 >= 0.9
    p.wait_for_log(r"C-0x[0-9a-f]+: testdb/md5user@\S+ taking connection from reserve_pool")
    assert backends(pg) == 2
    held = waiter.execute("begin") and waiter.execute("select 1")     # both servers busy now
    assert held is not None
    third = p.connect(autocommit=True)
    t, res = run_in_thread(lambda: third.execute("select 9").fetchone())
    wait_until(lambda: pool_row(p)["cl_waiting"] == 1)
    time.sleep(1.5)                                  # past reserve_pool_timeout: still no third server
    assert backends(pg) == 2
    holder.rollback()
    t.join(10)
    assert res.get("value") == (9,)


def test_global_reserve_pool_size(pooler_factory, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1, "reserve_pool_size": 1,
                              "reserve_pool_timeout": 1})
    holder = p.connect()
    holder.execute("select 1")
    assert p.connect(autocommit=True).execute("select 8").fetchone() == (8,)
    p.wait_for_log(r"taking connection from reserve_pool")


def test_pool_size_per_database_and_user(pooler_factory, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 5},
                             databases={"testdb": pg.server_connstr("testdb") + " pool_size=2",
                                        "otherdb": pg.server_connstr("otherdb")},
                             users={"scramuser": "pool_size=1"})
    conns = [p.connect() for _ in range(3)]
    for c in conns[:2]:
        c.execute("select 1")
    t, res = run_in_thread(lambda: conns[2].execute("select 1").fetchone())
    wait_until(lambda: pool_row(p)["cl_waiting"] == 1)
    assert backends(pg) == 2
    conns[0].rollback()
    t.join(10)
    assert res.get("value") == (1,)
    s = [p.connect(user="scramuser") for _ in range(2)]
    s[0].execute("select 1")
    t, res = run_in_thread(lambda: s[1].execute("select 1").fetchone())
    wait_until(lambda: pool_row(p, user="scramuser")["cl_waiting"] == 1)
    assert backends(pg, user="scramuser") == 1
    s[0].rollback()
    t.join(10)


def test_max_db_connections_evicts_idle_server_of_other_pool(pooler_factory, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "max_db_connections": 1, "default_pool_size": 5})
    a = p.connect(autocommit=True)
    a.execute("select 1")                            # md5user's pool keeps an idle server
    b = p.connect(user="scramuser", autocommit=True)
    assert b.execute("select current_user").fetchone() == ("scramuser",)
    p.wait_for_log(closing("evicted", "S"))
    assert pg.query("select count(*) from pg_stat_activity where datname = 'testdb' "
                    "and usename in ('md5user', 'scramuser')")[0][0] == 1


def test_max_db_connections_per_database_queues(pooler_factory, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 5},
                             databases={"testdb": pg.server_connstr("testdb") + " max_db_connections=1"})
    b = p.connect(user="scramuser", autocommit=True)  # logs in first (a pool needs one server for its welcome)
    a = p.connect()
    a.execute("select 1")                            # busy: cannot be evicted
    t, res = run_in_thread(lambda: b.execute("select 2").fetchone())
    wait_until(lambda: pool_row(p, user="scramuser") and pool_row(p, user="scramuser")["cl_waiting"] == 1)
    a.rollback()
    t.join(10)
    assert res.get("value") == (2,)


@pytest.mark.parametrize("where", ["global", "user"])
def test_max_user_connections(pooler_factory, pg, where):
    ini = {"pool_mode": "transaction", "default_pool_size": 5}
    if where == "global":
        ini["max_user_connections"] = 1
    users = {"md5user": "max_user_connections=1"} if where == "user" else None
    p = pooler_factory.start(ini, users=users)
    b = p.connect(db="otherdb", autocommit=True)    # logs in first (a pool needs one server for its welcome)
    a = p.connect()
    a.execute("select 1")
    t, res = run_in_thread(lambda: b.execute("select 3").fetchone())
    wait_until(lambda: pool_row(p, db="otherdb") and pool_row(p, db="otherdb")["cl_waiting"] == 1)
    assert pg.query("select count(*) from pg_stat_activity where usename = 'md5user'")[0][0] == 1
    a.rollback()
    t.join(10)
    assert res.get("value") == (3,)
    p.wait_for_log(closing("evicted", "S"))   # a's idle server made room for otherdb


def test_min_pool_size_fills_pool(pooler_factory, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "min_pool_size": 3, "default_pool_size": 5})
    p.connect(autocommit=True).execute("select 1")
    wait_until(lambda: backends(pg) == 3)
    wait_until(lambda: pool_row(p)["sv_idle"] == 3)


def test_failed_connects_leave_counts_clean(pooler_factory):
    dead = free_port()
    p = pooler_factory.start({"server_login_retry": 1, "query_wait_timeout": 1},
                             databases={"down": f"host=127.0.0.1 port={dead} dbname=x"})
    for _ in range(3):
        # the clients stay queued while the pool retries the connect, until their query_wait_timeout
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            psycopg.connect(p.dsn("down"))
    wait_until(lambda: (lambda r: r["sv_login"] == 0 and r["cl_waiting"] == 0 and r["sv_active"] == 0
                        and r["sv_idle"] == 0)(pool_row(p, db="down")))
    [db] = [r for r in p.admin_dicts("SHOW DATABASES") if r["name"] == "down"]
    assert db["current_connections"] == 0


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_cancel_of_a_queued_client_answers_it_at_once(pooler_factory, pool_mode):
    """Beyond PgBouncer (its issue #1222): ^C on a client waiting for a server cancels the queued query with
    PostgreSQL's answer (57014), without waiting for a server; the connection stays usable."""
    p = pooler_factory.start({"pool_mode": pool_mode, "default_pool_size": 1})
    holder = p.connect(autocommit=True)
    holder_done = threading.Event()

    def hold():
        holder.execute("select pg_sleep(4)")
        holder_done.set()

    threading.Thread(target=hold, daemon=True).start()
    wait_until(lambda: int(pool_row(p)["sv_active"]) == 1)
    waiter = p.connect(autocommit=True)
    got = {}

    def run():
        t0 = time.monotonic()
        try:
            waiter.execute("select 'queued'")
        except psycopg.Error as e:
            got["error"] = e
        got["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: int(pool_row(p)["cl_waiting"]) == 1)
    waiter.cancel()
    t.join(10)
    assert isinstance(got.get("error"), psycopg.errors.QueryCanceled), got
    assert got["elapsed"] < 3 and not holder_done.is_set()
    assert int(pool_row(p)["cl_waiting"]) == 0
    p.wait_for_log(r"query canceled while waiting for a server")
    holder_done.wait(10)
    holder.close()                                 # session mode: the server is free only now
    assert waiter.execute("select 'after'").fetchone() == ("after",)
    waiter.close()
