"""Admin console: every SHOW's 1.25 columns and wire types, real values, access rules, error texts, control
commands (PAUSE/RESUME/SUSPEND/KILL/...), RELOAD with a broken file, signals, and the extended protocol."""

import asyncio
import contextlib
import re
import signal
import subprocess
import threading

import psycopg
import psycopg2
import pytest
from pgutil import ADMIN_PASSWORD, ADMIN_USER, STATS_USER, find_pg_bindir, wait_until

T, I4, I8, N, B = 25, 23, 20, 1700, 17

SOCKET = [("type", T), ("user", T), ("database", T), ("replication", T), ("state", T), ("addr", T), ("port", I4),
          ("local_addr", T), ("local_port", I4), ("connect_time", T), ("request_time", T), ("wait", I4),
          ("wait_us", I4), ("close_needed", I4), ("ptr", T), ("link", T), ("remote_pid", I4), ("tls", T),
          ("application_name", T), ("prepared_statements", I4), ("id", I8)]
SOCKET_EXTRA = [(c, I4) for c in "recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail send_avail".split()]
_STAT = "server_assignment_count xact_count query_count".split()
STATS_NAMES = ("database total_server_assignment_count total_xact_count total_query_count total_received total_sent "
               "total_xact_time total_query_time total_wait_time total_client_parse_count total_server_parse_count "
               "total_bind_count total_client_login_count avg_server_assignment_count avg_xact_count "
               "avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time "
               "avg_client_parse_count avg_server_parse_count avg_bind_count avg_client_login_count").split()
TOTALS_NAMES = ("database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time "
                "query_time wait_time client_parse_count server_parse_count bind_count client_login_count").split()
AVERAGES_NAMES = TOTALS_NAMES[:9] + ["avg_client_parse_count", "avg_server_parse_count", "avg_bind_count",
                                     "avg_client_login_count"]

# The reference table (pgbouncer-features.md §2.1, PgBouncer 1.25): names in order, wire type OIDs.
EXPECTED = {
    "STATS": [(STATS_NAMES[0], T)] + [(c, N) for c in STATS_NAMES[1:]],
    "STATS_TOTALS": [(TOTALS_NAMES[0], T)] + [(c, N) for c in TOTALS_NAMES[1:]],
    "STATS_AVERAGES": [(AVERAGES_NAMES[0], T)] + [(c, N) for c in AVERAGES_NAMES[1:]],
    "TOTALS": [("name", T), ("value", N)],
    "SERVERS": SOCKET,
    "CLIENTS": SOCKET,
    "SOCKETS": SOCKET + SOCKET_EXTRA,
    "ACTIVE_SOCKETS": SOCKET + SOCKET_EXTRA,
    "POOLS": [("database", T), ("user", T)] + [(c, I4) for c in (
        "cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel "
        "sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us").split()]
    + [("pool_mode", T), ("load_balance_hosts", T)],
    "PEER_POOLS": [(c, I4) for c in "peer_id cl_active_cancel_req cl_waiting_cancel_req sv_active_cancel "
                   "sv_login".split()],
    "LISTS": [("list", T), ("items", I4)],
    "USERS": [("name", T), ("pool_size", T), ("reserve_pool_size", T), ("pool_mode", T),
              ("max_user_connections", I4), ("current_connections", I4), ("max_user_client_connections", I4),
              ("current_client_connections", I4)],
    "DATABASES": [("name", T), ("host", T), ("port", I4), ("database", T), ("force_user", T), ("pool_size", I4),
                  ("min_pool_size", I4), ("reserve_pool_size", I4), ("server_lifetime", I4), ("pool_mode", T),
                  ("load_balance_hosts", T), ("max_connections", I4), ("current_connections", I4),
                  ("max_client_connections", I4), ("current_client_connections", I4), ("paused", I4),
                  ("disabled", I4)],
    "PEERS": [("peer_id", I4), ("host", T), ("port", I4), ("pool_size", I4)],
    "FDS": [(c, None) for c in "fd task user database addr port cancel link client_encoding std_strings "
            "datestyle timezone password scram_client_key scram_server_key".split()],
    "CONFIG": [("key", T), ("value", T), ("default", T), ("changeable", T)],
    "MEM": [("name", T), ("size", I4), ("used", I4), ("free", I4), ("memtotal", I4)],
    "DNS_HOSTS": [("hostname", T), ("ttl", I8), ("addrs", T)],
    "DNS_ZONES": [("zonename", T), ("serial", I8), ("count", I4)],
    "VERSION": [("version", T)],
    "STATE": [("key", T), ("value", T)],
}
TOTALS_ROWS = ("server_assignment_count xact_count query_count client_bytes server_bytes xact_time query_time "
               "wait_time ps_client_parse_count ps_server_parse_count ps_bind_count client_login_count").split()
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+$")


