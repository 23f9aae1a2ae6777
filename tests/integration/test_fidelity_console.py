"""Console and process state against the real PgBouncer 1.24.1 (issue 17, items 8-10 and the console side of
14-15): one counter of socket ids, SHUTDOWN WAIT_FOR_*, the console client's user, SHOW FDS's SCRAM keys, and
what the console does with a NUL or a message type it does not take."""

from __future__ import annotations

import contextlib
import struct
import threading

import psycopg
import psycopg2
import psycopg2.extensions
import pytest
from pgutil import ADMIN_PASSWORD, ADMIN_USER, STATS_USER, wait_until
from regress import rawpg

from pgbouncer_py.auth.scram import parse_scram_secret, scram_keys_from_password

BOTH = pytest.mark.parametrize("binary", ["py", "c124"])


def ids_by_name(p, command: str) -> dict[str, int]:
    """application_name (or user for the console) -> id of SHOW CLIENTS / SERVERS rows."""
    return {r["application_name"] or r["user"]: r["id"] for r in p.admin_dicts(command, STATS_USER, unix=False)}


def attempt(fn):
    try:
        return fn()
    except Exception as e:  # the outcome is what the test compares
        return e


# --- item 8: one counter, creation order ---
@BOTH
def test_ids_number_clients_and_servers_in_creation_order(pooler_factory, binary):
    p = pooler_factory.start({"pool_mode": "transaction"}, binary=binary)
    a = p.connect(application_name="a", autocommit=True)
    a.execute("select 1")                              # its server is socket 2
    b = p.connect(application_name="b", autocommit=True)
    c = p.connect(application_name="c", autocommit=True)
    c.execute("begin")                                 # takes the idle server
    b.execute("begin")                                 # needs a new one: socket 5
    assert ids_by_name(p, "SHOW CLIENTS") == {"a": 1, "b": 3, "c": 4, STATS_USER: 6}
    servers = p.admin_dicts("SHOW SERVERS", STATS_USER, unix=False)      # console 7
    assert sorted(r["id"] for r in servers) == [2, 5]
    sockets = p.admin_dicts("SHOW SOCKETS", STATS_USER, unix=False)      # console 8
    assert sorted(r["id"] for r in sockets) == [1, 2, 3, 4, 5, 8]
    # a cancel request takes two: its own client socket and the connection that carries it to PostgreSQL
    timer = threading.Timer(0.3, a.cancel)
    timer.start()
    with pytest.raises(psycopg.errors.QueryCanceled):
        a.execute("select pg_sleep(10)")
    timer.join()
    d = p.connect(application_name="d", autocommit=True)
    assert ids_by_name(p, "SHOW CLIENTS")["d"] == 12      # a's query needed a third server: 11
    # KILL_CLIENT takes the same ids; a server's id is not a client
    assert "client not found" in str(attempt(lambda: p.admin("KILL_CLIENT 2")))
    p.admin("KILL_CLIENT 3")
    with pytest.raises(psycopg.Error):
        b.execute("select 1")
    assert d.execute("select 1").fetchone() == (1,)
    p.wait_for_log(r"closing because: admin forced disconnect")


# --- item 9: SHUTDOWN WAIT_FOR_SERVERS / WAIT_FOR_CLIENTS ---
@BOTH
def test_wait_for_servers_closes_a_client_that_needs_a_server(pooler_factory, binary):
    p = pooler_factory.start({"pool_mode": "transaction"}, binary=binary)
    idle = p.connect(autocommit=True)
    idle.execute("select 1")
    busy = p.connect(autocommit=True)
    busy.execute("begin")
    pid = busy.execute("select pg_backend_pid()").fetchone()[0]
    p.admin("SHUTDOWN WAIT_FOR_SERVERS")
    with pytest.raises(psycopg.Error, match="server shutting down"):
        idle.execute("select 2")
    p.wait_for_log(r"LOG C-\S+ testdb/md5user@\S+ closing because: server shutting down \(age=")
    p.wait_for_log(r"WARNING C-\S+ testdb/md5user@\S+ pooler error: server shutting down")
    # the transaction in progress keeps its server to the end, then the process leaves
    assert busy.execute("select pg_backend_pid()").fetchone() == (pid,)
    busy.execute("commit")
    p.wait(15)
    p.wait_for_log("LOG server connections dropped, exiting")


@BOTH
def test_wait_for_clients_keeps_the_unix_socket_for_the_console(pooler_factory, binary):
    p = pooler_factory.start({"pool_mode": "transaction"}, binary=binary)
    client = p.connect(autocommit=True)
    client.execute("select 1")
    p.admin("SHUTDOWN WAIT_FOR_CLIENTS")
    wait_until(lambda: isinstance(attempt(lambda: psycopg.connect(p.dsn()).close()), psycopg.OperationalError),
               message="the TCP listener to close")
    assert "refused" in str(attempt(lambda: psycopg.connect(p.dsn())))
    console = attempt(lambda: p.admin("SHOW STATE"))
    other = attempt(lambda: psycopg.connect(p.dsn(unix=True)))
    if binary == "py":
        # the unix socket stays open, for console logins only (the behaviour asked for; see below)
        assert ("active", "yes") in console
        assert "pooler is shutting down" in str(other)
    else:
        # PgBouncer 1.24.1 closes and unlinks its unix socket too: nobody reaches the console any more
        assert "No such file or directory" in str(console) and "No such file or directory" in str(other)
    assert client.execute("select 2").fetchone() == (2,)      # whoever was in is served
    client.close()
    p.wait(15)
    p.wait_for_log("LOG client connections dropped, exiting")


