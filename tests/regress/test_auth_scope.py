"""Issue 16 item 7: a user learned through auth_query belongs to the database it was looked up for. A role in
admin_users that is not in auth_file once opened the console (and could RELOAD or SHUTDOWN) after logging in to
any auth_query database, because the secret landed in the one global user table. Whether a login succeeds must
never depend on earlier traffic."""

from __future__ import annotations

import psycopg
import pytest
from integration.authutil import login_result  # tests/ is on sys.path (conftest.py)

PW = "password authentication failed"
AUTH_ONLY = {"postgres": "postgrespass", "pgbouncer": "adminpass"}


def test_auth_query_login_does_not_open_the_console(pooler_factory):
    p = pooler_factory.start({"auth_user": "postgres", "admin_users": "pgbouncer,md5user"}, userlist=AUTH_ONLY)
    console = p.dsn("pgbouncer", "md5user", "md5pass")
    assert login_result(console) == "bouncer config error"
    assert login_result(p.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
    assert login_result(console) == "bouncer config error"
    with pytest.raises(psycopg.OperationalError, match="bouncer config error"):
        with psycopg.connect(console, autocommit=True) as conn:
            conn.execute("RELOAD")
    assert "RELOAD' command issued" not in p.log() and "RELOAD command issued" not in p.log()
    assert p.is_running()
    # the user shows in SHOW USERS (settings and counts), without a secret anybody could log in with
    assert "md5user" in {r["name"] for r in p.admin_dicts("SHOW USERS")}


def test_auth_query_users_are_per_database(pooler_factory, pg):
    dbs = {"testdb": pg.server_connstr("testdb", auth_user="postgres"),
           # an auth_query that finds nobody: whatever testdb's lookup learned is unknown here
           "otherdb": pg.server_connstr("otherdb", auth_user="postgres",
                                        auth_query="SELECT rolname, rolpassword FROM pg_authid "
                                                   "WHERE rolname = $1 AND false"),
           "benchdb": pg.server_connstr("benchdb"),                  # no auth_query: mock authentication
           "postgres": pg.server_connstr("postgres")}
    p = pooler_factory.start(databases=dbs, userlist=AUTH_ONLY)

    def outcomes():
        return [login_result(p.dsn(db, user, pw)) for db, user, pw in
                (("otherdb", "md5user", "md5pass"), ("benchdb", "md5user", "md5pass"),
                 ("otherdb", "scramuser", "scrampass"), ("benchdb", "scramuser", "scrampass"),
                 ("pgbouncer", "md5user", "md5pass"))]

    before = outcomes()
    assert before == ["no such user", PW, "no such user", PW, PW]
    for user, pw in (("md5user", "md5pass"), ("scramuser", "scrampass")):
        assert login_result(p.dsn("testdb", user, pw)) == f"OK {user}"
    assert outcomes() == before


def test_database_password_never_changes_the_auth_file_secret(pooler_factory, pg):
    dbs = {"testdb": pg.server_connstr("testdb"),
           "forced": pg.server_connstr("testdb", user="md5user", password="server-only")}
    p = pooler_factory.start(databases=dbs, userlist={"md5user": "md5pass", "pgbouncer": "adminpass"})
    assert login_result(p.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
    assert login_result(p.dsn("testdb", "md5user", "server-only")) == PW
    p.admin("RELOAD")
    assert login_result(p.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
    assert login_result(p.dsn("testdb", "md5user", "server-only")) == PW