def connect_console(p, user=ADMIN_USER, unix=True):
    conn = psycopg2.connect(p.dsn("pgbouncer", user, unix=unix))
    conn.autocommit = True
    return conn


def console(p, user=ADMIN_USER, unix=True):
    """A console connection for `with` (psycopg2's own `with` would open a transaction the console refuses)."""
    return contextlib.closing(connect_console(p, user, unix))


def run(conn, sql):
    """(tag, columns with type oids, rows) of one command."""
    with conn.cursor() as cur:
        cur.execute(sql)
        desc = [(d.name, d.type_code) for d in cur.description] if cur.description else []
        return cur.statusmessage, desc, (cur.fetchall() if cur.description else None)


def error_of(conn, sql):
    with conn.cursor() as cur, pytest.raises(psycopg2.Error) as ei:
        cur.execute(sql)
    return ei.value.pgcode, ei.value.pgerror.split("\n")[0].split(":", 1)[1].strip()


@pytest.fixture
def py(pooler_factory, pg):
    return pooler_factory.start(ini_settings={"ignore_startup_parameters": "extra_float_digits",
                                              "stats_period": 1})


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_show_columns_and_types_match_the_reference(py, command):
    with py.connect() as c:          # one client and one server, so socket lists are not empty
        c.execute("select 1")
        # over TCP: on the unix socket the pooler's own OS user gets SHOW FDS with the descriptors attached
        with console(py, unix=False) as adm:
            tag, desc, rows = run(adm, f"SHOW {command}")
    want = EXPECTED[command]
    assert [d[0] for d in desc] == [w[0] for w in want]
    assert [d[1] for d in desc] == [w[1] if w[1] is not None else d[1] for w, d in zip(want, desc, strict=True)]
    assert tag == "SHOW"
    if command in ("STATS", "STATS_TOTALS", "STATS_AVERAGES", "DATABASES", "POOLS"):
        assert "pgbouncer" in [r[0] for r in rows], "the admin database has its own row"
    if command == "TOTALS":
        assert [r[0] for r in rows] == [f"total_{n}" for n in TOTALS_ROWS] + [f"avg_{n}" for n in TOTALS_ROWS]


@pytest.mark.parametrize(("sql", "column", "value"), [
    ("SHOW client_encoding", "client_encoding", "UTF-8"),
    ("show timezone", "timezone", "GMT"),
    ("SHOW datestyle", "datestyle", "ISO"),
    ("SHOW standard_conforming_strings", "standard_conforming_strings", "on"),
    ("SHOW default_transaction_isolation", "default_transaction_isolation", "read committed"),
    ("SELECT version", "version", None),
    ('SHOW "version";', "version", None),
    ("  sHoW   VeRsIoN  ;  ", "version", None),
])
def test_fake_show_and_select_alias(py, sql, column, value):
    with console(py) as adm:
        tag, desc, rows = run(adm, sql)
    assert desc == [(column, T)]
    assert rows[0][0] == (value or "PgBouncer 1.25.2 (pgbouncer-py 0.1.0)")