# --- item 10: the console client's user, SHOW FDS's SCRAM keys ---
@BOTH
def test_show_clients_shows_the_console_login_name(pooler_factory, binary):
    p = pooler_factory.start(binary=binary)
    rows = p.admin_dicts("SHOW CLIENTS", STATS_USER, unix=False)
    assert [(r["user"], r["database"]) for r in rows] == [(STATS_USER, "pgbouncer")]
    rows = p.admin_dicts("SHOW CLIENTS", ADMIN_USER, unix=True)
    assert [(r["user"], r["database"]) for r in rows] == [(ADMIN_USER, "pgbouncer")]


@BOTH
def test_show_fds_sends_scram_keys_as_bytea(pooler_factory, pg, binary):
    [(secret,)] = pg.query("select rolpassword from pg_authid where rolname = 'scramuser'")
    parsed = parse_scram_secret(secret)
    client_key, server_key = scram_keys_from_password("scrampass", parsed.salt, parsed.iterations)
    p = pooler_factory.start({"auth_type": "scram-sha-256"}, binary=binary,
                             userlist={"scramuser": secret, ADMIN_USER: ADMIN_PASSWORD})
    p.connect(user="scramuser", password="scrampass")          # SCRAM pass-through: the keys come from its proof
    conn = psycopg2.connect(p.dsn("pgbouncer", ADMIN_USER, unix=True))
    with contextlib.closing(conn):
        raw = psycopg2.extensions.new_type((17, 20), "RAW", lambda value, cur: value)
        psycopg2.extensions.register_type(raw, conn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW FDS")
            types = {d.name: d.type_code for d in cur.description}
            rows = [dict(zip(types, r, strict=True)) for r in cur.fetchall()]
    assert types["scram_client_key"] == types["scram_server_key"] == 17 and types["cancel"] == 20
    mine = [r for r in rows if r["task"] in ("client", "server")]
    assert {r["task"] for r in mine} == {"client", "server"}
    for r in mine:
        assert (r["user"], r["scram_client_key"], r["scram_server_key"]) == (
            "scramuser", "\\x" + client_key.hex(), "\\x" + server_key.hex())
    # a server's cancel key is its BackendKeyData (pid first) read as one big-endian number
    server = next(r for r in mine if r["task"] == "server")
    backend_pid = p.admin_dicts("SHOW SERVERS")[0]["remote_pid"]
    assert struct.pack(">q", int(server["cancel"]))[:4] == struct.pack(">I", backend_pid)


# --- items 14 and 15 on the console ---
def console_conn(p) -> rawpg.Conn:
    c = rawpg.Conn(p.host, p.port)
    c.login(ADMIN_USER, "pgbouncer", ADMIN_PASSWORD)
    return c


def answer(c: rawpg.Conn) -> list:
    """(type, message text or row) up to ReadyForQuery or EOF."""
    out = []
    while True:
        m = c.read_msg()
        if m is None:
            return out + [("EOF", None)]
        t, body = m
        if t == b"E":
            f = rawpg.error_fields(body)
            out.append(("E", f["S"], f["C"], f["M"]))
        elif t == b"D":
            out.append(("D", body[6:].decode()))
        else:
            out.append((t.decode(), None))
        if t == b"Z":
            return out


@BOTH
def test_console_query_stops_at_the_first_nul(pooler_factory, binary):
    p = pooler_factory.start(binary=binary)
    c = console_conn(p)
    c.send(rawpg.msg(b"Q", b"SHOW VERSION\0DROP everything\0"))
    got = answer(c)
    assert got[0] == ("T", None) and got[1][1].startswith("PgBouncer 1.2") and got[-1] == ("Z", None)
    c.send(rawpg.msg(b"Q", b"FOO\0BAR\0"))
    assert answer(c) == [("E", "ERROR", "08P01", "invalid command 'FOO', use SHOW HELP;"), ("Z", None)]
    c.send(rawpg.msg(b"Q", b"SET x = '\0'"))
    assert answer(c) == [("E", "ERROR", "08P01", "invalid command 'SET x = '', use SHOW HELP;"), ("Z", None)]
    c.send(rawpg.msg(b"Q", b"SHOW VERSION"))                     # no NUL at all
    assert answer(c) == [("E", "FATAL", "08P01", "incomplete query"), ("EOF", None)]
    p.wait_for_log(r"ERROR invalid command 'FOO', use SHOW HELP;")
    p.wait_for_log(r"closing because: incomplete query \(age=")


@BOTH
def test_console_refuses_unknown_message_types(pooler_factory, binary):
    p = pooler_factory.start(binary=binary)
    c = console_conn(p)
    c.send(rawpg.msg(b"d", b"copy data"))
    assert answer(c) == [("E", "ERROR", "08P01", "unsupported packet type for admin console: 100"), ("Z", None)]
    assert answer(c) == [("E", "FATAL", "08P01", "bad packet"), ("EOF", None)]
    p.wait_for_log(r"ERROR unsupported packet type for admin console: 100")
    p.wait_for_log(r"closing because: bad packet \(age=")
    c = console_conn(p)
    c.send(rawpg.msg(b"p", b"secret\0"))
    assert answer(c) == [("E", "FATAL", "08P01", "unknown pkt"), ("EOF", None)]
    p.wait_for_log(r"ERROR C-\S+ pgbouncer/pgbouncer@\S+ unknown pkt from client: 112/0x70")
    p.wait_for_log(r"closing because: unknown pkt \(age=")
