"""The walking skeleton end to end: real clients through pgbouncer-py to a real PostgreSQL (issue 2)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time

import psycopg
import psycopg.errors
import pytest
from pgutil import MD5_ROLE, SCRAM_ROLE, find_pg_bindir, listen_backlog, wait_until


@pytest.mark.parametrize("user", [MD5_ROLE, SCRAM_ROLE])
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_psql_reaches_postgres_through_the_pooler(pooler_factory, user, pool_mode):
    p = pooler_factory({"pool_mode": pool_mode})
    out = p.psql("-At", "-c", "select current_user, current_database()", user=user, check=True)
    assert out.stdout.strip() == f"{user}|testdb"
    p.wait_for_log(rf"C-0x[0-9a-f]+: testdb/{user}@127\.0\.0\.1:\d+ login attempt: db=testdb user={user} "
                   r"tls=no replication=no")
    p.wait_for_log(r"closing because: client close request \(age=\d+s\)")


def test_psql_over_the_unix_socket(pooler):
    out = pooler.psql("-At", "-c", "select 40 + 2", unix=True, check=True)
    assert out.stdout.strip() == "42"


def test_psycopg_sees_server_parameters_and_its_own_settings(pooler):
    conn = pooler.connect(application_name="foundation-test", options="-c DateStyle=German")
    info = conn.info
    assert info.parameter_status("server_version").startswith("15")
    assert info.parameter_status("application_name") == "foundation-test"
    assert conn.execute("show application_name").fetchone() == ("foundation-test",)
    assert conn.execute("show datestyle").fetchone()[0].startswith("German")
    assert conn.execute("select count(*) from generate_series(1, 10000)").fetchone() == (10000,)


def test_session_server_is_reused_and_reset(pooler_factory):
    p = pooler_factory({"pool_mode": "session", "default_pool_size": 1})
    with psycopg.connect(p.dsn(), autocommit=True) as c1:
        pid1 = c1.execute("select pg_backend_pid()").fetchone()[0]
        c1.execute("set work_mem = '7MB'")
    with psycopg.connect(p.dsn(), autocommit=True) as c2:
        # the same backend, cleaned by server_reset_query (DISCARD ALL)
        assert wait_until(lambda: c2.execute("select pg_backend_pid()").fetchone()[0]) == pid1
        assert c2.execute("show work_mem").fetchone() == ("4MB",)


def test_transaction_pooling_shares_one_server_between_clients(pooler_factory):
    p = pooler_factory({"pool_mode": "transaction", "default_pool_size": 1})
    conns = [psycopg.connect(p.dsn(), autocommit=True) for _ in range(3)]
    try:
        pids = {c.execute("select pg_backend_pid()").fetchone()[0] for c in conns}
        assert len(pids) == 1
        with conns[0].transaction():
            conns[0].execute("select 1")
        assert [c.execute("select 7").fetchone() for c in conns] == [(7,)] * 3
    finally:
        for c in conns:
            c.close()


def _pgbench(p, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(find_pg_bindir() / "pgbench"), "-n", "-h", p.host, "-p", str(p.port), "-U", MD5_ROLE, *args,
           "benchdb"]
    env = {"PGPASSWORD": "md5pass", "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
@pytest.mark.parametrize("extra", [["-S"], ["-S", "-C"], ["-S", "-M", "extended"], []])
def test_pgbench_runs_without_failures(pg, pooler_factory, pool_mode, extra):
    pg.init_pgbench()
    p = pooler_factory({"pool_mode": pool_mode, "default_pool_size": 3})
    r = _pgbench(p, "-c", "6", "-j", "2", "-t", "30", *extra)
    assert r.returncode == 0, r.stderr
    assert "number of failed transactions: 0" in r.stdout
    assert "number of transactions actually processed: 180/180" in r.stdout


def test_cancel_request_reaches_the_right_backend(pooler):
    conn = pooler.connect(autocommit=True)
    threading.Timer(0.5, conn.cancel).start()
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("select pg_sleep(30)")
    assert time.monotonic() - started < 20
    # the connection stays usable after the cancel
    assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("user", [MD5_ROLE, SCRAM_ROLE, "nosuchuser"])
def test_wrong_password_gets_pgbouncers_error(pooler, user):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed") as e:
        psycopg.connect(pooler.dsn(user=user, password="wrong"))
    assert "does not exist" not in str(e.value)


def test_scram_only_auth_type(pooler_factory):
    p = pooler_factory({"auth_type": "scram-sha-256"})
    with psycopg.connect(p.dsn(user=SCRAM_ROLE)) as conn:
        assert conn.execute("select current_user").fetchone() == (SCRAM_ROLE,)
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        psycopg.connect(p.dsn(user=SCRAM_ROLE, password="wrong"))


def test_unknown_database_and_startup_parameter(pooler):
    with pytest.raises(psycopg.OperationalError, match="no such database: nodb"):
        psycopg.connect(pooler.dsn(db="nodb"))
    # what lib/pq (Go) sends: libpq clients cannot send it, so speak the protocol by hand
    reply = _raw_startup(pooler, {"user": MD5_ROLE, "database": "testdb", "extra_float_digits": "2"})
    assert reply[:1] == b"E"
    assert b"C08P01\0" in reply
    assert b"Munsupported startup parameter: extra_float_digits\0" in reply


def test_ignore_startup_parameters(pooler_factory):
    p = pooler_factory({"ignore_startup_parameters": "extra_float_digits"})
    reply = _raw_startup(p, {"user": MD5_ROLE, "database": "testdb", "extra_float_digits": "2"})
    assert reply[:1] == b"R"      # authentication request: the parameter was ignored


def _raw_startup(p, params: dict[str, str]) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                                                 for k, v in params.items()) + b"\0"
    with socket.create_connection((p.host, p.port), timeout=10) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        return s.recv(4096)


def test_console_show_version(pooler):
    assert pooler.admin("SHOW VERSION") == [(f"PgBouncer 1.25.2 (pgbouncer-py {_version()})",)]


def test_sighup_reload_picks_up_a_new_database(pooler_factory, pg):
    p = pooler_factory()
    with pytest.raises(psycopg.OperationalError, match="no such database: added"):
        psycopg.connect(p.dsn(db="added"))
    text = p.ini_path.read_text().replace("[databases]\n", f"[databases]\nadded = {pg.server_connstr('testdb')}\n")
    p.ini_path.write_text(text)
    p.reload()
    p.wait_for_log("got SIGHUP, re-reading config")
    conn = wait_until(lambda: psycopg.connect(p.dsn(db="added")), ignore=(psycopg.OperationalError,))
    assert conn.execute("select current_database()").fetchone() == ("testdb",)
    conn.close()


def _version() -> str:
    from pgbouncer_py import __version__
    return __version__


def test_cli_version_and_missing_config():
    out = subprocess.run([sys.executable, "-m", "pgbouncer_py", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.splitlines()[0] == f"PgBouncer 1.25.2 (pgbouncer-py {_version()})"
    out = subprocess.run([sys.executable, "-m", "pgbouncer_py"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "no configuration file specified" in out.stderr


def test_bad_config_at_startup_exits_with_pgbouncers_message(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[pgbouncer]\nno_such_setting = 1\n")
    out = subprocess.run([sys.executable, "-m", "pgbouncer_py", str(ini)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0
    assert "unknown parameter: pgbouncer/no_such_setting" in out.stderr
    assert "FATAL cannot load config file" in out.stderr


@pytest.mark.parametrize("binary", ["py", "c"])
def test_listen_backlog_is_the_configured_one(pooler_factory, binary):
    # the event loop listen()s again when it starts serving a socket (asyncio's default backlog is 100):
    # the pooler must pass listen_backlog on, or a connection storm overflows a shorter queue than configured;
    # PgBouncer's accept queue is the configured one
    p = pooler_factory.start({"listen_backlog": "77"}, binary=binary)
    assert listen_backlog(p.port) == 77