@pytest.mark.parametrize("binary", ["py", "c"])
@pytest.mark.parametrize(("sql", "message"), [
    ("SHOW", "invalid command 'SHOW', use SHOW HELP;"),
    ("SELECT 1", "invalid command 'SELECT 1', use SHOW HELP;"),
    ("SHOW nothing", "invalid command 'SHOW nothing', use SHOW HELP;"),
    ("SHOW STATS; SHOW POOLS", "invalid command 'SHOW STATS; SHOW POOLS', use SHOW HELP;"),
    ("RESUME", "pooler is not paused/suspended"),
    ("RESUME testdb", "database testdb is not paused"),
    ("PAUSE nosuch", "no such database: nosuch"),
    ("PAUSE pgbouncer", "cannot pause admin db: pgbouncer"),
    ("DISABLE", "a database is required"),
    ("ENABLE", "a database is required"),
    ("DISABLE nosuch", "no such database: nosuch"),
    ("RECONNECT nosuch", "no such database: nosuch"),
    ("KILL nosuch", "no such database: nosuch"),
    ("KILL pgbouncer", "cannot kill admin db: pgbouncer"),
    ("SET no_such_key = 1", "SET failed"),
    ("SET default_pool_size = abc", "SET failed"),
])
def test_error_texts_like_pgbouncer_and_session_goes_on(pooler_factory, binary, sql, message):
    p = pooler_factory.start(binary=binary)
    with console(p) as adm:
        assert error_of(adm, sql) == ("08P01", message)
        assert run(adm, "SHOW VERSION")[2][0][0].startswith("PgBouncer")   # the session goes on
    assert re.search(rf"ERROR {re.escape(message)}\n", p.log())
    assert "pooler error: " + message in p.log()


@pytest.mark.parametrize(("sql", "message"), [
    ("KILL_CLIENT abc", "invalid client pointer supplied"),
    ("KILL_CLIENT 999999", "client not found"),
    ("RESUME nosuch", "no such database: nosuch"),
    ("WAIT_CLOSE nosuch", "no such database: nosuch"),
])
def test_error_texts_of_newer_commands(py, sql, message):
    with console(py) as adm:
        assert error_of(adm, sql) == ("08P01", message)


@pytest.mark.parametrize("binary", ["py", "c"])
@pytest.mark.parametrize(("sql", "tag", "notice"), [
    ("SET client_encoding = 'latin1'", "SET", "SET ignored"),
    ("SET pool_mode = 'transaction'", "SET pool_mode=transaction", None),
    ("SET default_pool_size TO 7", "SET default_pool_size=7", None),
    ("RECONNECT", "RECONNECT", None),
    ("RECONNECT testdb", "RECONNECT", None),
    ("WAIT_CLOSE", "WAIT_CLOSE", None),
    ("RELOAD", "RELOAD", None),
])
def test_command_tags(pooler_factory, binary, sql, tag, notice):
    p = pooler_factory.start(binary=binary)
    with console(p) as adm:
        assert run(adm, sql)[0] == tag
        assert (notice in adm.notices[-1]) if notice else not adm.notices


def test_set_changes_show_config(py):
    with console(py) as adm:
        run(adm, "SET default_pool_size = 7")
        rows = dict((r[0], r[1]) for r in run(adm, "SHOW CONFIG")[2])
    assert rows["default_pool_size"] == "7"


@pytest.mark.parametrize(("user", "unix", "show_ok", "admin_ok"), [
    (ADMIN_USER, True, True, True),          # own OS uid over the unix socket, no password
    (ADMIN_USER, False, True, True),         # admin_users with its password
    (STATS_USER, False, True, False),        # stats_users: SHOW only
])
def test_access_levels(py, user, unix, show_ok, admin_ok):
    with console(py, user, unix) as adm:
        assert run(adm, "SHOW POOLS")[0] == "SHOW"
        if admin_ok:
            assert run(adm, "RECONNECT")[0] == "RECONNECT"
        else:
            assert error_of(adm, "RECONNECT") == ("08P01", "admin access needed")
            assert error_of(adm, "SHOW FDS") == ("08P01", "admin access needed")
            assert run(adm, "SHOW STATS")[0] == "SHOW"


def test_other_users_are_not_allowed(py):
    with pytest.raises(psycopg2.OperationalError, match="not allowed"):
        console(py, "md5user", unix=False)


def test_auth_type_any_admits_everyone_as_admin(pooler_factory):
    p = pooler_factory.start(ini_settings={"auth_type": "any"})
    with console(p, "whoever", unix=False) as adm:
        assert run(adm, "RECONNECT")[0] == "RECONNECT"


