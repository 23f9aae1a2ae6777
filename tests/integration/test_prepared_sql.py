"""SQL-level PREPARE / EXECUTE / DEALLOCATE in transaction pooling (beyond PgBouncer): a pool smaller than
the client count, so statements really move between server connections, and every answer compared with
what a direct PostgreSQL session gives."""

from __future__ import annotations

import asyncio
import subprocess
import threading

import psycopg
import psycopg2
import pytest
from pgutil import PASSWORDS, clean_env
from test_prepared import Raw, error_text, query, rows, types

POOL = {"pool_mode": "transaction", "default_pool_size": 2, "max_client_conn": 50}

SCRIPT = r"""
prepare p1(int) as select $1 + 1 as x;
execute p1(41);
execute P1 (1);
prepare p1 as select 2;
execute nope;
deallocate nope;
deallocate prepare nope;
begin;
prepare p2 as select 'two' as t;
execute p2;
prepare p2 as select 3;
execute p2;
rollback;
execute p2;
begin;
deallocate p2;
rollback;
execute p2;
prepare bad as select nosuchcol from pg_class;
execute bad;
prepare "Mixed Case" as select 'quoted';
execute "Mixed Case";
execute mixed;
/* a comment */ -- and another
  execute p1 (2);
prepare p3 as select 1/$1::int;
execute p3(0);
execute p3(   'zz');
execute p3 (1, 2);
prepare p4 as select 4; prepare p5 as select 5; prepare p6 as select 6;
execute p4; execute p5; execute p6; execute p1(1); execute p4;
prepare "p;7" as select $x$a;b$x$ as v, 'c;d' as w -- trailing comment
;
execute "p;7";
deallocate p1;
execute p1(1);
deallocate all;
execute p4;
prepare p8 as select 8;
\set VERBOSITY verbose
prepare p8 as select 9;
deallocate p9;
"""


def _psql(port: int, script: str) -> str:
    proc = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "md5user", "-d", "testdb"],
                          input=script, capture_output=True, text=True, timeout=60,
                          env=clean_env({"PGPASSWORD": PASSWORDS["md5user"]}))
    return proc.stdout + proc.stderr


def _drop_location(out: str) -> str:
    # VERBOSITY verbose prints the source location of an error: ours come from PL/pgSQL's RAISE
    return "\n".join(line for line in out.splitlines() if not line.startswith("LOCATION:"))


def test_psql_script_answers_like_a_direct_session(pooler_factory, pg):
    """Tags, rows, error texts with their positions (LINE/caret), SQLSTATEs, transaction aborts, quoted
    names, comments, statement ends inside quotes, eviction with max_prepared_statements=3: all identical."""
    pooler = pooler_factory.start({**POOL, "max_prepared_statements": 3})
    direct = _drop_location(_psql(pg.port, SCRIPT))
    pooled = _drop_location(_psql(pooler.port, SCRIPT))
    assert pooled == direct
    assert 'ERROR:  42P05: prepared statement "p8" already exists' in pooled
    assert "LINE 1: prepare bad as select nosuchcol from pg_class;" in pooled


def _stats(pooler, db="testdb"):
    return {r["database"]: r for r in pooler.admin_dicts("SHOW STATS")}[db]


def test_statements_move_between_servers_and_are_shared(pooler_factory):
    pooler = pooler_factory.start(POOL)
    errors = []

    def worker(i):
        try:
            conn = psycopg2.connect(pooler.dsn())
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("PREPARE add1(int) AS SELECT $1 + 1")
            cur.execute("PREPARE tag(text, int) AS SELECT $1 || ':' || $2")
            for j in range(30):
                cur.execute("EXECUTE add1(%s)", (j,))
                assert cur.fetchone() == (j + 1,)
                cur.execute("EXECUTE tag(%s, %s)", (f"c{i}", j))
                assert cur.fetchone() == (f"c{i}:{j}",)
                if j % 10 == 0:
                    cur.execute("SELECT name FROM pg_prepared_statements")
                    assert all(n.startswith("PGBOUNCER_") for (n,) in cur.fetchall())
            cur.execute("DEALLOCATE add1")
            with pytest.raises(psycopg2.Error) as e:
                cur.execute("EXECUTE add1(1)")
            assert e.value.pgcode == "26000"
            conn.close()
        except Exception as e:  # reported from the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    st = _stats(pooler)
    assert int(st["total_client_parse_count"]) == 12
    assert int(st["total_bind_count"]) == 6 * 60
    # two distinct statements, two servers: each server prepares each once
    assert int(st["total_server_parse_count"]) <= 4


