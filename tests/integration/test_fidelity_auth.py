"""Drop-in fidelity of authentication, client accounting and the console (issue 16): each scenario runs against
pgbouncer-py and the real PgBouncer 1.24.1 with the same assertions on what the client sees (message, SQLSTATE)
and on the log lines operators grep."""

from __future__ import annotations

import re

import pytest
from fidelity import BINARIES, CONFIG_ERROR, PW, SASL, log_lines, login, normalize
from pgutil import HarnessError, format_userlist

NOT_CONFIGURED = re.compile(r"^ERROR C-0x: \S+@127\.0\.0\.1:PORT cannot use the reserved \"pgbouncer\" database "
                            r"as an auth_dbname$")


def start(pooler_factory, binary, ini=None, **kw):
    return pooler_factory.start({"server_tls_sslmode": "disable", **(ini or {})}, binary=binary, **kw)


def has_line(pooler, regex: str, since: int = 0) -> bool:
    pattern = re.compile(regex)
    return any(pattern.search(line) for line in log_lines(pooler, since))


# --- 1. [databases] user= password= is that database's server login, never the auth_file secret ---
@pytest.mark.parametrize("binary", BINARIES)
def test_database_password_is_only_that_databases_server_login(pooler_factory, pg, binary):
    dbs = {"testdb": pg.server_connstr("testdb"),
           "fa": pg.server_connstr("testdb", user="md5user", password="md5pass"),
           "fb": pg.server_connstr("testdb", user="md5user"),                       # auth_file's secret
           "fc": pg.server_connstr("testdb", user="md5user", password="wrongpw")}   # the last one names it
    p = start(pooler_factory, binary, databases=dbs)
    # md5user's clients are checked against auth_file, whatever the entries say
    assert login(p, "testdb", "md5user", "md5pass") == "OK"
    assert login(p, "testdb", "md5user", "wrongpw") == f"{PW} [08P01]"
    # each entry logs md5user in to PostgreSQL with its own password (or auth_file's when it names none)
    assert login(p, "fb", "scramuser", "scrampass") == "OK"
    assert login(p, "fa", "scramuser", "scrampass") == "OK"
    assert login(p, "fc", "scramuser", "scrampass") == 'password authentication failed for user "md5user" [28P01]'
    # 10: PgBouncer's level, without a socket prefix
    assert 'WARNING server login failed: FATAL password authentication failed for user "md5user"' in log_lines(p)


@pytest.mark.parametrize("binary", BINARIES)
def test_scram_pass_through_beside_a_database_password_for_the_same_user(pooler_factory, pg, binary):
    [(secret,)] = pg.query("select rolpassword from pg_authid where rolname = 'scramuser'")
    dbs = {"testdb": pg.server_connstr("testdb"),
           "other": pg.server_connstr("otherdb", user="scramuser", password="not-the-password")}
    p = start(pooler_factory, binary, databases=dbs, userlist=format_userlist({"scramuser": secret}))
    for _ in range(2):      # the client's SCRAM keys log the server connection in, no plaintext anywhere
        assert login(p, "testdb", "scramuser", "scrampass") == "OK"
    assert login(p, "testdb", "scramuser", "wrong") == f"{SASL} [08P01]"


