"""Choosing and reaching servers: several hosts per database (load_balance_hosts), host names through the
asynchronous resolver (and its failures), server_round_robin, and auto-databases from the '*' entry."""

from __future__ import annotations

import re

import psycopg
import pytest


def server_hosts(p) -> list[str]:
    return re.findall(r"S-0x[0-9a-f]+: testdb/md5user@(\S+?):\d+ new connection to server", p.log())


@pytest.mark.parametrize(("mode", "expected"), [("round-robin", {"127.0.0.1", "localhost"}),
                                                ("disable", {"127.0.0.1"})])
def test_several_hosts_load_balance(pooler_factory, pg, mode, expected):
    db = f"host=127.0.0.1,localhost port={pg.port} dbname=testdb load_balance_hosts={mode}"
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 4}, databases={"testdb": db})
    conns = [p.connect() for _ in range(4)]
    for c in conns:
        c.execute("select 1")          # four transactions at once: four server connections
    assert set(server_hosts(p)) == expected
    for c in conns:
        c.rollback()


def test_host_name_is_resolved(pooler_factory, pg):
    p = pooler_factory.start({"verbose": 1}, databases={"testdb": f"host=localhost port={pg.port} dbname=testdb"})
    with p.connect(autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)
    p.wait_for_log(r"DNS: localhost = ")


def test_unresolvable_host_is_retried_from_the_cache(pooler_factory):
    # a failed lookup closes only that server connection: the client stays queued (until query_wait_timeout)
    # while the pool tries again, and the retries get their answer from the cache (dns_nxdomain_ttl)
    p = pooler_factory.start({"dns_nxdomain_ttl": 60, "server_login_retry": 0, "query_wait_timeout": 1},
                             databases={"nowhere": "host=no-such-host.invalid port=5432 dbname=x"})
    with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
        psycopg.connect(p.dsn("nowhere"))
    assert p.log().count("closing because: server DNS lookup failed") >= 2
    assert p.log().count("WARNING DNS lookup failed: no-such-host.invalid") == 1


@pytest.mark.parametrize(("round_robin", "same"), [(0, True), (1, False)])
def test_server_round_robin(pooler_factory, round_robin, same):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 2, "server_round_robin": round_robin,
                              "server_check_delay": 3600})
    a, b = p.connect(), p.connect()
    a.execute("select 1")
    b.execute("select 1")          # two servers exist
    a.rollback()
    b.rollback()
    c = p.connect(autocommit=True)
    pids = [c.execute("select pg_backend_pid()").fetchone()[0] for _ in range(4)]
    # LIFO keeps reusing the most recent server; round robin cycles through both
    assert (len(set(pids)) == 1) == same


def test_auto_database(pooler_factory, pg):
    p = pooler_factory.start(databases={"*": f"host=127.0.0.1 port={pg.port}"})
    with psycopg.connect(p.dsn("otherdb"), autocommit=True) as c:
        assert c.execute("select current_database()").fetchone() == ("otherdb",)
    p.wait_for_log(r"registered new auto-database: otherdb")
    assert "otherdb" in {r["name"] for r in p.admin_dicts("SHOW DATABASES")}