def test_values_are_real(py):
    with py.connect() as c:
        for _ in range(5):
            c.execute("select 1").fetchall()
        c.commit()
        with console(py) as adm:
            totals = {r[0]: r for r in run(adm, "SHOW STATS_TOTALS")[2]}
            assert totals["testdb"][2] >= 1 and totals["testdb"][3] >= 5       # xact_count, query_count
            assert totals["testdb"][4] > 0 and totals["testdb"][5] > 0         # bytes in and out
            assert totals["testdb"][12] >= 1                                   # client_login_count
            pools = {(r[0], r[1]): r for r in run(adm, "SHOW POOLS")[2]}
            assert pools[("testdb", "md5user")][2] == 1 and pools[("testdb", "md5user")][6] == 1
            assert pools[("pgbouncer", "pgbouncer")][15] == "statement"
            _, desc, clients = run(adm, "SHOW CLIENTS")
            names = [d[0] for d in desc]
            mine = [dict(zip(names, r, strict=True)) for r in clients if r[2] == "testdb"]
            assert len(mine) == 1 and mine[0]["state"] == "active" and mine[0]["user"] == "md5user"
            assert TIME_RE.match(mine[0]["connect_time"]) and re.match(r"^0x[0-9a-f]+$", mine[0]["ptr"])
            assert mine[0]["link"].startswith("0x") and mine[0]["id"] > 0
            servers = run(adm, "SHOW SERVERS")[2]
            assert [r[14] for r in servers if r[2] == "testdb"] == [mine[0]["link"]]
            assert servers[0][16] > 0                                          # remote_pid = backend pid
            dbs = {r[0]: r for r in run(adm, "SHOW DATABASES")[2]}
            assert dbs["pgbouncer"][1] is None and dbs["pgbouncer"][4] == "pgbouncer"
            assert dbs["testdb"][12] == 1 and dbs["testdb"][14] == 1           # current (client) connections
            lists = dict(run(adm, "SHOW LISTS")[2])
            assert lists["used_servers"] == 1 and lists["databases"] == 5
            users = {r[0]: r for r in run(adm, "SHOW USERS")[2]}
            assert users["md5user"][5] == 1 and users["md5user"][7] == 1
            assert dict(run(adm, "SHOW STATE")[2]) == {"active": "yes", "paused": "no", "suspended": "no"}
    # averages per stats_period (1 s here) and the periodic stats line
    py.wait_for_log(r"LOG stats: \d+ xacts/s, \d+ queries/s, \d+ client parses/s, \d+ server parses/s, "
                    r"\d+ binds/s, \d+ client logins/s, in \d+ B/s, out \d+ B/s, xact \d+ us, query \d+ us, "
                    r"wait \d+ us")


def test_show_users_padding(pooler_factory):
    p = pooler_factory.start(users={"md5user": "pool_size=5 pool_mode=transaction"})
    with console(p) as adm:
        users = {r[0]: r for r in run(adm, "SHOW USERS")[2]}
    assert users["md5user"][1:4] == ("        5", "", "transaction")
    assert users["scramuser"][1:4] == ("", "", None)


def test_show_help_is_a_notice(py):
    with console(py) as adm:
        tag, desc, rows = run(adm, "SHOW HELP")
        assert tag == "SHOW" and rows is None
        assert "Console usage" in adm.notices[-1] and "KILL_CLIENT" in adm.notices[-1]


def test_kill_client_by_id(py):
    victim = py.connect()
    victim.execute("select 1")
    with console(py) as adm:
        _, desc, rows = run(adm, "SHOW CLIENTS")
        cid = [r[-1] for r in rows if r[2] == "testdb"][0]
        assert run(adm, f"KILL_CLIENT {cid}")[0] == "KILL_CLIENT"
    with pytest.raises(Exception, match="admin forced disconnect|server closed|terminat"):
        victim.execute("select 1")
    py.wait_for_log("closing because: admin forced disconnect")


def test_disable_enable(py):
    with console(py) as adm:
        run(adm, "DISABLE testdb")
        assert {r[0]: r[16] for r in run(adm, "SHOW DATABASES")[2]}["testdb"] == 1
        with pytest.raises(Exception, match='database "testdb" is disabled'):
            py.connect()
        run(adm, "ENABLE testdb")
    with py.connect() as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_kill_db_drops_connections_and_pauses_until_resume(py):
    victim = py.connect()
    victim.execute("select 1")
    with console(py) as adm:
        assert run(adm, "KILL testdb")[0] == "KILL"
        with pytest.raises(psycopg.Error, match="database removed|server closed|terminat"):
            victim.execute("select 1")
        assert {r[0]: r[15] for r in run(adm, "SHOW DATABASES")[2]}["testdb"] == 1      # paused
        assert run(adm, "RESUME testdb")[0] == "RESUME"
    with py.connect() as c:
        assert c.execute("select 2").fetchone() == (2,)


