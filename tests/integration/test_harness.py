"""The test harness itself: the PostgreSQL cluster fixture, and the pooler launcher driving Debian's PgBouncer."""

from __future__ import annotations

import asyncio
import signal

import pgutil
import psycopg
import pytest
from pgutil import PASSWORDS, HarnessError, connstr, wait_until


# -- helpers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("params", "expected"), [
    ({"host": "127.0.0.1", "port": 5432}, "host=127.0.0.1 port=5432"),
    ({"password": "a b"}, "password='a b'"),
    ({"password": "it's"}, "password='it\\'s'"),
    ({"password": "back\\slash"}, "password='back\\\\slash'"),
    ({"password": ""}, "password=''"),
    ({"user": "u", "password": None}, "user=u"),
])
def test_connstr_quoting(params, expected):
    assert connstr(**params) == expected


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 0, 7], 7),
    (["", "x"], "x"),
])
def test_wait_until_returns_first_truthy_value(values, expected):
    it = iter(values)
    assert wait_until(lambda: next(it), timeout=5, interval=0.001) == expected


@pytest.mark.parametrize("ignore", [(), (KeyError,)])
def test_wait_until_times_out_with_message(ignore):
    def never():
        if ignore:
            raise KeyError("nope")
        return False

    with pytest.raises(AssertionError, match=r"timed out after 0.1s waiting for the moon"):
        wait_until(never, timeout=0.1, interval=0.01, message="the moon", ignore=ignore)


@pytest.mark.parametrize(("content", "mode", "error"), [
    (b"#!/bin/sh\nexec python3 -m pgbouncer_py \"$@\"\n", 0o755, "not Debian's PgBouncer binary"),
    (b"\x7fELF....", 0o644, "not Debian's PgBouncer binary"),
    (None, None, "not usable"),
])
def test_c_binary_must_be_a_native_executable(tmp_path, monkeypatch, content, mode, error):
    fake = tmp_path / "pgbouncer"
    if content is not None:
        fake.write_bytes(content)
        fake.chmod(mode)
    monkeypatch.setattr(pgutil, "C_PGBOUNCER", str(fake))
    with pytest.raises(HarnessError, match=error):
        pgutil.check_c_pgbouncer()


# -- PostgreSQL cluster ---------------------------------------------------------------------------
@pytest.mark.parametrize(("user", "secret_prefix"), [
    ("md5user", "md5"),
    ("scramuser", "SCRAM-SHA-256$"),
    ("postgres", "SCRAM-SHA-256$"),
])
def test_roles_log_in_over_tcp_with_their_secret_kind(pg, user, secret_prefix):
    with psycopg.connect(pg.dsn("testdb", user)) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (user, "testdb")
    [(secret,)] = pg.query("select rolpassword from pg_authid where rolname = %s", [user])
    assert secret.startswith(secret_prefix)


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
def test_wrong_password_is_rejected_over_tcp(pg, user):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn("testdb", user, password="wrong"))


@pytest.mark.parametrize(("unix", "works"), [(True, True), (False, False)])
def test_trustuser_logs_in_over_unix_socket_only(pg, unix, works):
    if works:
        with psycopg.connect(pg.dsn("testdb", "trustuser", unix=True)) as conn:
            assert conn.execute("select current_user").fetchone() == ("trustuser",)
    else:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.dsn("testdb", "trustuser", unix=False, password="x"))


def test_every_role_can_create_tables_in_testdb(pg):
    for user in ("md5user", "scramuser"):
        pg.psql(f"create table harness_{user} (i int); drop table harness_{user};", db="testdb", user=user,
                tcp=True)


def test_pgbench_tables_are_created_on_request(pg):
    pg.init_pgbench()
    pg.init_pgbench()  # idempotent
    assert pg.psql("select count(*) from pgbench_branches", db="benchdb", user="md5user", tcp=True) == "1"


# -- pooler launcher with Debian's PgBouncer --------------------------------------------------------
@pytest.mark.parametrize(("user", "unix"), [("md5user", False), ("scramuser", False), ("md5user", True)])
def test_psql_through_c_pooler(c_pooler, user, unix):
    out = c_pooler.psql("-Atc", "select 1", user=user, unix=unix, check=True)
    assert out.stdout == "1\n"


