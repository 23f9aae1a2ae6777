"""Replication connections (replication=true|database) through the pooler: a dedicated server connection in
session mode whatever pool_mode says, closed with the client; pg_basebackup works through it."""

from __future__ import annotations

import subprocess

import pytest
from pgutil import PASSWORDS, clean_env, find_pg_bindir, wait_until


@pytest.fixture
def replication_hba(pg):
    """Let the test cluster accept replication connections over TCP (added once, harmless to the rest)."""
    pg.allow_replication()
    return pg


def psql_conninfo(p, conninfo: str, sql: str) -> subprocess.CompletedProcess:
    env = clean_env({"PGPASSWORD": PASSWORDS["postgres"], "PGCONNECT_TIMEOUT": "10"})
    cmd = [str(find_pg_bindir() / "psql"), "-X", "-At", "-d",
           f"host={p.host} port={p.port} user=postgres {conninfo}", "-c", sql]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
@pytest.mark.parametrize(("replication", "shown"), [("true", "physical"), ("database", "logical")])
def test_identify_system_through_pooler(pooler_factory, replication_hba, mode, replication, shown):
    p = pooler_factory.start({"pool_mode": mode})
    r = psql_conninfo(p, f"dbname=testdb replication={replication}", "IDENTIFY_SYSTEM")
    assert r.returncode == 0, r.stderr
    systemid, timeline, _lsn, dbname = r.stdout.strip().split("|")
    assert systemid.isdigit() and timeline == "1"
    assert dbname == ("testdb" if replication == "database" else "")
    p.wait_for_log(rf"login attempt: db=testdb user=postgres tls=no replication={'yes' if shown == 'physical' else 'database'}")
    # the dedicated server connection does not go back to the pool
    p.wait_for_log(r"S-0x[0-9a-f]+: testdb/postgres@\S+ closing because: replication client was closed")
    rows = [r for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb" and r["user"] == "postgres"]
    assert rows and rows[0]["sv_idle"] == 0     # no ordinary server was opened for the replication client


def test_replication_server_not_shared_with_normal_clients(pooler_factory, replication_hba, pg):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1})
    normal = p.connect(user="postgres", autocommit=True)
    normal.execute("select 1")
    r = psql_conninfo(p, "dbname=testdb replication=database", "IDENTIFY_SYSTEM")
    assert r.returncode == 0, r.stderr
    assert normal.execute("select 2").fetchone() == (2,)
    wait_until(lambda: pg.query("select count(*) from pg_stat_activity where backend_type = 'walsender'")[0][0] == 0)


def test_pg_basebackup_through_pooler(pooler_factory, replication_hba, pg, tmp_path):
    # libpq asks for database "replication" on a physical replication connection
    dbs = {"replication": pg.server_connstr("postgres"), "testdb": pg.server_connstr("testdb")}
    p = pooler_factory.start({"pool_mode": "transaction"}, databases=dbs)
    env = clean_env({"PGPASSWORD": PASSWORDS["postgres"]})
    target = tmp_path / "backup"
    r = subprocess.run([str(find_pg_bindir() / "pg_basebackup"), "-h", p.host, "-p", str(p.port), "-U", "postgres",
                        "-D", str(target), "-X", "none", "--no-sync", "-c", "fast"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (target / "PG_VERSION").exists()