# --- 2. auth_query answering NULL: the user exists, no password matches ---
@pytest.mark.parametrize("binary", BINARIES)
def test_auth_query_null_password(pooler_factory, pg, binary):
    pg.psql("DROP ROLE IF EXISTS fid_expired; "
            "CREATE ROLE fid_expired LOGIN PASSWORD 'exppass' VALID UNTIL '2000-01-01'")
    # server logins over the unix socket, where PostgreSQL trusts everybody
    dbs = {name: f"host={pg.socket_dir} port={pg.port} dbname={name}" for name in ("postgres", "testdb")}
    ul = {"postgres": "postgrespass", "pgbouncer": "adminpass"}
    p = start(pooler_factory, binary, {"auth_user": "postgres", "auth_type": "trust"}, databases=dbs, userlist=ul)
    assert login(p, "testdb", "trustuser") == "OK"              # no password at all
    assert login(p, "testdb", "fid_expired") == "OK"            # rolvaliduntil passed
    assert login(p, "testdb", "nosuchrole") == "no such user [08P01]"
    assert has_line(p, r"^LOG C-0x: testdb/\(nouser\)@127\.0\.0\.1:PORT login failed: db=testdb$")
    p.stop()
    hba = "host all trustuser 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5\n"
    p = start(pooler_factory, binary, {"auth_user": "postgres"}, databases=dbs, userlist=ul, hba=hba)
    assert login(p, "testdb", "trustuser") == "OK"
    assert login(p, "testdb", "fid_expired", "exppass") == f"{PW} [08P01]"
    assert login(p, "testdb", "fid_expired", "") == f"{PW} [08P01]"


# --- 3. a password over the maximum is a wrong password ---
@pytest.mark.parametrize("binary", BINARIES)
def test_password_longer_than_the_maximum(pooler_factory, pg, binary):
    dbs = {"testdb": pg.server_connstr("testdb", user="md5user", password="md5pass")}
    p = start(pooler_factory, binary, {"auth_type": "plain"}, databases=dbs,
              userlist={"longpw": "p" * 900, "pgbouncer": "adminpass"})
    assert login(p, "testdb", "longpw", "p" * 900) == "OK"
    for n in (65530, 65531, 200_000, 1_000_000):
        assert login(p, "testdb", "longpw", "p" * n) == f"{PW} [08P01]", n
    assert login(p, "testdb", "longpw", "p" * 900) == "OK"


# --- 4. an unknown database is named only to an authenticated client ---
@pytest.mark.parametrize("binary", BINARIES)
def test_unknown_database_authenticates_first(pooler_factory, binary):
    p = start(pooler_factory, binary)
    mark = p.log_mark()
    assert login(p, "nosuchdb", "md5user", "md5pass") == "no such database: nosuchdb [08P01]"
    assert login(p, "nosuchdb", "md5user", "wrong") == f"{PW} [08P01]"
    assert login(p, "nosuchdb", "nouser", "wrong") == f"{PW} [08P01]"
    lines = log_lines(p, mark)
    p.admin("DISABLE otherdb")
    assert login(p, "otherdb", "md5user", "wrong") == f"{PW} [08P01]"
    assert login(p, "otherdb", "md5user", "md5pass") == 'database "otherdb" is disabled [08P01]'
    assert lines[:4] == [
        "LOG C-0x: (nodb)/md5user@127.0.0.1:PORT login attempt: db=nosuchdb user=md5user tls=no replication=no",
        "LOG C-0x: (nodb)/md5user@127.0.0.1:PORT login failed: db=nosuchdb user=md5user",
        "LOG C-0x: (nodb)/md5user@127.0.0.1:PORT closing because: no such database: nosuchdb (age=0s)",
        "WARNING C-0x: (nodb)/md5user@127.0.0.1:PORT pooler error: no such database: nosuchdb"]
    p.stop()
    p = start(pooler_factory, binary, {"auth_type": "trust"})
    assert login(p, "nosuchdb", "md5user") == "no such database: nosuchdb [08P01]"
    assert login(p, "nosuchdb", "nouser") == '"trust" authentication failed [08P01]'
    p.stop()
    p = start(pooler_factory, binary, {"auth_type": "scram-sha-256", "auth_user": "postgres"})
    assert login(p, "nosuchdb", "md5user", "wrong") == f"{SASL} [08P01]"
    assert login(p, "nosuchdb", "md5user", "md5pass") == "no such database: nosuchdb [08P01]"
    # a user missing from auth_file: an unknown database runs no auth_query, mock authentication fails
    assert login(p, "nosuchdb", "trustuser", "") == f"{SASL} [08P01]"
    assert login(p, "testdb", "trustuser", "") == f"{SASL} [08P01]"           # NULL secret from auth_query


