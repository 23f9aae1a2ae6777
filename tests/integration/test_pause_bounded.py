"""PAUSE that cannot hang (pgbouncer-py extension, docs/extensions.md): PAUSE [db] TIMEOUT n [FORCE] with long
transactions in flight, and RESUME racing a waiting PAUSE, which leaves PgBouncer's PAUSE waiting forever (its
issue #715) while ours answers at once."""

import contextlib
import signal
import subprocess
import threading
import time

import psycopg
import psycopg2
import pytest
from pgutil import ADMIN_USER, clean_env, find_pg_bindir, wait_until


def console(p):
    conn = psycopg2.connect(p.dsn("pgbouncer", ADMIN_USER, unix=True))
    conn.autocommit = True
    return contextlib.closing(conn)


def run(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.statusmessage, (cur.fetchall() if cur.description else None)


def state(p) -> dict:
    with console(p) as adm:
        return dict(run(adm, "SHOW STATE")[1])


def console_psql(p, sql: str) -> subprocess.Popen:
    """A console command in its own psql process, so a command that never answers can be killed."""
    cmd = [str(find_pg_bindir() / "psql"), "-X", "-h", p.unix_dir, "-p", str(p.port), "-U", ADMIN_USER,
           "-d", "pgbouncer", "-c", sql]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env({"PGCONNECT_TIMEOUT": "10"}))