def test_errors_abort_the_transaction_and_prepare_survives_rollback(pooler_factory):
    pooler = pooler_factory.start(POOL)
    conn = psycopg2.connect(pooler.dsn())
    cur = conn.cursor()                                # psycopg2 opens a transaction block
    cur.execute("PREPARE s AS SELECT 's'")
    with pytest.raises(psycopg2.Error) as e:
        cur.execute("PREPARE s AS SELECT 't'")
    assert e.value.pgcode == "42P05"
    assert e.value.diag.context is None                # the pooler's DO block does not show through
    with pytest.raises(psycopg2.Error) as e:
        cur.execute("EXECUTE s")
    assert e.value.pgcode == "25P02"
    conn.rollback()
    cur.execute("EXECUTE s")                           # PREPARE is not undone by ROLLBACK, as in PostgreSQL
    assert cur.fetchone() == ("s",)
    conn.commit()
    conn.close()


def test_several_statements_in_one_query_are_refused_clearly(pooler_factory):
    pooler = pooler_factory.start(POOL)
    conn = psycopg2.connect(pooler.dsn())
    conn.autocommit = True
    cur = conn.cursor()
    with pytest.raises(psycopg2.Error) as e:
        cur.execute("PREPARE a AS SELECT 1; SELECT 2")
    assert e.value.pgcode == "0A000"
    assert "must be the only statement" in str(e.value)
    cur.execute("SELECT 1")                            # the connection goes on
    assert cur.fetchone() == (1,)
    conn.close()


def test_asyncpg_and_psycopg3_simple_queries(pooler_factory):
    pooler = pooler_factory.start(POOL)

    async def worker(i):
        conn = await pooler.aconnect()
        try:
            await conn.execute(f"PREPARE w{i} AS SELECT {i}")
            for _ in range(10):
                await conn.execute(f"EXECUTE w{i}")     # simple protocol: the tag comes back
            await conn.execute(f"DEALLOCATE w{i}")
        finally:
            await conn.close()

    async def main():
        await asyncio.gather(*(worker(i) for i in range(5)))

    asyncio.run(main())
    with psycopg.connect(pooler.dsn(), autocommit=True) as c3:
        c3.execute("PREPARE q3(int) AS SELECT $1 * 3")
        assert c3.execute("EXECUTE q3(5)").fetchone() == (15,)
    assert int(_stats(pooler)["total_bind_count"]) == 51


def test_pipelined_queries_and_an_extended_error_before_them(pooler_factory):
    """Several Queries in one write, one after a failed extended-protocol batch: PostgreSQL skips a Query
    that follows an error until Sync, and the maps must not believe what never ran."""
    pooler = pooler_factory.start({**POOL, "default_pool_size": 1})
    c = Raw(pooler.port)
    c.send(query("PREPARE a AS SELECT 'a'"), query("EXECUTE a"), query("DEALLOCATE a"), query("EXECUTE a"))
    got = c.until(count=4)
    assert [t for t, _ in got if t in "CE"] == ["C", "C", "C", "E"]
    assert rows(got) == [("a",)]
    assert "26000" in error_text(got)
    c.send(query("PREPARE b AS SELECT 'b'"))
    assert "E" not in types(c.until())
    # a second client's EXECUTE on the same (only) server: its own namespace
    d = Raw(pooler.port)
    d.send(query("EXECUTE b"))
    assert "26000" in error_text(d.until())
    d.send(query("PREPARE b AS SELECT 'd'"), query("EXECUTE b"))
    assert rows(d.until(count=2)) == [("d",)]
    c.send(query("EXECUTE b"))
    assert rows(c.until()) == [("b",)]
    c.close()
    d.close()


def test_execute_sent_with_the_extended_protocol(pooler_factory):
    """psycopg 3 with binary=True and asyncpg without a statement cache send `EXECUTE name(args)` in an unnamed
    Parse (PostgreSQL takes no $n parameters in EXECUTE): the name is rewritten, the statement prepared
    first on a server that lacks it, and errors keep the client's name."""
    pooler = pooler_factory.start(POOL)
    errors = []

    def worker(i):
        try:
            with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                conn.execute("PREPARE mul(int, int) AS SELECT $1 * $2")
                cur = conn.cursor()
                for j in range(20):
                    assert cur.execute(f"EXECUTE mul({i}, {j})", binary=True).fetchone() == (i * j,)
                with pytest.raises(psycopg.Error) as e:
                    cur.execute("EXECUTE mul(1)", binary=True)
                assert 'prepared statement "mul"' in str(e.value) and "PGBOUNCER" not in str(e.value)
                with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                    cur.execute("EXECUTE nosuch(1)", binary=True)
                assert cur.execute("EXECUTE mul(3, 3)", binary=True).fetchone() == (9,)
        except Exception as e:  # reported from the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors

    async def aworker(i):
        conn = await pooler.aconnect(statement_cache_size=0)
        try:
            await conn.execute("PREPARE addn(int) AS SELECT $1 + 1000")
            for j in range(10):
                assert await conn.fetchval(f"EXECUTE addn({j})") == j + 1000
        finally:
            await conn.close()

    async def main():
        await asyncio.gather(*(aworker(i) for i in range(4)))

    asyncio.run(main())
    st = _stats(pooler)
    assert int(st["total_bind_count"]) >= 5 * 21 + 40
    assert int(st["total_server_parse_count"]) <= 2 * 2 + 20     # two SQL statements (+ asyncpg's own)