# --- 5. the console and auth_dbname ---
@pytest.mark.parametrize("binary", BINARIES)
def test_console_login_of_a_user_missing_from_auth_file(pooler_factory, pg, binary):
    ul = {"postgres": "postgrespass", "pgbouncer": "adminpass"}
    p = start(pooler_factory, binary, {"auth_user": "postgres", "admin_users": "pgbouncer,md5user",
                                        "stats_users": "scramuser"}, userlist=ul)
    # no global auth_dbname: the console would look itself up
    mark = p.log_mark()
    assert login(p, "pgbouncer", "md5user", "md5pass") == f"{CONFIG_ERROR} [08P01]"
    assert login(p, "pgbouncer", "md5user", "wrong") == f"{CONFIG_ERROR} [08P01]"
    assert sum(bool(NOT_CONFIGURED.match(line)) for line in log_lines(p, mark)) == 2
    with pytest.raises(Exception, match="SET failed"):
        p.admin("SET auth_dbname = 'pgbouncer'")
    assert [r["value"] or "" for r in p.admin_dicts("SHOW CONFIG") if r["key"] == "auth_dbname"] == [""]
    assert 'ERROR cannot use the reserved "pgbouncer" database as an auth_dbname' in log_lines(p)
    p.admin("SET auth_dbname = 'postgres'")
    assert login(p, "pgbouncer", "md5user", "md5pass") == "OK"
    assert login(p, "pgbouncer", "md5user", "wrong") == f"{PW} [08P01]"
    assert login(p, "pgbouncer", "scramuser", "scrampass") == "OK"           # a stats user
    assert login(p, "pgbouncer", "nobody", "x") == "no such user [08P01]"
    assert login(p, "pgbouncer", "trustuser", "x") == "not allowed [08P01]"  # neither admin nor stats user
    assert login(p, "pgbouncer", "postgres", "wrong") == "not allowed [08P01]"


@pytest.mark.parametrize("binary", BINARIES)
def test_auth_dbname_pgbouncer_refused_at_load(pooler_factory, binary):
    with pytest.raises(HarnessError):
        start(pooler_factory, binary, {"auth_user": "postgres", "auth_dbname": "pgbouncer"}, timeout=10)
    p = pooler_factory.poolers[-1]
    lines = log_lines(p)
    assert lines[0] == 'ERROR cannot use the reserved "pgbouncer" database as an auth_dbname'
    assert re.fullmatch(r'ERROR invalid value "pgbouncer" for parameter auth_dbname in configuration \(.*:\d+\)',
                        lines[1])
    assert lines[2] == "FATAL cannot load config file"


# --- 6. what the client and the log are told when the auth database is wrong ---
@pytest.mark.parametrize("binary", BINARIES)
def test_auth_database_problems(pooler_factory, pg, binary):
    ul = {"postgres": "postgrespass", "pgbouncer": "adminpass"}
    p = start(pooler_factory, binary, {"auth_user": "postgres", "auth_dbname": "postgres"}, userlist=ul)
    p.admin("DISABLE postgres")
    assert login(p, "testdb", "md5user", "md5pass") == 'authentication database "postgres" is disabled [08P01]'
    p.stop()
    p = start(pooler_factory, binary, {"auth_user": "postgres", "auth_dbname": "missing"}, userlist=ul)
    assert login(p, "testdb", "md5user", "md5pass") == f"{CONFIG_ERROR} [08P01]"
    assert login(p, "pgbouncer", "md5user", "md5pass") == f"{CONFIG_ERROR} [08P01]"
    assert sum(bool(re.fullmatch(r'ERROR C-0x: \S+@127\.0\.0\.1:PORT authentication database "missing" is not '
                                 r'configured\.', line)) for line in log_lines(p)) == 2
    p.stop()
    p = start(pooler_factory, binary, {"auth_user": "postgres",
                                        "auth_query": "select usename, passwd from nosuchtable where usename=$1"},
              userlist=ul)
    assert login(p, "testdb", "md5user", "md5pass") == f"{CONFIG_ERROR} [08P01]"
    assert login(p, "testdb", "md5user", "md5pass") == f"{CONFIG_ERROR} [08P01]"
    lines = log_lines(p)
    assert lines.count('ERROR S: error in auth_query: ERROR: relation "nosuchtable" does not exist') == 2
    assert sum(line.endswith("closing because: error response from auth_query (age=0s)") for line in lines) == 2


