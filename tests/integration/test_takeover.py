"""Online restart (-R): a new pgbouncer-py takes every socket of the running one over its unix socket,
while clients keep running queries on the sessions they had."""

from __future__ import annotations

import sys
import threading
import time

import psycopg
import pytest
from pgutil import Pooler, wait_until


def restart(factory, old: Pooler) -> Pooler:
    """Start `pgbouncer-py -R` with old's ini; return it once old has exited and new has adopted the sockets."""
    new = Pooler(name=f"{old.name}R", binary="py", cmd=[factory.python, "-m", "pgbouncer_py", "-R", str(old.ini_path)],
                 workdir=old.workdir, ini_path=old.ini_path, settings=old.settings, userlist=old.userlist)
    factory.poolers.append(new)
    mark = old.log_mark()
    new._launch()
    new.wait_for_log(r"takeover: adopted \d+ clients", timeout=30, since=mark)
    wait_until(lambda: not old.is_running(), 20, message=f"old pooler {old.pid} to exit")
    assert old.returncode in (None, 0) and (old.proc is None or old.proc.returncode == 0)
    new.wait_ready()
    return new


class Worker(threading.Thread):
    """One client connection running `select pg_sleep(...)` queries until told to stop."""

    def __init__(self, dsn: str, sleep: float):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.sleep = sleep
        self.stop = threading.Event()
        self.done = 0
        self.in_flight = threading.Event()
        self.errors: list[str] = []
        self.backend_pids: set[int] = set()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.in_flight.set()
                n, pid = self.conn.execute("select %s::int, pg_backend_pid() from pg_sleep(%s)",
                                           [self.done, self.sleep]).fetchone()
                assert n == self.done
                self.backend_pids.add(pid)
                self.done += 1
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))
        finally:
            self.conn.close()


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_five_online_restarts_keep_running_queries(pooler_factory, pool_mode):
    p = pooler_factory.start({"pool_mode": pool_mode, "default_pool_size": 10})
    pids = [p.pid]
    workers = [Worker(p.dsn(), 0.7) for _ in range(5)]
    for w in workers:
        w.start()
    for _ in range(5):
        for w in workers:
            assert w.in_flight.wait(10)
        time.sleep(0.2)                 # let the queries be inside pg_sleep on the server
        p = restart(pooler_factory, p)
        pids.append(p.pid)
        before = [w.done for w in workers]
        wait_until(lambda b=before: all(w.done > n for w, n in zip(workers, b, strict=True)) or
                   any(w.errors for w in workers), 20, message="every worker to finish a query after the restart")
    for w in workers:
        w.stop.set()
    for w in workers:
        w.join(20)
    assert [w.errors for w in workers] == [[]] * 5
    assert all(w.done >= 5 for w in workers)
    assert len(set(pids)) == 6
    if pool_mode == "session":
        # the sessions themselves survived: each client kept its PostgreSQL backend
        assert [len(w.backend_pids) for w in workers] == [1] * 5
    assert p.connect().execute("select 1").fetchone() == (1,)


def test_takeover_keeps_session_state_and_cancel_key(pooler_factory):
    p = pooler_factory.start({"pool_mode": "session"})
    conn = p.connect(autocommit=True)
    conn.execute("set application_name = 'kept'")
    conn.execute("create temp table t(x int)")
    conn.execute("insert into t values (42)")
    p = restart(pooler_factory, p)
    assert conn.execute("select x, current_setting('application_name') from t").fetchone() == (42, "kept")
    # the adopted client's cancel key still works against the new process
    t = threading.Timer(0.5, conn.cancel)
    t.start()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("select pg_sleep(20)")
    t.join()
    assert conn.execute("select 1").fetchone() == (1,)


def test_takeover_without_old_process_boots_normally(pooler_factory):
    p = pooler_factory.start(extra_args=["-R"])
    p.wait_for_log("old process not found, try to continue normally")
    assert p.connect().execute("select 1").fetchone() == (1,)


def test_show_fds_lists_sockets_without_suspending(pooler_factory):
    p = pooler_factory.start()
    conn = p.connect(autocommit=True)
    conn.execute("select 1")
    rows = p.admin_dicts("show fds")
    tasks = sorted({r["task"] for r in rows})
    assert tasks == ["client", "pooler", "server"]
    assert any(r["task"] == "client" and r["user"] == "md5user" and r["link"] != 0 for r in rows)
    assert [r["value"] for r in p.admin_dicts("show state") if r["key"] == "suspended"] in ([], ["no"])
    assert conn.execute("select 2").fetchone() == (2,)


def test_takeover_drops_nothing_else(pooler_factory):
    """The unix socket survives the handover (the old process must not unlink it)."""
    p = pooler_factory.start()
    p2 = restart(pooler_factory, p)
    assert p2.admin("show version")
    assert sys.platform.startswith("linux")


def test_prepared_statement_maps_survive_takeover(pooler_factory):
    """Protocol-level and SQL-level statement names of a logged-in client keep working after -R, and the
    statements the servers already have are not prepared again."""
    from test_prepared import SYNC, Raw, bind, execute, parse, query, rows, types

    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1})
    c = Raw(p.port)
    c.send(parse("proto", "select $1::int * 2"), bind("proto", 21), execute(), SYNC)
    assert rows(c.until()) == [("42",)]
    c.send(query("PREPARE viasql(int) AS SELECT $1 + 100"), query("EXECUTE viasql(1)"))
    assert rows(c.until(count=2)) == [("101",)]
    p2 = restart(pooler_factory, p)
    c.send(bind("proto", 5), execute(), SYNC)
    assert rows(c.until()) == [("10",)]
    c.send(query("EXECUTE viasql(2)"))
    got = c.until()
    assert rows(got) == [("102",)] and "E" not in types(got)
    st = {r["database"]: r for r in p2.admin_dicts("SHOW STATS")}["testdb"]
    assert int(st["total_server_parse_count"]) == 0
    c.close()
