"""Faults on the server side against real PostgreSQL: backends killed mid-query and mid-transaction, a
PostgreSQL restart under load, an unreachable server, a stalled query (query_timeout) and running out of file
descriptors. The pooler must keep serving everyone else, recover its pools and never die. Scenarios that stop
PostgreSQL use their own PgCluster so the session's `pg` stays up for the other tests."""

from __future__ import annotations

import resource
import socket
import subprocess
import threading
import time

import psycopg
import pytest
from pgutil import PgCluster, clean_env, free_port, wait_until
from rawpg import Conn, alive_and_serving, open_fds, startup


def backend_pid(conn) -> int:
    return conn.execute("select pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_backend_killed_mid_query(pooler_factory, pg, mode):
    p = pooler_factory.start({"pool_mode": mode})
    bystander = p.connect(autocommit=True)
    victim = p.connect(autocommit=True)
    pid = backend_pid(victim) if mode == "session" else None
    errors = []

    def run():
        try:
            victim.execute("select pg_sleep(20)")
        except psycopg.Error as e:
            errors.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    if pid is None:
        pid = wait_until(lambda: pg.query("select pid from pg_stat_activity where query = 'select pg_sleep(20)'"
                                          " and state = 'active'"), message="the sleeping backend")[0][0]
    else:
        wait_until(lambda: pg.query("select 1 from pg_stat_activity where pid = %s and state = 'active'", [pid]))
    pg.query("select pg_terminate_backend(%s)", [pid])
    t.join(15)
    assert not t.is_alive(), "client left hanging after its backend was killed"
    assert errors, "the client was not told its query failed"
    assert bystander.execute("select 1").fetchone()[0] == 1
    alive_and_serving(p)
    wait_until(lambda: all(int(r["sv_active"]) + int(r["sv_idle"]) + int(r["sv_used"]) + int(r["sv_tested"])
                           + int(r["sv_login"]) <= 2 for r in p.admin_dicts("SHOW POOLS")),
               message="the dead server left the pool")


def test_backend_killed_mid_transaction(pooler_factory, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1})
    victim = p.connect()
    pid = backend_pid(victim)              # a transaction is open now (psycopg is not in autocommit)
    pg.query("select pg_terminate_backend(%s)", [pid])
    with pytest.raises(psycopg.OperationalError):
        victim.execute("select 1")
    # the only server slot of the pool is usable again by the next client
    with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=10) as other:
        assert other.execute("select 2").fetchone()[0] == 2
    alive_and_serving(p)


def test_postgres_restart_under_load(pooler_factory, tmp_path):
    own = PgCluster(tmp_path / "pg-restart")
    own.start()
    try:
        p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 4, "server_login_retry": 1},
                                 databases={"testdb": own.server_connstr("testdb")})
        pid = p.pid
        stop = threading.Event()
        ok_after: list[int] = [0] * 4
        restarted = threading.Event()

        def worker(i: int):
            while not stop.is_set():
                try:
                    with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=5) as c:
                        while not stop.is_set():
                            c.execute("select 1")
                            if restarted.is_set():
                                ok_after[i] += 1
                except psycopg.Error:
                    time.sleep(0.1)
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1)
        proc = subprocess.run([own.bindir / "pg_ctl", "restart", "-w", "-m", "fast", "-D", own.data_dir,
                               "-l", own.log_path], capture_output=True, text=True, env=clean_env({"LC_ALL": "C"}))
        assert proc.returncode == 0, proc.stderr
        restarted.set()
        wait_until(lambda: all(n > 0 for n in ok_after), timeout=30, message="every worker served after restart")
        stop.set()
        for t in threads:
            t.join(10)
        assert p.pid == pid and p.is_running()
        assert "Traceback" not in p.log()
    finally:
        own.stop()


def test_postgres_unreachable_gives_errors_not_hangs(pooler_factory, pg):
    dead = free_port()
    p = pooler_factory.start({"server_login_retry": 1, "query_wait_timeout": 3},
                             databases={"testdb": pg.server_connstr("testdb"),
                                        "deaddb": f"host=127.0.0.1 port={dead} dbname=testdb"})
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(p.dsn("deaddb"), connect_timeout=20)
        assert time.monotonic() - t0 < 15
    alive_and_serving(p)


def test_query_timeout_cancels_a_stalled_server(pooler_factory):
    p = pooler_factory.start({"query_timeout": 1, "pool_mode": "transaction"})
    bystander = p.connect(autocommit=True)
    c = p.connect(autocommit=True)
    t0 = time.monotonic()
    with pytest.raises(psycopg.Error):
        c.execute("select pg_sleep(30)")
    assert time.monotonic() - t0 < 10
    p.wait_for_log(r"query timeout")
    assert bystander.execute("select 3").fetchone()[0] == 3
    alive_and_serving(p)


def test_running_out_of_file_descriptors(pooler_factory):
    """RLIMIT_NOFILE of the running pooler is lowered so that accept() fails with EMFILE: the pooler must
    keep running, keep its existing clients, and accept again once descriptors are free."""
    p = pooler_factory.start({"max_client_conn": 500})
    held = p.connect(autocommit=True)
    alive_and_serving(p)
    soft, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
    limit = open_fds(p.pid) + 10
    resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (limit, hard))
    try:
        socks = []
        for _ in range(40):
            c = Conn(p.host, p.port, timeout=5)
            c.send(startup("md5user", "testdb"))
            socks.append(c)
        time.sleep(1)
        assert p.is_running()
        assert held.execute("select 5").fetchone()[0] == 5
        for c in socks:
            c.close()
    finally:
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard))
    alive_and_serving(p, timeout=20)
    s = socket.create_connection((p.host, p.port))
    s.close()
