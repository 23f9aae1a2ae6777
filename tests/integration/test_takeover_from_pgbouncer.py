"""Online restart from the real PgBouncer 1.24.1 to pgbouncer-py (issue 17, item 10): `pgbouncer-py -R` takes
the sockets of a running PgBouncer with what its SHOW FDS says (cancel keys, SCRAM keys as bytea), and the
clients keep working: their sessions, their cancel requests, and new server logins of a SCRAM pass-through user."""

from __future__ import annotations

import threading

import psycopg
import pytest
from pgutil import ADMIN_PASSWORD, ADMIN_USER, wait_until
from test_takeover import restart


def test_takeover_from_pgbouncer_124_keeps_clients_working(pooler_factory, pg):
    [(secret,)] = pg.query("select rolpassword from pg_authid where rolname = 'scramuser'")
    old = pooler_factory.start(
        {"auth_type": "scram-sha-256", "pool_mode": "transaction"}, binary="c124",
        databases={"testdb": pg.server_connstr("testdb"), "otherdb": pg.server_connstr("otherdb", pool_mode="session")},
        userlist={"scramuser": secret, "md5user": "md5pass", ADMIN_USER: ADMIN_PASSWORD})
    # a SCRAM pass-through user in transaction mode (only its client proof gave the keys a server login needs)
    scram = old.connect(user="scramuser", password="scrampass", autocommit=True)
    assert scram.execute("select current_user").fetchone() == ("scramuser",)
    # a session with state in its backend
    session = old.connect("otherdb", autocommit=True)
    session.execute("set application_name = 'kept'")
    session.execute("create temp table t(x int)")
    session.execute("insert into t values (42)")
    backend = session.execute("select pg_backend_pid()").fetchone()[0]

    new = restart(pooler_factory, old)
    new.wait_for_log(r"takeover: old process is not pgbouncer-py; adopting sockets from SHOW FDS rows only")
    new.wait_for_log(r"takeover: adopted 2 clients and 2 servers from pid \d+")
    assert session.execute("select x, current_setting('application_name'), pg_backend_pid() from t").fetchone() \
        == (42, "kept", backend)
    assert new.admin_dicts("SHOW SERVERS")[0]["remote_pid"] in {r[0] for r in pg.query(
        "select pid from pg_stat_activity where backend_type = 'client backend'")}
    # the adopted client's cancel key (SHOW FDS `cancel`) still reaches its backend
    timer = threading.Timer(0.5, session.cancel)
    timer.start()
    with pytest.raises(psycopg.errors.QueryCanceled):
        session.execute("select pg_sleep(20)")
    timer.join()
    # new server logins for the pass-through user: the SCRAM keys came over as bytea in SHOW FDS
    new.admin("RECONNECT")
    wait_until(lambda: all(r["database"] != "testdb" for r in new.admin_dicts("SHOW SERVERS")),
               message="the adopted testdb server to close")
    assert scram.execute("select current_user").fetchone() == ("scramuser",)
    assert "wrong password type" not in new.log() and "login failed" not in new.log()
    assert session.execute("select x from t").fetchone() == (42,)