# --- 7. auth_query users belong to the database they were looked up for ---
@pytest.mark.parametrize("binary", BINARIES)
def test_auth_query_user_is_not_known_elsewhere(pooler_factory, pg, binary):
    ul = {"postgres": "postgrespass", "pgbouncer": "adminpass"}
    dbs = {"testdb": pg.server_connstr("testdb", auth_user="postgres"), "otherdb": pg.server_connstr("otherdb"),
           "postgres": pg.server_connstr("postgres")}
    p = start(pooler_factory, binary, {"admin_users": "pgbouncer,md5user"}, databases=dbs, userlist=ul)
    before = [login(p, "otherdb", "md5user", "md5pass"), login(p, "pgbouncer", "md5user", "md5pass")]
    assert login(p, "testdb", "md5user", "md5pass") == "OK"
    after = [login(p, "otherdb", "md5user", "md5pass"), login(p, "pgbouncer", "md5user", "md5pass")]
    assert before == after == [f"{PW} [08P01]", f"{PW} [08P01]"]
    p.stop()
    # a global auth_user without auth_dbname: the console refuses the user even after a database login
    p = start(pooler_factory, binary, {"auth_user": "postgres", "admin_users": "pgbouncer,md5user"}, userlist=ul)
    assert login(p, "testdb", "md5user", "md5pass") == "OK"
    assert login(p, "pgbouncer", "md5user", "md5pass") == f"{CONFIG_ERROR} [08P01]"


# --- 8. console logins are clients: counted, limited (admin_users exempt), shown ---
@pytest.mark.parametrize("binary", BINARIES)
def test_console_logins_are_counted_and_limited(pooler_factory, binary):
    p = start(pooler_factory, binary, {"max_db_client_connections": 1, "max_user_client_connections": 1,
                                       "max_db_connections": 7})
    held = []
    try:
        ok, sock = login(p, "pgbouncer", "pgb_stats", "statspass", keep=True)
        held.append(sock)
        assert login(p, "pgbouncer", "pgb_stats", "statspass") == \
            "client connections exceeded (max_db_client_connections) [08P01]"
        for _ in range(2):                      # admin_users: over the limits, and counted
            ok, sock = login(p, "pgbouncer", "pgbouncer", "adminpass", keep=True)
            held.append(sock)
        assert login(p, "testdb", "pgb_stats", "statspass") == \
            "client connections exceeded (max_user_client_connections) [08P01]"
        # the unix-socket login of the pooler's own OS user (the harness's admin()) counts for the database only
        [row] = [r for r in p.admin_dicts("SHOW DATABASES") if r["name"] == "pgbouncer"]
        assert (row["current_client_connections"], row["max_client_connections"], row["max_connections"],
                row["server_lifetime"], row["pool_size"]) == (4, 1, 7, 3600, 2)
        users = {r["name"]: r["current_client_connections"] for r in p.admin_dicts("SHOW USERS")}
        assert (users["pgb_stats"], users["pgbouncer"]) == (1, 2)
        if binary == "py":      # client_login_count is a 1.25 column (SHOW STATS* of 1.24 lack it)
            [tot] = [r for r in p.admin_dicts("SHOW STATS_TOTALS") if r["database"] == "pgbouncer"]
            assert tot["client_login_count"] >= 5
    finally:
        for sock in held:
            sock.close()