def test_c_pooler_console_show_version(c_pooler):
    [(version,)] = c_pooler.admin("SHOW VERSION")
    assert version.startswith("PgBouncer 1.")


@pytest.mark.parametrize(("user", "unix"), [
    ("pgbouncer", True),     # own OS user over the unix socket: no password asked
    ("pgbouncer", False),    # admin_users member over TCP with its password
    ("pgb_stats", False),    # stats_users member may SHOW
])
def test_c_pooler_console_users(c_pooler, user, unix):
    rows = c_pooler.admin_dicts("SHOW DATABASES", user=user, unix=unix)
    assert {"testdb", "pgbouncer"} <= {r["name"] for r in rows}


def test_c_pooler_client_helpers(c_pooler):
    with c_pooler.connect(user="scramuser") as conn:
        assert conn.execute("select current_user").fetchone() == ("scramuser",)
    conn2 = c_pooler.connect2(db="otherdb")
    with conn2.cursor() as cur:
        cur.execute("select current_database()")
        assert cur.fetchone() == ("otherdb",)

    async def via_asyncpg():
        conn = await c_pooler.aconnect(user="md5user")
        try:
            return await conn.fetchval("select 40 + 2")
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == 42
    pools = c_pooler.admin_dicts("SHOW POOLS")
    assert {(p["database"], p["user"]) for p in pools} >= {("testdb", "scramuser"), ("otherdb", "md5user")}


def test_c_pooler_reload_and_log_polling(c_pooler):
    mark = c_pooler.log_mark()
    c_pooler.reload()
    c_pooler.wait_for_log(r"got SIGHUP", since=mark)
    assert c_pooler.is_running()


def test_pooler_settings_users_hba_and_stop(pooler_factory, pg):
    p = pooler_factory.start(
        binary="c",
        ini_settings={"pool_mode": "transaction", "stats_users": None},
        databases={"appdb": pg.server_connstr("testdb")},
        users={"md5user": "pool_mode=session"},
        userlist={"md5user": PASSWORDS["md5user"]},
        hba="host all md5user 127.0.0.1/32 md5\n",
    )
    ini = p.ini_path.read_text()
    assert "pool_mode = transaction" in ini and "stats_users" not in ini
    assert p.psql("-Atc", "select current_database()", db="appdb", check=True).stdout == "testdb\n"
    refused = p.psql("-Atc", "select 1", db="appdb", user="scramuser", password=PASSWORDS["scramuser"])
    assert refused.returncode != 0
    p.stop(signal.SIGINT)
    assert not p.is_running()


def test_c_pooler_daemon_mode(pooler_factory):
    p = pooler_factory.start(binary="c", extra_args=["-d"])
    assert p.pid != p.proc.pid and p.is_running()
    assert p.psql("-Atc", "select 1", check=True).stdout == "1\n"
    p.stop()
    assert not p.is_running()


def test_failed_start_reports_the_log(pooler_factory):
    with pytest.raises(HarnessError, match=r"(?s)exited with code.*pgbouncer\.ini"):
        pooler_factory.start(binary="c", ini_settings={"auth_file": None, "auth_type": "no-such-method"},
                             timeout=10)


def test_real_pgbouncer_124_runs_beside_ours(pooler_factory):
    """binary='c124' is the real PgBouncer 1.24.1 (../shared/tools/pgbouncer-1.24) on the same kind of ini."""
    ref = pooler_factory.start(binary="c124", ini_settings={"server_tls_sslmode": "disable"})
    ours = pooler_factory.start(ini_settings={"server_tls_sslmode": "disable"})
    assert ref.admin_result("SHOW VERSION")[1][0][0] == "PgBouncer 1.24.1"
    assert ours.admin_result("SHOW VERSION")[1][0][0].startswith("PgBouncer 1.25")
    for p in (ref, ours):
        assert p.psql("-Atc", "select current_user", check=True).stdout == "md5user\n"
    ref.stop()
    assert not ref.is_running()