def test_extended_execute_after_eviction_and_failed_prepare(pooler_factory):
    """The injected PREPARE fails (the table went away): the client's Parse/Bind/Execute are skipped up to
    Sync, the client gets the error, and the server is not believed to hold the statement."""
    from test_prepared import SYNC, bind, execute, parse

    pooler = pooler_factory.start({**POOL, "default_pool_size": 1, "max_prepared_statements": 1})
    c = Raw(pooler.port)
    c.send(query("CREATE TABLE IF NOT EXISTS sqlprep_t (v int)"), query("INSERT INTO sqlprep_t VALUES (7)"))
    c.until(count=2)
    c.send(query("PREPARE fromt AS SELECT v FROM sqlprep_t"), query("PREPARE other AS SELECT 'o'"))
    c.until(count=2)                                       # 'other' evicted 'fromt' (LRU of 1)
    c.send(parse("", "EXECUTE fromt"), bind(""), execute(), SYNC)
    assert rows(c.until()) == [("7",)]
    c.send(query("EXECUTE other"), query("DROP TABLE sqlprep_t"))   # evicts fromt again
    c.until(count=2)
    c.send(parse("", "EXECUTE fromt"), bind(""), execute(), SYNC)
    got = c.until()
    assert types(got) == "EZ" and "sqlprep_t" in error_text(got)
    c.send(query("CREATE TABLE sqlprep_t (v int)"), query("INSERT INTO sqlprep_t VALUES (8)"))
    c.until(count=2)
    c.send(parse("", "EXECUTE fromt"), bind(""), execute(), SYNC)
    assert rows(c.until()) == [("8",)]
    c.send(query("DROP TABLE sqlprep_t"))
    c.until()
    c.close()


@pytest.mark.parametrize("text", [
    "PREPARE", "PREPARE x", "PREPARE x AS", "PREPARE \"unterminated AS SELECT 1", "PREPARE x AS SELECT 'open",
    "PREPARE x AS SELECT $$open", "PREPARE x AS SELECT 1 /* open", "EXECUTE", "EXECUTE (1)", "EXECUTE x(",
    "DEALLOCATE", "DEALLOCATE PREPARE", "PREPARE " + "n" * 300 + " AS SELECT 1", "PREPARE \"\" AS SELECT 1",
    "EXECUTE \xe9t\xe9", "PREPARE U&\"x\" AS SELECT 1", "-- PREPARE x AS SELECT 1", "PREPARE x(int AS SELECT 1",
])
def test_malformed_commands_get_an_error_and_the_connection_goes_on(pooler_factory, text):
    pooler = pooler_factory.start(POOL)
    c = Raw(pooler.port)
    c.send(query(text))
    got = c.until()
    assert got[-1][0] == "Z"
    c.send(query("SELECT 'alive'"))
    assert rows(c.until()) == [("alive",)]
    c.close()


def test_a_statement_deallocated_behind_the_pools_back_does_not_wedge_the_server(pooler_factory):
    """A raw `DEALLOCATE "PGBOUNCER_n"` sent in a Parse (not rewritten) removes a statement the LRU lists: the
    eviction that later fails on it corrects the LRU, and the next try works."""
    from test_prepared import SYNC, bind, execute, parse

    pooler = pooler_factory.start({**POOL, "default_pool_size": 1, "max_prepared_statements": 1})
    c = Raw(pooler.port)
    c.send(query("PREPARE a AS SELECT 'a'"))
    c.until()
    c.send(query("SELECT name FROM pg_prepared_statements"))
    (server_name,) = rows(c.until())[0]
    c.send(parse("", f'DEALLOCATE "{server_name}"'), bind(""), execute(), SYNC)
    assert "E" not in types(c.until())
    c.send(query("PREPARE b AS SELECT 'b'"))           # evicts a's statement, which is already gone
    assert "26000" in error_text(c.until())
    c.send(query("PREPARE b AS SELECT 'b'"), query("EXECUTE b"))
    assert rows(c.until(count=2)) == [("b",)]
    c.close()