def test_reconnect_and_wait_close(py):
    with py.connect(autocommit=True) as c:
        c.execute("select 1")
        with console(py) as adm:
            run(adm, "RECONNECT testdb")
            assert [r[13] for r in run(adm, "SHOW SERVERS")[2]] == [1]     # close_needed on the linked server
            done = []
            t = threading.Thread(target=lambda: done.append(run(connect_console(py), "WAIT_CLOSE testdb")[0]))
            t.start()
            t.join(0.5)
            assert not done                                              # session mode: the server is in use
    t.join(10)
    assert done == ["WAIT_CLOSE"]


def test_suspend_and_resume(py):
    with py.connect(autocommit=True) as c:
        c.execute("select 1")
        adm = connect_console(py)
        assert run(adm, "SUSPEND")[0] == "SUSPEND"
        assert dict(run(adm, "SHOW STATE")[2])["suspended"] == "yes"
        assert error_of(adm, "PAUSE") == ("08P01", "already suspended/paused")
        result = []
        t = threading.Thread(target=lambda: result.append(c.execute("select 42").fetchone()))
        t.start()
        t.join(0.5)
        assert not result                                                # not read while suspended
        assert run(adm, "RESUME")[0] == "RESUME"
        t.join(10)
        assert result == [(42,)]
        adm.close()


def test_suspend_ends_when_the_admin_disappears(py):
    adm = connect_console(py)
    run(adm, "SUSPEND")
    adm.close()
    py.wait_for_log("admin disappeared when suspended, doing RESUME")
    with console(py) as adm2:
        assert dict(run(adm2, "SHOW STATE")[2])["suspended"] == "no"


def test_pause_waits_for_release_and_clients_wait(pooler_factory):
    p = pooler_factory.start(ini_settings={"pool_mode": "session"})
    c = p.connect(autocommit=True)
    c.execute("select 1")
    answered = []
    t = threading.Thread(target=lambda: answered.append(run(connect_console(p), "PAUSE")[0]))
    t.start()
    t.join(0.7)
    assert not answered                      # a session holds its server: PAUSE waits
    c.close()
    t.join(10)
    assert answered == ["PAUSE"]
    with console(p) as adm:
        assert dict(run(adm, "SHOW STATE")[2])["paused"] == "yes"
        assert sum(r[9] for r in run(adm, "SHOW POOLS")[2]) == 0           # servers closed after release
        got = []
        t2 = threading.Thread(target=lambda: got.append(p.connect().execute("select 7").fetchone()))
        t2.start()
        wait_until(lambda: any(r[3] for r in run(adm, "SHOW POOLS")[2]), message="a waiting client")
        assert run(adm, "RESUME")[0] == "RESUME"
        t2.join(15)
        assert got == [(7,)]


def test_pause_resume_under_pgbench_load_loses_nothing(pooler_factory, pg):
    pg.init_pgbench()
    p = pooler_factory.start(ini_settings={"pool_mode": "transaction", "default_pool_size": 4})
    cmd = [str(find_pg_bindir() / "pgbench"), "-n", "-c", "8", "-T", "8", "-S", "-h", p.host, "-p", str(p.port),
           "-U", "md5user", "benchdb"]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={"PGPASSWORD": "md5pass", "PATH": "/usr/bin:/bin"})
    with console(p) as adm:
        wait_until(lambda: dict(run(adm, "SHOW STATS_TOTALS") and
                                {r[0]: r[2] for r in run(adm, "SHOW STATS_TOTALS")[2]}).get("benchdb", 0) > 50,
                   timeout=20, message="pgbench traffic")
        for _ in range(3):
            assert run(adm, "PAUSE")[0] == "PAUSE"
            pools = [r for r in run(adm, "SHOW POOLS")[2] if r[0] == "benchdb"]
            assert pools and pools[0][6] == 0                                  # no active server while paused
            assert run(adm, "RESUME")[0] == "RESUME"
            run(adm, "PAUSE benchdb")
            run(adm, "RESUME benchdb")
    out, _ = bench.communicate(timeout=60)
    assert bench.returncode == 0, out
    assert "number of failed transactions: 0" in out or "failed" not in out, out