def kill(proc: subprocess.Popen) -> None:
    """End a console psql that is still waiting (PgBouncer's hanging PAUSE)."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def in_transaction(p):
    """A client holding its server inside an open transaction (a long transaction in flight)."""
    c = p.connect2()
    cur = c.cursor()
    cur.execute("select 1")     # psycopg2 opened a transaction: the server stays linked until commit
    return c


@pytest.fixture
def pooler(pooler_factory):
    """pgbouncer-py in transaction mode: a server is busy exactly while a transaction is open."""
    return pooler_factory.start(ini_settings={"pool_mode": "transaction"})


@pytest.mark.parametrize("binary", ["py", "c124"])
def test_resume_while_pause_waits(pooler_factory, binary):
    """PAUSE waits for a transaction in flight; a RESUME from another console comes meanwhile; then the transaction
    ends. PgBouncer 1.24.1 never answers that PAUSE (it is killed after a few seconds here); pgbouncer-py answers it
    with an error as soon as RESUME runs, and the pooler serves on."""
    p = pooler_factory.start(ini_settings={"pool_mode": "transaction"}, binary=binary)
    tx = in_transaction(p)
    pause = console_psql(p, "PAUSE")
    try:
        wait_until(lambda: state(p)["paused"] == "yes", message="pause mode")
        time.sleep(0.3)
        assert pause.poll() is None                          # waits for the transaction
        with console(p) as adm:
            assert run(adm, "RESUME")[0] == "RESUME"
        tx.commit()                                          # the server is released now
        if binary == "py":
            out, err = pause.communicate(timeout=5)
            assert pause.returncode != 0
            assert "ERROR:  PAUSE canceled: RESUME was issued while it waited for server connections" in err
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                pause.communicate(timeout=3)                 # PgBouncer's issue #715: PAUSE hangs
        assert state(p)["paused"] == "no"
        with p.connect() as c:
            assert c.execute("select 42").fetchone() == (42,)
    finally:
        kill(pause)
        tx.close()
    if binary == "py":
        p.wait_for_log(r"ERROR PAUSE canceled: RESUME was issued")


@pytest.mark.parametrize("binary", ["py", "c124"])
def test_pause_timeout_is_syntax_pgbouncer_does_not_use(pooler_factory, binary):
    """PgBouncer refuses the bounded form as an invalid command; pgbouncer-py runs it (here with nothing to wait
    for, so it completes at once)."""
    p = pooler_factory.start(binary=binary)
    with console(p) as adm:
        if binary == "c124":
            with pytest.raises(psycopg2.Error) as ei:
                run(adm, "PAUSE TIMEOUT 5")
            assert "invalid command 'PAUSE TIMEOUT 5', use SHOW HELP;" in ei.value.pgerror
        else:
            assert run(adm, "PAUSE TIMEOUT 5")[0] == "PAUSE"
            assert dict(run(adm, "SHOW STATE")[1])["paused"] == "yes"
            assert run(adm, "RESUME")[0] == "RESUME"


def test_pause_timeout_gives_up_and_undoes_the_pause(pooler):
    p = pooler
    tx = in_transaction(p)
    try:
        with console(p) as adm:
            t0 = time.monotonic()
            with pytest.raises(psycopg2.Error) as ei:
                run(adm, "PAUSE testdb TIMEOUT 1")
            took = time.monotonic() - t0
            assert 0.9 <= took < 4, took
            assert ei.value.pgcode == "57014"
            assert ei.value.pgerror.startswith("ERROR:  PAUSE testdb timed out after 1 s with 1 server "
                                               "connection(s) still in use; pause undone")
            dbs = {r[0]: r for r in run(adm, "SHOW DATABASES")[1]}
            assert dbs["testdb"][15] == 0                    # paused column: undone
            with p.connect() as c:                           # the database serves new clients
                assert c.execute("select 1").fetchone() == (1,)
        tx.cursor().execute("select 2")                      # the long transaction was not touched
        tx.commit()
    finally:
        tx.close()
    p.wait_for_log(r"PAUSE testdb TIMEOUT 1 command issued")


def test_pause_timeout_completes_when_released_in_time(pooler):
    p = pooler
    tx = in_transaction(p)
    threading.Timer(0.5, tx.commit).start()
    try:
        with console(p) as adm:
            assert run(adm, "PAUSE TIMEOUT 10")[0] == "PAUSE"
            assert dict(run(adm, "SHOW STATE")[1])["paused"] == "yes"
            time.sleep(0.5)
            assert dict(run(adm, "SHOW STATE")[1])["paused"] == "yes"       # stays paused: no bound after PAUSE
            assert run(adm, "RESUME")[0] == "RESUME"
    finally:
        tx.close()


def test_pause_timeout_force_cancels_and_closes_what_runs(pooler, pg):
    """FORCE: a query running on PostgreSQL is canceled and its server connection closed, an idle-in-transaction
    client loses its server too; the PAUSE then completes and the pooler stays paused."""
    p = pooler
    idle_tx = in_transaction(p)
    sleeper = p.connect(autocommit=True)
    failed = []

    def sleep():
        try:
            sleeper.execute("select pg_sleep(60)")
        except psycopg.Error as e:
            failed.append(str(e))

    t = threading.Thread(target=sleep)
    t.start()
    wait_until(lambda: pg.query("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'"
                                " and state = 'active'")[0][0] == 1, message="pg_sleep running")
    try:
        with console(p) as adm:
            t0 = time.monotonic()
            with adm.cursor() as cur:
                cur.execute("PAUSE TIMEOUT 1 FORCE")
                assert cur.statusmessage == "PAUSE"
            assert time.monotonic() - t0 < 4
            assert any("PAUSE TIMEOUT FORCE closed 2 server connection(s) still in use" in n for n in adm.notices)
            assert dict(run(adm, "SHOW STATE")[1])["paused"] == "yes"
            t.join(10)
            assert failed and "server connection closed by PAUSE TIMEOUT FORCE" in failed[0], failed
            # the query does not run on in PostgreSQL behind a closed socket
            wait_until(lambda: pg.query("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'"
                                        " and state = 'active'")[0][0] == 0, message="pg_sleep canceled")
            with pytest.raises(psycopg2.Error):
                idle_tx.cursor().execute("select 1")
            assert run(adm, "RESUME")[0] == "RESUME"
        with p.connect() as c:
            assert c.execute("select 3").fetchone() == (3,)
    finally:
        idle_tx.close()
        sleeper.close()
    p.wait_for_log(r"PAUSE TIMEOUT 1 FORCE: closed 2 server connection\(s\) still in use")


@pytest.mark.parametrize("how", ["RESUME", "SIGUSR2"])
def test_resume_cancels_a_timed_pause_that_then_never_fires(pooler, how):
    """PAUSE TIMEOUT waiting, RESUME (or SIGUSR2), then a new PAUSE that completes: the first bound must not undo
    the second."""
    p = pooler
    tx = in_transaction(p)
    pause = console_psql(p, "PAUSE TIMEOUT 1.5")
    try:
        wait_until(lambda: state(p)["paused"] == "yes", message="pause mode")
        with console(p) as adm:
            if how == "RESUME":
                assert run(adm, "RESUME")[0] == "RESUME"
            else:
                p.signal(signal.SIGUSR2)
            _, err = pause.communicate(timeout=5)
            assert "PAUSE canceled: RESUME was issued while it waited for server connections" in err
            tx.commit()
            assert run(adm, "PAUSE")[0] == "PAUSE"
            time.sleep(2)                                     # past the first PAUSE's bound
            assert dict(run(adm, "SHOW STATE")[1])["paused"] == "yes"
            assert run(adm, "RESUME")[0] == "RESUME"
    finally:
        kill(pause)
        tx.close()


def test_pause_timeout_bad_values(pooler):
    with console(pooler) as adm:
        with pytest.raises(psycopg2.Error) as ei:
            run(adm, "PAUSE TIMEOUT 0")
        assert "PAUSE TIMEOUT needs a number of seconds above 0" in ei.value.pgerror
        with pytest.raises(psycopg2.Error) as ei:
            run(adm, "PAUSE nosuch TIMEOUT 3")
        assert "no such database: nosuch" in ei.value.pgerror
        assert dict(run(adm, "SHOW STATE")[1])["paused"] == "no"

