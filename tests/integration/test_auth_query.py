"""auth_user + auth_query end to end, SCRAM pass-through (no plaintext anywhere), auth_file reload and the
security rules of the login phase (limits, empty passwords, malformed SASL, hba reload)."""

from __future__ import annotations

import base64

import psycopg
import pytest
from authutil import login_result, password_msg, raw_login, sasl_initial
from pgutil import PASSWORDS, format_userlist, wait_until

PW = "password authentication failed"
SASL = "SASL authentication failed"
AUTHQ = {"auth_user": "postgres"}
AUTH_ONLY = {"postgres": "postgrespass"}


def _server_conns(pg, user: str) -> int:
    return pg.query("select count(*) from pg_stat_activity where usename = %s and backend_type = 'client backend'",
                    [user])[0][0]


@pytest.mark.parametrize(("user", "password", "expected"), [
    ("md5user", "md5pass", "OK md5user"),
    ("md5user", "wrong", PW),
    ("scramuser", "scrampass", "OK scramuser"),
    ("scramuser", "wrong", SASL),
    ("nosuchrole", "x", "no such user"),
    ("trustuser", "x", PW),              # a role without password: NULL secret
])
def test_auth_query_login(pooler_factory, user, password, expected):
    pooler = pooler_factory.start(AUTHQ, userlist=AUTH_ONLY)
    assert login_result(pooler.dsn("testdb", user, password)) == expected


def test_auth_query_ignores_client_options_and_honours_valid_until(pooler_factory, pg):
    pg.psql("DROP ROLE IF EXISTS expired; SET password_encryption='scram-sha-256'; "
            "CREATE ROLE expired LOGIN PASSWORD 'exppass' VALID UNTIL '2000-01-01'")
    pooler = pooler_factory.start({**AUTHQ, "ignore_startup_parameters": "search_path"}, userlist=AUTH_ONLY)
    assert login_result(pooler.dsn("testdb", "expired", "exppass")) == PW   # NULL secret: md5 mock
    # a search_path that would hide pg_authid behind a fake table does not reach the auth_query connection
    dsn = pooler.dsn("testdb", "scramuser", "scrampass", options="-c search_path=nowhere")
    assert login_result(dsn) == "OK scramuser"


def test_per_database_auth_user_and_auth_dbname(pooler_factory, pg):
    dbs = {"testdb": pg.server_connstr("testdb", auth_user="postgres"),
           "otherdb": pg.server_connstr("otherdb", auth_dbname="postgres", auth_user="postgres"),
           "postgres": pg.server_connstr("postgres"),
           "badauth": pg.server_connstr("testdb", auth_dbname="missing", auth_user="postgres"),
           "adminauth": pg.server_connstr("testdb", auth_dbname="pgbouncer", auth_user="postgres"),
           "noauth": pg.server_connstr("testdb")}
    pooler = pooler_factory.start(databases=dbs, userlist=AUTH_ONLY)
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
    assert login_result(pooler.dsn("otherdb", "scramuser", "scrampass")) == "OK scramuser"
    assert login_result(pooler.dsn("badauth", "md5user", "md5pass")) == "bouncer config error"
    assert login_result(pooler.dsn("adminauth", "md5user", "md5pass")) == "bouncer config error"
    assert login_result(pooler.dsn("noauth", "md5user", "md5pass")) == PW       # no auth_user: mock auth
    pools = {(r["database"], r["user"]) for r in pooler.admin_dicts("SHOW POOLS")}
    assert ("postgres", "postgres") in pools and ("testdb", "postgres") in pools


def test_auth_database_disabled(pooler_factory):
    pooler = pooler_factory.start({**AUTHQ, "auth_dbname": "postgres"}, userlist=AUTH_ONLY)
    pooler.admin("DISABLE postgres")
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == 'authentication database "postgres" is disabled'


def test_auth_query_many_clients_share_the_auth_pool(pooler_factory, pg):
    pooler = pooler_factory.start({**AUTHQ, "default_pool_size": 1, "pool_mode": "transaction"}, userlist=AUTH_ONLY)
    conns = [psycopg.connect(pooler.dsn("testdb", u, PASSWORDS[u]), autocommit=True) for u in ("md5user", "scramuser") * 3]
    try:
        assert [c.execute("select current_user").fetchone()[0] for c in conns] == ["md5user", "scramuser"] * 3
    finally:
        for c in conns:
            c.close()


def test_scram_pass_through_keeps_working_after_the_client_left(pooler_factory, pg):
    [(secret,)] = pg.query("select rolpassword from pg_authid where rolname = 'scramuser'")
    pooler = pooler_factory.start({"min_pool_size": 3}, userlist=format_userlist({"scramuser": secret}))
    with psycopg.connect(pooler.dsn("testdb", "scramuser", "scrampass")) as conn:
        assert conn.execute("select current_user").fetchone() == ("scramuser",)
    # with the client gone, the pooler opens more server connections with the keys it derived
    wait_until(lambda: _server_conns(pg, "scramuser") >= 3, timeout=20, message="min_pool_size servers")
    pg.psql("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'scramuser'")
    wait_until(lambda: _server_conns(pg, "scramuser") >= 3, timeout=20, message="servers again after terminate")
    assert "scrampass" not in pooler.log()