def test_signals_pause_resume_reload(py):
    py.signal(signal.SIGUSR1)
    with console(py) as adm:
        wait_until(lambda: dict(run(adm, "SHOW STATE")[2])["paused"] == "yes", message="SIGUSR1 pause")
        py.signal(signal.SIGUSR2)
        wait_until(lambda: dict(run(adm, "SHOW STATE")[2])["active"] == "yes", message="SIGUSR2 resume")
    mark = py.log_mark()
    py.reload()
    py.wait_for_log("got SIGHUP, re-reading config", since=mark)


def test_reload_with_a_broken_file_keeps_serving(py):
    good = py.ini_path.read_text()
    with console(py) as adm:
        py.ini_path.write_text(good.replace("[pgbouncer]", "[pgbouncer]\nno_such_setting = 1"))
        assert error_of(adm, "RELOAD") == ("F0000", "RELOAD failed, see logs for additional details")
        assert "RELOAD command issued" in py.log()
        py.ini_path.write_text(good.replace("[pgbouncer]", "[pgbouncer]\ndefault_pool_size = 9"))
        assert run(adm, "RELOAD")[0] == "RELOAD"
        assert dict((r[0], r[1]) for r in run(adm, "SHOW CONFIG")[2])["default_pool_size"] == "9"
    with py.connect() as c:
        assert c.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize(("sql", "exits_at_once"), [
    ("SHUTDOWN", True),
    ("SHUTDOWN WAIT_FOR_CLIENTS", False),
    ("SHUTDOWN WAIT_FOR_SERVERS", False),
])
def test_shutdown_variants(py, sql, exits_at_once):
    c = py.connect(autocommit=True)
    c.execute("select 1")
    adm = connect_console(py)
    if exits_at_once:
        with pytest.raises(psycopg2.Error):
            run(adm, sql)
    else:
        assert run(adm, sql)[0] == "SHUTDOWN"
        assert py.is_running()
        if sql.endswith("WAIT_FOR_SERVERS"):
            c.execute("select 2")          # the session keeps its server until it leaves
        c.close()
    py.wait(15)
    assert py.returncode == 0


def test_extended_protocol_psycopg3(py):
    with psycopg.connect(py.dsn("pgbouncer", ADMIN_USER, ADMIN_PASSWORD), autocommit=True) as conn:
        cur = conn.execute("SHOW STATS")
        assert [d.name for d in cur.description] == STATS_NAMES
        rows = cur.fetchall()
        assert "pgbouncer" in [r[0] for r in rows]
        assert conn.execute("SHOW VERSION").fetchone()[0].startswith("PgBouncer 1.25.2")
        assert conn.execute("RECONNECT").statusmessage == "RECONNECT"
        with pytest.raises(psycopg.Error, match="invalid command"):
            conn.execute("SHOW nothing")
        assert conn.execute("SHOW LISTS").fetchall()[0][0] == "databases"     # still usable after an error
        with conn.cursor(binary=True) as bcur:
            bcur.execute("SHOW STATS_TOTALS")
            assert all(isinstance(v, (int, type(None))) or hasattr(v, "as_integer_ratio") or isinstance(v, str)
                       for r in bcur.fetchall() for v in r)


def test_extended_protocol_asyncpg(py):
    import asyncpg

    async def go():
        conn = await asyncpg.connect(host=py.host, port=py.port, user=ADMIN_USER, password=ADMIN_PASSWORD,
                                     database="pgbouncer", timeout=10)
        try:
            rows = await conn.fetch("SHOW POOLS")
            stats = await conn.fetch("SHOW STATS_TOTALS")
            return rows, stats
        finally:
            await conn.close()

    rows, stats = asyncio.run(go())
    assert ("pgbouncer", "pgbouncer") in [(r["database"], r["user"]) for r in rows]
    assert all(int(r["xact_count"]) >= 0 for r in stats)