# --- 10. log lines that alerting and fail2ban rules grep ---
@pytest.mark.parametrize("binary", BINARIES)
def test_failed_login_log_lines(pooler_factory, pg, binary):
    dbs = {"testdb": pg.server_connstr("testdb"), "*": f"host={pg.host} port={pg.port}"}
    p = start(pooler_factory, binary, {"auth_type": "scram-sha-256"}, databases=dbs)
    mark = p.log_mark()
    assert login(p, "testdb", "scramuser", "wrong") == f"{SASL} [08P01]"
    assert login(p, "testdb", "nouser", "wrong") == f"{SASL} [08P01]"
    assert login(p, "benchdb", "scramuser", "scrampass") == "OK"
    assert login(p, "nonexist", "scramuser", "scrampass") == 'database "nonexist" does not exist [3D000]'
    lines = log_lines(p, mark)
    for expected in (
            "ERROR C-0x: testdb/scramuser@127.0.0.1:PORT password authentication failed",
            "LOG C-0x: testdb/scramuser@127.0.0.1:PORT closing because: SASL authentication failed (age=0s)",
            "WARNING C-0x: testdb/scramuser@127.0.0.1:PORT pooler error: SASL authentication failed",
            "LOG C-0x: (nodb)/(nouser)@127.0.0.1:PORT registered new auto-database: benchdb",
            'WARNING server login failed: FATAL database "nonexist" does not exist'):
        assert expected in lines, expected
    assert any(re.fullmatch(r"ERROR C-0x: \S+/nouser@127\.0\.0\.1:PORT password authentication failed", line)
               for line in lines)
    p.stop()
    # md5 and plain failures: "closing because" and the pooler error only, in 1.18 and 1.24 alike
    p = start(pooler_factory, binary)
    mark = p.log_mark()
    assert login(p, "testdb", "md5user", "wrong") == f"{PW} [08P01]"
    assert log_lines(p, mark) == [
        "LOG C-0x: testdb/md5user@127.0.0.1:PORT login attempt: db=testdb user=md5user tls=no replication=no",
        "LOG C-0x: testdb/md5user@127.0.0.1:PORT closing because: password authentication failed (age=0s)",
        "WARNING C-0x: testdb/md5user@127.0.0.1:PORT pooler error: password authentication failed"]


# --- 11. a config error at start lands in the logfile as well as on stderr, also with -d ---
@pytest.mark.parametrize("binary", BINARIES)
@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
@pytest.mark.parametrize("case", ["unknown key", "bad value", "bad section"])
def test_config_error_at_start_goes_to_the_logfile(pooler_factory, binary, daemon, case):
    # each problem comes after the logfile setting (the harness writes logfile early in [pgbouncer])
    ini = {"unknown key": {"no_such_key": "1"}, "bad value": {"pool_mode": "nonsense"},
           "bad section": {"stats_users": "pgb_stats\n[nosuch]\nfoo = bar"}}[case]
    p = start(pooler_factory, binary, ini, extra_args=["-d"] if daemon else [], wait=False)
    assert p.proc.wait(20) == 1
    skip = {"ERROR fill_defaults fail"}      # PgBouncer's first line for a bad section, not reproduced
    logged = [line for line in normalize(p.log()) if line not in skip]
    assert logged == [line for line in normalize(p.stderr()) if line not in skip]
    expected = {"unknown key": ["ERROR unknown parameter: pgbouncer/no_such_key",
                                r'ERROR invalid value "1" for parameter no_such_key in configuration \(.*:\d+\)'],
                "bad value": [r'ERROR invalid value "nonsense" for parameter pool_mode in configuration \(.*:\d+\)'],
                "bad section": [r'ERROR invalid section "nosuch" in configuration \(.*:\d+\)']}[case]
    assert len(logged) == len(expected) + 1, logged
    for regex, line in zip(expected, logged, strict=False):
        assert re.fullmatch(regex, line), (regex, line)
    assert logged[-1] == "FATAL cannot load config file"
