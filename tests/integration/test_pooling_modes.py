"""Pooling modes against a real PostgreSQL: session/transaction/statement, mode precedence, the extended
protocol (psycopg pipelines, unnamed statements, errors inside a pipeline), COPY both ways, notices,
server_reset_query and the tracked parameters (varcache) following a client from server to server."""

from __future__ import annotations

import psycopg
import pytest

STMT_ERR = "transaction blocks not allowed in statement pooling mode"


def backend_pid(conn) -> int:
    return conn.execute("select pg_backend_pid()").fetchone()[0]


def start(pooler_factory, binary="py", **settings):
    ini = {"default_pool_size": 1}
    ini.update(settings.pop("ini", {}))
    return pooler_factory.start(ini, binary=binary, **settings)


@pytest.mark.parametrize(("mode", "shared"), [("session", False), ("transaction", True), ("statement", True)])
def test_server_shared_between_clients_only_outside_session_mode(pooler_factory, mode, shared):
    p = start(pooler_factory, ini={"pool_mode": mode, "default_pool_size": 2})
    a = p.connect(autocommit=True)
    b = p.connect(autocommit=True)
    pa, pb = backend_pid(a), backend_pid(b)
    assert (pa == pb) == shared


@pytest.mark.parametrize(("ini_mode", "db_mode", "user_mode", "expected"), [
    ("session", None, None, "session"),
    ("session", "transaction", None, "transaction"),
    ("transaction", "session", "statement", "statement"),   # user beats database beats global
    ("statement", None, "session", "session"),
])
def test_pool_mode_precedence(pooler_factory, pg, ini_mode, db_mode, user_mode, expected):
    db = pg.server_connstr("testdb") + (f" pool_mode={db_mode}" if db_mode else "")
    users = {"md5user": f"pool_mode={user_mode}"} if user_mode else None
    p = start(pooler_factory, ini={"pool_mode": ini_mode}, databases={"testdb": db}, users=users)
    c = p.connect(autocommit=True)
    c.execute("select 1")
    [pool] = [r for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb"]
    assert pool["pool_mode"] == expected


@pytest.mark.parametrize("binary", ["py", "c"])
def test_statement_mode_rejects_transaction_blocks(pooler_factory, binary):
    p = start(pooler_factory, binary, ini={"pool_mode": "statement"})
    c = p.connect(autocommit=True)
    assert c.execute("select 41 + 1").fetchone() == (42,)
    with pytest.raises(psycopg.errors.ProtocolViolation, match=STMT_ERR):
        c.execute("begin")
        c.execute("select 1")
    p.wait_for_log(rf"S-0x[0-9a-f]+: testdb/md5user@\S+ closing because: {STMT_ERR} \(age=\d+s\)")
    p.wait_for_log(rf"C-0x[0-9a-f]+: testdb/md5user@\S+ closing because: {STMT_ERR} \(age=\d+s\)")
    # the pool survives: a new client works on a new server connection
    assert p.connect(autocommit=True).execute("select 2").fetchone() == (2,)


@pytest.mark.parametrize("binary", ["py", "c"])
def test_statement_mode_rejects_extended_protocol_transaction(pooler_factory, binary):
    p = start(pooler_factory, binary, ini={"pool_mode": "statement"})
    c = p.connect(autocommit=True)
    with pytest.raises(psycopg.Error):
        with c.pipeline():     # Parse/Bind/Execute/Sync for BEGIN, then more work
            c.execute("begin")
            c.execute("select %s::int", [1])
    p.wait_for_log(rf"C-0x[0-9a-f]+: testdb/md5user@\S+ closing because: {STMT_ERR}")
    with pytest.raises(psycopg.OperationalError):    # the pooler closed the connection
        c.execute("select 1")


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_psycopg_pipeline_with_error_and_unnamed_statements(pooler_factory, mode):
    p = start(pooler_factory, ini={"pool_mode": mode, "default_pool_size": 2})
    c = p.connect(autocommit=True)
    other = p.connect(autocommit=True)
    with c.pipeline() as pl:
        cur1 = c.execute("select %s::int + 1", [1])
        cur2 = c.execute("select %s::text", ["x"])
        pl.sync()
        cur3 = c.execute("select %s::int * 2", [4])
    assert cur1.fetchone() == (2,)
    assert cur2.fetchone() == ("x",)
    assert cur3.fetchone() == (8,)
    # an error in the middle of a pipeline: the server skips to the Sync, the pipeline is aborted
    with pytest.raises(psycopg.errors.DivisionByZero):
        with c.pipeline():
            c.execute("select 1/%s::int", [0])
            c.execute("select 'never'")
    with c.pipeline():
        cur4 = c.execute("select %s::int * 3", [5])
    assert cur4.fetchone() == (15,)
    # the server went back to the pool in a clean state: the other client can use it
    assert other.execute("select %s::int", [7]).fetchone() == (7,)
    assert c.execute("select 8").fetchone() == (8,)


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_named_prepared_in_one_transaction_and_flush(pooler_factory, mode):
    p = start(pooler_factory, ini={"pool_mode": mode})
    c = p.connect(autocommit=True)
    for i in range(20):   # unnamed statements, Describe + Flush (psycopg sends Flush in pipeline fetches)
        with c.pipeline():
            cur = c.execute("select %s::int", [i])
            assert cur.fetchone() == (i,)


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_copy_in_and_out(pooler_factory, pg, mode):
    table = f"copy_{mode}"
    pg.psql(f"drop table if exists {table}; create table {table} (i int, t text); "
            f"grant all on {table} to md5user", db="testdb")
    p = start(pooler_factory, ini={"pool_mode": mode})
    c = p.connect(autocommit=True)
    with c.cursor() as cur:
        with cur.copy(f"copy {table} from stdin") as cp:
            for i in range(1000):
                cp.write_row((i, f"row {i}"))
        assert cur.rowcount == 1000
        # error after some data was sent (bad row), then error before any data (no such table)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with cur.copy(f"copy {table} from stdin") as cp:
                cp.write(b"1\tok\nnot-a-number\tbad\n")
        with pytest.raises(psycopg.errors.UndefinedTable):
            with cur.copy("copy no_such_table from stdin") as cp:
                cp.write(b"1\n")
        # error raised by the client inside COPY IN: the client sends CopyFail
        with pytest.raises(psycopg.errors.QueryCanceled):
            with cur.copy(f"copy {table} from stdin") as cp:
                cp.write(b"5\tfive\n")
                raise psycopg.errors.QueryCanceled("client gave up")
        rows = []
        with cur.copy(f"copy (select i, t from {table} order by i) to stdout") as cp:
            for row in cp.rows():
                rows.append(row)
        assert len(rows) == 1000 and rows[999] == ("999", "row 999")
        with pytest.raises(psycopg.errors.DivisionByZero):  # error in the middle of COPY OUT
            with cur.copy("copy (select 1/(i - 500) from generate_series(1, 1000) i) to stdout") as cp:
                for _ in cp:
                    pass
    assert c.execute(f"select count(*) from {table}").fetchone() == (1000,)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_copy_with_psql(pooler_factory, pg, mode):
    pg.psql("drop table if exists copy_psql; create table copy_psql (i int); grant all on copy_psql to md5user",
            db="testdb")
    p = start(pooler_factory, ini={"pool_mode": mode})
    data = "".join(f"{i}\n" for i in range(500))
    r = p.psql("-v", "ON_ERROR_STOP=1", "-c", r"\copy copy_psql from stdin", input=data + "\\.\n", check=True)
    assert "COPY 500" in r.stdout
    out = p.psql("-Atc", "copy (select sum(i) from copy_psql) to stdout", check=True).stdout
    assert out.strip() == str(sum(range(500)))


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_notice_and_notify_pass_through(pooler_factory, mode):
    p = start(pooler_factory, ini={"pool_mode": mode, "default_pool_size": 2})
    c = p.connect(autocommit=True)
    notices = []
    c.add_notice_handler(lambda d: notices.append(d.message_primary))
    c.execute("do $$ begin raise notice 'hello from plpgsql'; end $$")
    assert notices == ["hello from plpgsql"]
    if mode == "session":
        c.execute("listen chan")
        p.connect(autocommit=True).execute("notify chan, 'payload'")
        c.execute("select 1")
        gen = c.notifies(timeout=5, stop_after=1)
        assert [n.payload for n in gen] == ["payload"]


@pytest.mark.parametrize(("mode", "always", "reset_runs"), [
    ("session", 0, True), ("transaction", 0, False), ("transaction", 1, True),
])
def test_server_reset_query(pooler_factory, mode, always, reset_runs):
    p = start(pooler_factory, ini={"pool_mode": mode, "server_reset_query": "RESET search_path",
                                   "server_reset_query_always": always})
    a = p.connect(autocommit=True)
    a.execute("set search_path = pg_catalog")
    if mode == "session":
        a.close()
    b = p.connect(autocommit=True)
    path = b.execute("show search_path").fetchone()[0]
    assert (path != "pg_catalog") == reset_runs


def test_varcache_follows_client_across_servers(pooler_factory, monkeypatch):
    p = start(pooler_factory, ini={"pool_mode": "transaction", "default_pool_size": 2, "verbose": 1})
    monkeypatch.setenv("PGDATESTYLE", "german")
    monkeypatch.setenv("PGTZ", "europe/paris")
    a = psycopg.connect(p.dsn(application_name="app-a"), autocommit=True)
    monkeypatch.delenv("PGDATESTYLE")
    monkeypatch.delenv("PGTZ")
    b = p.connect(autocommit=True)
    try:
        a.execute("set intervalstyle = 'postgres_verbose'")
        a.execute("set standard_conforming_strings = off")
        for _ in range(3):   # whichever server a lands on, its settings follow it
            assert a.execute("show datestyle").fetchone() == ("German, DMY",)
            assert a.execute("show timezone").fetchone() == ("Europe/Paris",)
            assert a.execute("show application_name").fetchone() == ("app-a",)
            assert a.execute("show intervalstyle").fetchone() == ("postgres_verbose",)
            assert a.execute("show standard_conforming_strings").fetchone() == ("off",)
            assert b.execute("show datestyle").fetchone() == ("ISO, MDY",)
            assert b.execute("show intervalstyle").fetchone() == ("postgres",)
            with b.transaction():   # b holds one server while a runs on the other
                b.execute("select 1")
                assert a.execute("show timezone").fetchone() == ("Europe/Paris",)
    finally:
        a.close()
    p.wait_for_log(r"varcache_apply: SET .*DateStyle='German, DMY'|varcache_apply: SET .*DateStyle='german'")


def test_application_name_add_host(pooler_factory):
    p = start(pooler_factory, ini={"application_name_add_host": 1})
    c = psycopg.connect(p.dsn(application_name="myapp"), autocommit=True)
    try:
        name = c.execute("show application_name").fetchone()[0]
        assert name.startswith("myapp - 127.0.0.1:")
    finally:
        c.close()


def test_disable_pqexec(pooler_factory):
    p = start(pooler_factory, ini={"disable_pqexec": 1})
    r = p.psql("-Atc", "select 1")
    assert r.returncode != 0 and "PQexec disallowed" in r.stderr
    p.wait_for_log(r"closing because: PQexec disallowed \(age=\d+s\)")
    # the extended protocol still works
    c = p.connect(autocommit=True)
    assert c.execute("select %s::int", [3], prepare=False).fetchone() == (3,)


def test_connect_query_runs_on_each_new_server(pooler_factory, pg):
    db = pg.server_connstr("testdb") + " connect_query='set myapp.flag = ''on'''"
    p = start(pooler_factory, databases={"testdb": db}, ini={"pool_mode": "transaction", "default_pool_size": 2})
    a = p.connect(autocommit=True)
    b = p.connect(autocommit=True)
    with a.transaction(), b.transaction():   # two servers, both ran the connect_query
        assert a.execute("show myapp.flag").fetchone() == ("on",)
        assert b.execute("show myapp.flag").fetchone() == ("on",)