def test_scram_pass_through_with_auth_query(pooler_factory):
    pooler = pooler_factory.start(AUTHQ, userlist=AUTH_ONLY)
    for _ in range(2):
        assert login_result(pooler.dsn("testdb", "scramuser", "scrampass")) == "OK scramuser"


def test_auth_file_reload_and_broken_lines(pooler_factory):
    pooler = pooler_factory.start(userlist={"md5user": "md5pass"})
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
    userlist = pooler.workdir / "userlist.txt"
    userlist.write_text('"md5user" "changed"\n"scramuser" "scrampass"\nbroken line\n"late" "x"\n')
    pooler.admin("RELOAD")
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == PW
    assert login_result(pooler.dsn("testdb", "scramuser", "scrampass")) == "OK scramuser"
    assert login_result(pooler.dsn("testdb", "late", "x")) == PW          # after the broken line: not read
    assert "broken auth file" in pooler.log()


def test_long_password_and_username_limits(pooler_factory, pg):
    long_pw = "p" * 65530
    dbs = {"testdb": pg.server_connstr("testdb", user="md5user", password="md5pass")}
    name = "u" * 127
    pooler = pooler_factory.start({"auth_type": "plain"}, databases=dbs,
                                  userlist=format_userlist({"longpw": long_pw, name: "x"}))
    assert login_result(pooler.dsn("testdb", "longpw", long_pw)) == "OK md5user"
    assert login_result(pooler.dsn("testdb", "longpw", long_pw[:-1])) == PW
    assert login_result(pooler.dsn("testdb", "longpw", long_pw + "pp")) == PW    # over the maximum: no hint
    assert login_result(pooler.dsn("testdb", name, "x")) == "OK md5user"
    assert login_result(pooler.dsn("testdb", name + "u", "x")) == "username too long"


@pytest.mark.parametrize(("auth_type", "answers", "expected"), [
    ("plain", [password_msg(b"\0")], "ERROR: empty password returned by client"),
    ("plain", [password_msg(b"md5pass\0")], "OK"),
    ("md5", [password_msg(b"\0")], f"ERROR: {PW}"),
    ("scram-sha-256", [sasl_initial(b"SCRAM-SHA-1", b"n,,n=,r=abc")],
     "ERROR: client selected an invalid SASL authentication mechanism"),
    ("scram-sha-256", [sasl_initial(b"SCRAM-SHA-256", b"garbage")], f"ERROR: {SASL}"),
    ("scram-sha-256", [password_msg(b"\xff\xff")], f"ERROR: {SASL}"),
    ("scram-sha-256", [sasl_initial(b"SCRAM-SHA-256", b"n,,n=,r=abc"), password_msg(b"c=biws,r=x,p=AAAA")],
     f"ERROR: {SASL}"),
])
def test_malformed_or_empty_answers_close_only_that_client(pooler_factory, auth_type, answers, expected):
    pooler = pooler_factory.start({"auth_type": auth_type}, userlist={"md5user": "md5pass"})
    with psycopg.connect(pooler.dsn("testdb", "md5user", "md5pass")) as survivor:
        assert raw_login(pooler.host, pooler.port, "md5user", "testdb", answers) == expected
        assert survivor.execute("select 1").fetchone() == (1,)


def test_client_login_timeout(pooler_factory):
    pooler = pooler_factory.start({"auth_type": "plain", "client_login_timeout": 1})
    assert raw_login(pooler.host, pooler.port, "md5user", "testdb", []) == "auth request 3"
    # the pooler asked for a password and nobody answers: it gives up
    import socket
    import struct
    with socket.create_connection((pooler.host, pooler.port), timeout=10) as sock:
        params = b"user\0md5user\0database\0testdb\0\0"
        sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert b"client_login_timeout" in data


def test_empty_stored_password_never_authenticates(pooler_factory):
    pooler = pooler_factory.start({"auth_type": "scram-sha-256"}, userlist={"md5user": ""})
    nonce = base64.b64encode(b"0123456789ab").decode()
    answers = [sasl_initial(b"SCRAM-SHA-256", f"n,,n=,r={nonce}".encode())]
    # the exchange runs (no hint that the secret is empty) but cannot succeed
    assert raw_login(pooler.host, pooler.port, "md5user", "testdb", answers) == "auth request 11"
    assert login_result(pooler.dsn("testdb", "md5user", "anything")) == SASL


def test_hba_reload_keeps_old_rules_when_broken(pooler_factory):
    pooler = pooler_factory.start(hba="host all all 127.0.0.1/32 md5\n")
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
    hba = pooler.workdir / "hba.conf"
    hba.write_text("host all all 127.0.0.1/32 reject\nthis is not a rule\n")
    pooler.admin("RELOAD")
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
    hba.write_text("host all md5user 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 md5\n")
    pooler.admin("RELOAD")
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == "login rejected"
    assert login_result(pooler.dsn("testdb", "scramuser", "scrampass")) == "OK scramuser"
