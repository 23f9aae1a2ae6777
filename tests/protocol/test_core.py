"""Client, Server, pooling and the janitor at the protocol level: real message bytes into the Client protocol,
the bytes it writes back, the scripted PostgreSQL's view (tests/protocol/pgpeer.py), and the pool's state lists
afterwards. No socket, no PostgreSQL; the whole file runs in well under a second.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from types import SimpleNamespace

import pytest
from pgpeer import (
    CANCEL_CODE,
    CANCELED,
    GSS_CODE,
    SSL_CODE,
    WELCOME_PARAMS,
    PoolerHarness,
    Script,
    bind,
    describe_portal,
    errors,
    execute,
    md5_password,
    parse,
    pool_state,
    result,
    split_messages,
    startup,
    types,
)

from pgbouncer_py import varcache
from pgbouncer_py.auth.scram import ScramClient
from pgbouncer_py.config import load_config
from pgbouncer_py.net import tls
from pgbouncer_py.net.listen import Listener
from pgbouncer_py.objects import registry
from pgbouncer_py.proto import build
from pgbouncer_py.statements import NO_STATEMENTS

HOLD = "SELECT pg_sleep(10)"
SELECT1 = result("SELECT 1", rows=[["1"]])


@pytest.fixture
def make(tmp_path, monkeypatch):
    made = []

    def factory(**kw) -> PoolerHarness:
        h = PoolerHarness(tmp_path, monkeypatch, **kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


def welcome(key: bytes) -> bytes:
    """AuthenticationOk, the server's parameters (the first server login's, in its order), BackendKeyData with
    the pooler's own key, ReadyForQuery idle."""
    return (build.auth_request(0) + b"".join(build.parameter_status(k, v) for k, v in WELCOME_PARAMS.items())
            + build.msg(b"K", key) + build.ready_for_query(b"I"))


def key_of(out: bytes) -> bytes:
    keys = [body for t, body in split_messages(out) if t == b"K"]
    assert len(keys) == 1 and len(keys[0]) == 8, out
    return keys[0]


def logged_in(h: PoolerHarness, user="app", password="secret"):
    c = h.client()
    out = c.login(user=user, password=password)
    assert out == welcome(key_of(out))
    return c


# --- login ------------------------------------------------------------------------------------------------

LOGINS = [
    # auth_type, user, database, password, error (None: welcome), log line
    ("trust", "app", "app", None, None, "login attempt: db=app user=app tls=no replication=no"),
    ("md5", "app", "app", "secret", None, "login attempt: db=app user=app tls=no replication=no"),
    ("md5", "md5user", "app", "md5pass", None, "login attempt: db=app user=md5user tls=no replication=no"),
    ("md5", "app", "app", "wrong", "password authentication failed", "closing because: password authentication"),
    ("md5", "nobody", "app", "x", "password authentication failed", "no such user: nobody"),
    ("trust", "nobody", "app", None, '"trust" authentication failed', "no such user: nobody"),
    ("md5", "app", "nope", "secret", "no such database: nope", "login failed: db=nope user=app"),
]


@pytest.mark.parametrize("auth_type,user,database,password,error,logline", LOGINS,
                         ids=["trust", "md5-plain-secret", "md5-md5-secret", "wrong-password", "unknown-user-md5",
                              "unknown-user-trust", "unknown-database"])
def test_login(make, auth_type, user, database, password, error, logline):
    h = make(auth_type=auth_type)
    c = h.client()
    assert c.state == "login" and c.protocol in registry.login_clients
    out = c.login(user=user, database=database, password=password)
    assert h.log_lines(logline), h.logs
    if error is not None:
        assert out == build.error_response(error, "08P01", "FATAL")     # after the md5 exchange, if any
        assert c.transport.closed and not registry.login_clients
        assert h.net.sessions == []                  # a refused client never costs a server connection
        assert all(not p.client_count() for p in registry.pools.values())
        return
    key = key_of(out)
    assert out == welcome(key)
    assert registry.find_client_by_key(key) is c.protocol
    pool = h.pool(user=user)
    assert c.state == "active" and pool_state(pool) == {"active_clients": 1, "idle_servers": 1}
    (pg,) = h.net.sessions
    assert pg.startup_params == {"database": "appdb", "user": user}     # dbname= of [databases]
    assert h.net.addresses == [("unix", str(h.tmp / "pg" / ".s.PGSQL.5432"))]


def test_second_login_uses_the_pool_welcome(make):
    """The welcome of a pool is its first server login's: a second client gets it without a new server."""
    h = make(pool_mode="transaction")
    logged_in(h)
    c2 = logged_in(h)
    assert c2.state == "active" and len(h.net.sessions) == 1
    assert pool_state(h.pool()) == {"active_clients": 2, "idle_servers": 1}


def test_clients_keep_one_copy_of_the_same_startup_packet(make):
    """The startup packet a client keeps (takeover, replication options) and its user and database names are one
    object for every client that sent the same small packet; a different packet is kept as its own."""
    h = make(pool_mode="transaction")
    a, b = logged_in(h), logged_in(h)
    pa, pb = a.protocol, b.protocol
    assert pa._startup is pb._startup and pa._startup == startup("app", "app")
    assert pa.username is pb.username and pa.dbname is pb.dbname
    assert pa.startup_params == {"user": "app", "database": "app"}
    c = h.client()
    out = c.send(startup("app", "app", application_name="other"))
    c.send(md5_password("secret", "app", out[9:13]))
    assert c.protocol._startup == startup("app", "app", application_name="other") and c.state == "active"
    assert c.protocol.startup_params == {"user": "app", "database": "app", "application_name": "other"}


@pytest.mark.parametrize("first", [[SSL_CODE], [GSS_CODE], [SSL_CODE, GSS_CODE], [GSS_CODE, SSL_CODE]])
def test_encryption_requests_answered_no_without_tls(make, first):
    """client TLS off: SSLRequest and GSSENCRequest are answered 'N' and the startup packet that follows logs in
    (libpq's sslmode=prefer and gssencmode=prefer)."""
    h = make(pool_mode="transaction")
    c = h.client()
    for code in first:
        assert c.send(struct.pack("!II", 8, code)) == b"N"
    out = c.login(password="secret")
    assert out == welcome(key_of(out)) and c.state == "active"


# startup packets a client may send twice: the second login skips the parse and the checks (client._startups)
# and must end the same as the first: welcome, values, names, log lines
REPEATS = [
    # extra ini lines, startup parameters, what both logins log besides the login attempt
    ("", {}, []),
    ("", {"application_name": "x", "DateStyle": "ISO, DMY"}, []),
    ("", {"IntervalStyle": "iso_8601"}, []),                       # tracked by default (track_extra_parameters)
    ("", {"client_encoding": "UTF8", "TimeZone": "UTC", "standard_conforming_strings": "on"}, []),
    ("verbose = 1\nignore_startup_parameters = extra_float_digits", {"extra_float_digits": "2"},
     ["ignoring startup parameter: extra_float_digits=2"]),        # logged every time: never kept
    ("verbose = 1", {"options": "-c DateStyle=ISO"}, ["received options: -c DateStyle=ISO"]),
]


@pytest.mark.parametrize("extra, params, lines", REPEATS)
def test_the_same_startup_packet_twice(make, extra, params, lines):
    h = make(pool_mode="transaction", extra=extra)
    seen = []
    for _ in range(2):
        c = h.client()
        before = len(h.logs)
        out = c.send(startup("app", "app", **params))
        out += c.send(md5_password("secret", "app", out[9:13]))
        assert c.state == "active", out
        key = key_of(out)
        p = c.protocol
        logged = [re.sub(r"C-0x[0-9a-f]+: (\S+)@127\.0\.0\.1:\d+ ", r"\1 ", line) for line in h.logs[before:]
                  if "C-0x" in line]
        seen.append((out[:9], out[13:].replace(key, b"KEY"), dict(p.vars), p.username, p.dbname, p.startup_params,
                     logged))
        assert [x for x in lines if not any(x in line for line in logged)] == []
    assert seen[0] == seen[1]


def test_a_startup_packet_met_before_is_checked_again_after_reload(make):
    """The second login of a packet reuses the first one's checks only under the same Config object: under a new
    one (RELOAD and SET make one; here one that no longer tracks search_path, a setting RELOAD itself does not
    change) the same packet is refused as PgBouncer refuses it."""
    h = make(pool_mode="transaction", extra="track_extra_parameters = search_path")
    pkt = startup("app", "app", search_path="s1")
    for _ in range(2):
        c = h.client()
        c.send(md5_password("secret", "app", c.send(pkt)[9:13]))
        assert c.state == "active" and c.protocol.vars["search_path"] == "s1"
    ini = h.tmp / "pgbouncer.ini"
    ini.write_text(ini.read_text().replace("track_extra_parameters = search_path", "track_extra_parameters ="))
    h.pooler.loader.apply(load_config(str(ini)))
    c2 = h.client()
    assert errors(c2.send(pkt)) == [("FATAL", "08P01", "unsupported startup parameter: search_path")]


def test_a_startup_packet_met_before_still_needs_tls_when_required(make, monkeypatch):
    """client_tls_sslmode=require refuses a plaintext client whatever startup packet it sends, one met before
    included."""
    h = make(pool_mode="transaction")
    c = h.client()
    c.send(md5_password("secret", "app", c.send(startup("app", "app"))[9:13]))
    assert c.state == "active"
    monkeypatch.setattr(tls.state, "client_ctx", object())
    monkeypatch.setattr(tls.state, "client_mode", "require")
    c2 = h.client()
    assert errors(c2.send(startup("app", "app"))) == [("FATAL", "08P01", "SSL required")]


# SCRAM logins: what the client gets after its client-final-message (the auth_file holds a plain password)
SCRAM_LOGINS = [
    # database, password, error (None: welcome), the server signature sent
    ("app", "secret", None, True),
    ("nope", "secret", "no such database: nope", True),     # named only after the exchange, as PgBouncer does
    ("app", "wrong", "SASL authentication failed", False),
]


@pytest.mark.parametrize("database, password, error, signed", SCRAM_LOGINS)
def test_scram_login(make, database, password, error, signed):
    """SASLFinal (server signature), AuthenticationOk and the welcome reach the client in this order; an unknown
    database is refused after a signed exchange, a wrong proof without a signature."""
    h = make(auth_type="scram-sha-256")
    c = h.client()
    out = c.send(startup("app", database))
    assert out == build.auth_request(10, build.cstr("SCRAM-SHA-256") + b"\0")
    client = ScramClient("", password=password)
    out = c.send(build.sasl_initial_response("SCRAM-SHA-256", client.client_first()))
    assert out[:1] == b"R" and out[5:9] == struct.pack("!I", 11)       # AuthenticationSASLContinue
    out = c.send(build.msg(b"p", client.client_final(out[9:])))
    msgs = split_messages(out)
    if signed:
        assert msgs[0][0] == b"R" and msgs[0][1][:4] == struct.pack("!I", 12)
        client.verify_server_final(msgs[0][1][4:])
        msgs = msgs[1:]
    if error is not None:
        assert msgs == split_messages(build.error_response(error, "08P01", "FATAL")) and c.transport.closed
        return
    assert b"".join(t + struct.pack("!I", len(b) + 4) + b for t, b in msgs) == welcome(key_of(out))
    assert c.state == "active"


# PostgreSQL's password for user app (None: trust), what the first client gets after AuthenticationOk
SERVER_LOGINS = [
    (None, None),
    ("secret", None),                   # md5 towards PostgreSQL with the auth_file password
    ("other", ("FATAL", "28P01", 'password authentication failed for user "app"')),
]


@pytest.mark.parametrize("pg_password,error", SERVER_LOGINS, ids=["trust", "md5", "md5-refused"])
def test_server_login(make, pg_password, error):
    h = make(script=Script(password=pg_password))
    c = h.client()
    out = c.login(password="secret")
    (pg,) = h.net.sessions
    if error is None:
        assert out == welcome(key_of(out))
        assert pg.phase == "work" and pool_state(h.pool()) == {"active_clients": 1, "idle_servers": 1}
        return
    # the refusal goes to the waiting client with PostgreSQL's SQLSTATE; the pool remembers it
    assert out == build.auth_request(0) + build.error_response(error[2], error[1], error[0])
    assert c.transport.closed and pool_state(h.pool()) == {}
    assert h.log_lines(f"server login failed: FATAL {error[2]}")
    # the pool has no welcome yet: the next client waits for a login, which is not retried before
    # server_login_retry (15 s)
    c2 = h.client()
    assert c2.login(password="secret") == build.auth_request(0)
    assert c2.state == "waiting_login" and len(h.net.sessions) == 1


def test_server_login_refused_after_welcome(make):
    """A pool that has its welcome: a refused server login ends the waiting client with PostgreSQL's error,
    and the next one at once with the cached error (server_login_retry)."""
    h = make(pool_mode="transaction", extra="server_idle_timeout = 10", script=Script(password="secret"))
    c = logged_in(h)
    c.send(build.query("SELECT 1"))
    h.janitor_tick(11)                                  # the idle server goes
    assert pool_state(h.pool()) == {"active_clients": 1}
    h.net.script.password = "changed"                   # ALTER ROLE app PASSWORD ...
    out = c.send(build.query("SELECT 1"))
    refused = 'password authentication failed for user "app"'
    assert out == build.error_response(refused, "28P01", "FATAL") and c.transport.closed
    assert len(h.net.sessions) == 2
    c2 = logged_in(h)                                   # the welcome needs no server
    out = c2.send(build.query("SELECT 1"))
    assert errors(out) == [("FATAL", "08P01", f"server login has been failing, cached error: {refused} "
                                              "(server_login_retry)")]
    assert len(h.net.sessions) == 2 and pool_state(h.pool()) == {}


# --- queries ----------------------------------------------------------------------------------------------

# pool_mode, state after one SELECT: the client keeps its server in session mode only
AFTER_QUERY = [
    ("session", True, {"active_clients": 1, "active_servers": 1}),
    ("transaction", False, {"active_clients": 1, "idle_servers": 1}),
    ("statement", False, {"active_clients": 1, "idle_servers": 1}),
]


@pytest.mark.parametrize("pool_mode,linked,state", AFTER_QUERY)
def test_simple_query(make, pool_mode, linked, state):
    h = make(pool_mode=pool_mode)
    c = logged_in(h)
    out = c.send(build.query("SELECT 1"))
    assert out == SELECT1 + build.ready_for_query(b"I")          # PostgreSQL's bytes, unchanged
    (pg,) = h.net.sessions
    assert pg.received_messages == [(b"Q", b"SELECT 1\0")]       # the client's bytes, unchanged
    assert (c.server is not None) == linked
    assert pool_state(h.pool()) == state
    stats = h.pool().db.stats
    assert (stats.query_count, stats.xact_count) == (1, 1)


# transaction pooling: (query, ReadyForQuery status, server still linked to the client after it)
TRANSACTION = [
    [("BEGIN", b"T", True), ("SELECT 1", b"T", True), ("COMMIT", b"I", False)],
    [("BEGIN", b"T", True), ("SELECT 1/0", b"E", True), ("SELECT 1", b"E", True), ("ROLLBACK", b"I", False)],
    [("SELECT 1", b"I", False), ("BEGIN", b"T", True), ("ROLLBACK", b"I", False), ("SELECT 1", b"I", False)],
]


@pytest.mark.parametrize("steps", TRANSACTION, ids=["commit", "error-rollback", "in-and-out"])
def test_transaction_pooling_releases_on_idle(make, steps):
    h = make(pool_mode="transaction")
    c = logged_in(h)
    pool = h.pool()
    for sql, status, linked in steps:
        out = c.send(build.query(sql))
        assert out.endswith(build.ready_for_query(status)), (sql, out)
        assert (c.server is not None) == linked, sql
        if linked:
            assert pool_state(pool) == {"active_clients": 1, "active_servers": 1}, sql
        else:
            assert pool_state(pool) == {"active_clients": 1, "idle_servers": 1}, sql
    assert [q for q in h.net.sessions[0].queries] == [s for s, _, _ in steps]


# PostgreSQL's answers cut into pieces of this many bytes (0: whole), crossing every message boundary
@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 5, 7, 64])
def test_server_answers_in_pieces(make, chunk):
    h = make(pool_mode="transaction", script=Script(chunk=chunk))
    c = logged_in(h)
    for sql, status, linked in TRANSACTION[0]:
        out = c.send(build.query(sql))
        answer = SELECT1 if sql == "SELECT 1" else build.command_complete(sql)
        assert out == answer + build.ready_for_query(status)
        assert (c.server is not None) == linked
    assert pool_state(h.pool()) == {"active_clients": 1, "idle_servers": 1}
    assert h.pool().db.stats.xact_count == 1


PIPELINE = (build.query("SELECT 1") + parse("", "SELECT 1") + bind("", "") + describe_portal() + execute()
            + build.sync() + build.query("SELECT 1"))


# the client's pipelined bytes cut at these offsets (each piece a separate data_received)
@pytest.mark.parametrize("cuts", [[], [1], [4], [5], [6], [len(PIPELINE) - 1], list(range(1, len(PIPELINE)))],
                         ids=["whole", "1", "4", "5", "6", "last", "every-byte"])
def test_client_pipeline_in_pieces(make, cuts):
    """Three requests in one stream (Query, an extended batch up to Sync, Query): forwarded unchanged
    however they are cut, the server released only after the third ReadyForQuery."""
    h = make(pool_mode="transaction")
    c = logged_in(h)
    bounds = [0, *cuts, len(PIPELINE)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        c.send(PIPELINE[a:b], settle=False)
    h.settle()
    out = c.transport.take()
    assert out == (SELECT1 + build.ready_for_query(b"I") + build.msg(b"1") + build.msg(b"2")
                   + build.row_description([("?column?", 23)]) + build.data_row(["1"])
                   + build.command_complete("SELECT 1") + build.ready_for_query(b"I")
                   + SELECT1 + build.ready_for_query(b"I"))
    (pg,) = h.net.sessions
    assert b"".join(build.msg(t, body) for t, body in pg.received_messages) == PIPELINE
    assert c.server is None and pool_state(h.pool()) == {"active_clients": 1, "idle_servers": 1}


def test_pipeline_keeps_server_until_last_ready(make):
    """Two Queries sent together, PostgreSQL's first answer in: the server stays linked for the second."""
    h = make(pool_mode="transaction", script=Script(hold={HOLD}))
    c = logged_in(h)
    out = c.send(build.query("SELECT 1") + build.query(HOLD))
    assert out == SELECT1 + build.ready_for_query(b"I")
    assert c.server is not None and pool_state(h.pool()) == {"active_clients": 1, "active_servers": 1}
    h.net.sessions[0].answer_held()
    h.settle()
    assert c.transport.take() == SELECT1 + build.ready_for_query(b"I")
    assert c.server is None and pool_state(h.pool()) == {"active_clients": 1, "idle_servers": 1}


# which side's send buffer fills up: the other side stops being read until it drains
@pytest.mark.parametrize("full", ["client", "server"])
def test_flow_control(make, full):
    h = make(pool_mode="session")
    c = logged_in(h)
    c.send(build.query("SELECT 1"))
    server = c.server
    (pg,) = h.net.sessions
    full_side, other = (c.protocol, pg.transport) if full == "client" else (server, c.transport)
    full_side.pause_writing()
    assert not other.is_reading()
    full_side.resume_writing()
    assert other.is_reading()


# settings; what PostgreSQL receives when one client runs SELECT 1 twice in transaction pooling
REUSE = [
    ("", ["SELECT 1", "SELECT 1"]),
    ("server_check_delay = 0", ["", "SELECT 1", "", "SELECT 1"]),            # the empty check, every time
    ("server_check_delay = 0\nserver_check_query = select 2", ["select 2", "SELECT 1", "select 2", "SELECT 1"]),
    ("server_reset_query_always = 1", ["SELECT 1", "DISCARD ALL", "SELECT 1", "DISCARD ALL"]),
    ("server_reset_query_always = 1\nserver_reset_query =", ["SELECT 1", "SELECT 1"]),
]


@pytest.mark.parametrize("extra,queries", REUSE, ids=["default", "check", "check-query", "reset-always",
                                                       "reset-always-no-query"])
def test_server_reuse(make, extra, queries):
    h = make(pool_mode="transaction", extra=extra)
    c = logged_in(h)
    for _ in range(2):
        assert c.send(build.query("SELECT 1")) == SELECT1 + build.ready_for_query(b"I")
    (pg,) = h.net.sessions
    assert pg.queries == queries
    assert pool_state(h.pool()) == {"active_clients": 1, "idle_servers": 1}


def test_extended_protocol_transaction_mode(make):
    h = make(pool_mode="transaction")
    c = logged_in(h)
    batch = parse("", "SELECT 1") + bind("", "") + describe_portal() + execute() + build.sync()
    out = c.send(batch)
    assert types(out) == b"12TDCZ" and out.endswith(build.ready_for_query(b"I"))
    (pg,) = h.net.sessions
    assert b"".join(t for t, _ in pg.received_messages) == b"PBDES"
    assert c.server is None and pool_state(h.pool()) == {"active_clients": 1, "idle_servers": 1}


def test_extended_protocol_without_sync_keeps_server(make):
    """Parse/Bind/Execute with Flush but no Sync: no ReadyForQuery yet, so the server stays with the client."""
    h = make(pool_mode="transaction")
    c = logged_in(h)
    out = c.send(parse("", "SELECT 1") + bind("", "") + execute() + build.msg(b"H"))
    assert types(out) == b"12DC"
    assert c.server is not None and pool_state(h.pool()) == {"active_clients": 1, "active_servers": 1}
    out = c.send(build.sync())
    assert out == build.ready_for_query(b"I") and c.server is None


def test_statement_mode_refuses_transactions(make):
    h = make(pool_mode="statement")
    c = logged_in(h)
    out = c.send(build.query("BEGIN"))
    assert out.startswith(build.command_complete("BEGIN"))
    assert errors(out) == [("FATAL", "08P01", "transaction blocks not allowed in statement pooling mode")]
    assert c.transport.closed and pool_state(h.pool()) == {}
    assert h.net.sessions[0].terminated


# --- waiting for a server ---------------------------------------------------------------------------------

def test_client_queued_until_a_server_frees(make):
    h = make(pool_mode="transaction", pool_size=1)
    a = logged_in(h)
    b = logged_in(h)
    pool = h.pool()
    assert a.send(build.query("BEGIN")) == build.command_complete("BEGIN") + build.ready_for_query(b"T")
    assert b.send(build.query("SELECT 1")) == b""                 # no server: b waits, its query held
    assert b.state == "waiting" and b.protocol in pool.waiting_clients
    assert pool_state(pool) == {"waiting_clients": 1, "active_clients": 1, "active_servers": 1}
    assert len(h.net.sessions) == 1                               # pool_size=1: no second server
    out = a.send(build.query("COMMIT"))
    assert out == build.command_complete("COMMIT") + build.ready_for_query(b"I")
    assert b.transport.take() == SELECT1 + build.ready_for_query(b"I")    # served by the freed server
    assert h.net.sessions[0].queries == ["BEGIN", "COMMIT", "SELECT 1"]
    assert b.state == "active" and pool_state(pool) == {"active_clients": 2, "idle_servers": 1}


def test_idle_client_holds_no_buffers_of_its_own(make):
    """A logged-in idle client holds the shared empty `pending` (b"") and statement names (NO_STATEMENTS); a
    bytearray is made while data waits for a server, a dict once it names a statement."""
    h = make(pool_mode="transaction", pool_size=1)
    a, b = logged_in(h), logged_in(h)
    for c in (a, b):
        assert type(c.protocol.pending) is bytes and not c.protocol.pending
        assert c.protocol.prepared is NO_STATEMENTS
    a.send(build.query("BEGIN"))
    assert b.send(build.query("SELECT 1")) == b""                 # held: no server for b
    assert b.protocol.pending == build.query("SELECT 1") and type(b.protocol.pending) is bytearray
    a.send(build.query("COMMIT"))
    assert b.transport.take() == SELECT1 + build.ready_for_query(b"I")
    assert type(b.protocol.pending) is bytes and not b.protocol.pending
    assert a.protocol.prepared is NO_STATEMENTS and b.protocol.prepared is NO_STATEMENTS


def test_session_pooling_queue(make):
    """Session pooling: the server is the client's until it leaves; the next one gets it after the reset."""
    h = make(pool_mode="session", pool_size=1)
    a = logged_in(h)
    b = logged_in(h)
    a.send(build.query("SELECT 1"))
    assert b.send(build.query("SELECT 1")) == b"" and b.state == "waiting"
    assert a.send(build.query("SELECT 1")) == SELECT1 + build.ready_for_query(b"I")    # still a's server
    assert a.send(build.terminate()) == b""
    assert b.transport.take() == SELECT1 + build.ready_for_query(b"I")
    assert h.net.sessions[0].queries == ["SELECT 1", "SELECT 1", "DISCARD ALL", "SELECT 1"]
    assert b.server is not None and pool_state(h.pool()) == {"active_clients": 1, "active_servers": 1}


def test_cancel_of_a_waiting_client(make):
    """A cancel request for a queued client drops its queued query and answers it as PostgreSQL would."""
    h = make(pool_mode="transaction", pool_size=1)
    a = logged_in(h)
    b = logged_in(h)
    a.send(build.query("BEGIN"))
    b.send(build.query("SELECT 1"))
    assert b.state == "waiting"
    canceller = h.client()
    assert canceller.send(struct.pack("!II", 16, CANCEL_CODE) + b.cancel_key()) == b""
    assert canceller.transport.closed
    assert b.transport.take() == build.error_response(CANCELED[2], CANCELED[1], "ERROR") + build.ready_for_query(b"I")
    assert b.state == "active" and h.net.cancel_requests == []
    a.send(build.query("COMMIT"))
    assert h.net.sessions[0].queries == ["BEGIN", "COMMIT"]       # the canceled query never ran


# --- failures ---------------------------------------------------------------------------------------------

# pool_mode, what PostgreSQL sent before it went away (client message types)
DEATHS = [
    ("session", b"", b""),
    ("transaction", b"", b""),
    ("session", build.row_description([("?column?", 23)]), b"T"),
    ("transaction", build.row_description([("?column?", 23)]) + build.data_row(["1"]), b"TD"),
]


@pytest.mark.parametrize("pool_mode,partial,partial_types", DEATHS,
                         ids=["session-silent", "transaction-silent", "session-after-T", "transaction-after-TD"])
def test_server_dies_mid_query(make, pool_mode, partial, partial_types):
    h = make(pool_mode=pool_mode, script=Script(hold={HOLD}))
    c = logged_in(h)
    assert c.send(build.query(HOLD)) == b""
    (pg,) = h.net.sessions
    assert pg.held == [HOLD] and c.server is not None
    if partial:
        pg.send(partial)
        h.settle()
    pg.hang_up()
    h.settle()
    out = c.transport.take()
    assert types(out) == partial_types + b"E"
    assert errors(out) == [("FATAL", "08P01", "server conn crashed?")]
    assert c.transport.closed and c.state == "free"
    assert pool_state(h.pool()) == {}
    assert h.log_lines("closing because: server conn crashed?")


def test_server_refuses_connection(make):
    """No PostgreSQL listening: the client waits for its login (server_login_retry), nothing is sent to it."""
    h = make(script=Script(refuse_connect=True))
    c = h.client()
    out = c.login(password="secret")
    assert out == build.auth_request(0)
    assert c.state == "waiting_login" and pool_state(h.pool()) == {"waiting_clients": 1}
    assert h.log_lines("closing because: connect failed")


# pool_mode, queries before Terminate, what becomes of the server, what PostgreSQL received after them
TERMINATES = [
    ("transaction", [], {"idle_servers": 1}, []),
    ("transaction", ["SELECT 1"], {"idle_servers": 1}, []),
    ("session", ["SELECT 1"], {"idle_servers": 1}, ["DISCARD ALL"]),        # server_reset_query
    ("transaction", ["BEGIN"], {}, ["X"]),                                  # in a transaction: closed
]


@pytest.mark.parametrize("pool_mode,before,state,after", TERMINATES)
def test_terminate_from_client(make, pool_mode, before, state, after):
    h = make(pool_mode=pool_mode)
    c = logged_in(h)
    for sql in before:
        c.send(build.query(sql))
    (pg,) = h.net.sessions
    seen = len(pg.received_messages)
    assert c.send(build.terminate()) == b""
    assert c.transport.closed and c.state == "free"
    assert h.log_lines("closing because: client close request")
    assert pool_state(h.pool()) == state
    later = [m[1][:-1].decode() if m[0] == b"Q" else m[0].decode() for m in pg.received_messages[seen:]]
    assert later == after


def test_client_eof_returns_server(make):
    h = make(pool_mode="session")
    c = logged_in(h)
    c.send(build.query("SELECT 1"))
    assert c.eof() == b""
    assert h.log_lines("closing because: client unexpected eof")
    assert pool_state(h.pool()) == {"idle_servers": 1}
    assert h.net.sessions[0].queries == ["SELECT 1", "DISCARD ALL"]


# --- cancel requests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_cancel_request_reaches_postgres(make, pool_mode):
    h = make(pool_mode=pool_mode, script=Script(hold={HOLD}))
    c = logged_in(h)
    c.send(build.query(HOLD))
    (pg,) = h.net.sessions
    canceller = h.client()
    out = canceller.send(struct.pack("!II", 16, CANCEL_CODE) + c.cancel_key())
    # the pooler opened a connection of its own to PostgreSQL with the backend's key, not the client's
    assert h.net.cancel_requests == [(pg.pid, pg.key)]
    assert out == b"" and canceller.transport.closed
    assert not h.log_lines(f"{canceller.protocol.prefix()}closing because")     # closed quietly
    assert c.transport.take() == build.error_response(CANCELED[2], CANCELED[1], "ERROR") + \
        build.ready_for_query(b"I")
    assert not c.transport.closed
    assert pool_state(h.pool()) == ({"active_clients": 1, "active_servers": 1} if pool_mode == "session"
                                    else {"active_clients": 1, "idle_servers": 1})


def test_cancel_request_unknown_key(make):
    h = make(script=Script(hold={HOLD}))
    c = logged_in(h)
    c.send(build.query(HOLD))
    canceller = h.client()
    assert canceller.send(struct.pack("!II", 16, CANCEL_CODE) + b"\0" * 8) == b""
    assert canceller.transport.closed and h.net.cancel_requests == []
    assert c.transport.take() == b"" and h.net.sessions[0].held == [HOLD]


# --- protocol violations ----------------------------------------------------------------------------------

# pool_mode, queries before the bad message, state after (the server survives: it never saw the message)
UNKNOWN = [
    ("transaction", [], {"idle_servers": 1}),
    ("session", [], {"idle_servers": 1}),
    ("session", ["SELECT 1"], {"idle_servers": 1}),
]


@pytest.mark.parametrize("pool_mode,before,state", UNKNOWN)
def test_unknown_message_type(make, pool_mode, before, state):
    h = make(pool_mode=pool_mode)
    c = logged_in(h)
    for sql in before:
        c.send(build.query(sql))
    out = c.send(build.msg(b"y", b"abc"))
    assert errors(out) == [("FATAL", "08P01", "unknown pkt")]
    assert h.log_lines("unknown pkt from client: 121/0x79")
    assert c.transport.closed and c.state == "free"
    (pg,) = h.net.sessions
    assert all(t != b"y" for t, _ in pg.received_messages)       # never forwarded to PostgreSQL
    assert pool_state(h.pool()) == state


def test_bad_startup_packet(make):
    h = make()
    c = h.client()
    out = c.send(struct.pack("!I", 4) + b"junk")
    assert errors(out) == [("FATAL", "08P01", "bad packet header")]
    assert c.transport.closed and not registry.login_clients


# --- the janitor ------------------------------------------------------------------------------------------

# setting, seconds the janitor looks ahead, who goes, the reason PgBouncer logs
JANITOR = [
    ("server_idle_timeout = 10", 5, None, None),
    ("server_idle_timeout = 10", 11, "server", "server idle timeout"),
    ("client_idle_timeout = 10", 5, None, None),
    ("client_idle_timeout = 10", 11, "client", "client_idle_timeout"),
    ("server_lifetime = 10", 11, "server", "server lifetime over"),
]


@pytest.mark.parametrize("setting,after,closed,reason", JANITOR)
def test_janitor_idle_timeouts(make, setting, after, closed, reason):
    h = make(pool_mode="transaction", extra=setting)
    c = logged_in(h)
    c.send(build.query("SELECT 1"))
    (pg,) = h.net.sessions
    h.janitor_tick(after)
    pool = h.pool()
    if closed is None:
        assert pool_state(pool) == {"active_clients": 1, "idle_servers": 1}
        assert not h.log_lines("closing because") and not pg.terminated
        return
    assert h.log_lines(f"closing because: {reason} (age=")
    if closed == "server":
        assert pg.terminated and pg.received_messages[-1] == (b"X", b"")
        assert pool_state(pool) == {"active_clients": 1}
        assert c.transport.take() == b"" and not c.transport.closed
    else:
        assert errors(c.transport.take()) == [("FATAL", "08P01", reason)]
        assert c.transport.closed and pool_state(pool) == {"idle_servers": 1}
        assert not pg.terminated


# what the client sent before going quiet; seconds ahead (client_login_timeout = 60 by default)
LOGIN_TIMEOUTS = [
    (b"", 59, False),
    (b"", 61, True),
    (startup("app", "app"), 61, True),            # asked for its password, never sent it
]


@pytest.mark.parametrize("sent,after,closed", LOGIN_TIMEOUTS, ids=["quiet-59s", "quiet-61s", "no-password"])
def test_janitor_client_login_timeout(make, sent, after, closed):
    h = make()
    c = h.client()
    if sent:
        c.send(sent)
    h.janitor_tick(after)
    if not closed:
        assert c.transport.take() == b"" and c.protocol in registry.login_clients
        return
    assert errors(c.transport.take()) == [("FATAL", "08P01", "client_login_timeout")]
    assert c.transport.closed and not registry.login_clients
    assert h.log_lines("closing because: client_login_timeout (age=")


def test_janitor_query_wait_timeout(make):
    h = make(pool_mode="transaction", pool_size=1, extra="query_wait_timeout = 10")
    a = logged_in(h)
    b = logged_in(h)
    a.send(build.query("BEGIN"))
    b.send(build.query("SELECT 1"))
    h.janitor_tick(11)
    assert errors(b.transport.take()) == [("FATAL", "08P01", "query_wait_timeout")]
    assert h.log_lines("closing because: query_wait_timeout")
    assert pool_state(h.pool()) == {"active_clients": 1, "active_servers": 1}


# setting, queries the client runs (HOLD gets no answer), seconds ahead, the reason the server is closed for
ACTIVE_TIMEOUTS = [
    ("idle_transaction_timeout = 10", ["BEGIN"], 5, None),
    ("idle_transaction_timeout = 10", ["BEGIN"], 11, "idle transaction timeout"),
    ("query_timeout = 10", [HOLD], 5, None),
    ("query_timeout = 10", [HOLD], 11, "query timeout"),
    ("transaction_timeout = 10", ["BEGIN", "SELECT 1"], 11, "transaction timeout"),
]


@pytest.mark.parametrize("setting,queries,after,reason", ACTIVE_TIMEOUTS)
def test_janitor_active_timeouts(make, setting, queries, after, reason):
    h = make(pool_mode="transaction", extra=setting, script=Script(hold={HOLD}))
    c = logged_in(h)
    for sql in queries:
        c.send(build.query(sql))
    c.transport.take()
    (pg,) = h.net.sessions
    h.janitor_tick(after)
    if reason is None:
        assert c.transport.take() == b"" and not c.transport.closed
        assert pool_state(h.pool()) == {"active_clients": 1, "active_servers": 1}
        return
    assert h.log_lines(f"closing because: {reason} (age=")
    assert errors(c.transport.take()) == [("FATAL", "08P01", reason)]      # the client is told and closed
    assert c.transport.closed and pool_state(h.pool()) == {}
    assert pg.closed


# seconds a client has waited for a server, what it was sent meanwhile
WAIT_NOTIFY = [
    (4, b""),
    (6, build.notice_response("No server connection available in postgres backend, client being queued")),
]


@pytest.mark.parametrize("after,sent", WAIT_NOTIFY)
def test_janitor_query_wait_notify(make, after, sent):
    h = make(pool_mode="transaction", pool_size=1)      # query_wait_notify = 5 by default
    a = logged_in(h)
    b = logged_in(h)
    a.send(build.query("BEGIN"))
    b.send(build.query("SELECT 1"))
    h.janitor_tick(after)
    assert b.transport.take() == sent
    h.janitor_tick(after)
    assert b.transport.take() == b""                   # once per wait
    assert b.state == "waiting" and not b.transport.closed


# --- parameters that follow the client (varcache) ---------------------------------------------------------

# who runs what; what PostgreSQL receives for it (the pooler's SETs first); what the client is sent
VARCACHE = [
    ("a", "SELECT 1", ["SET application_name='a';", "SELECT 1"], SELECT1),
    ("a", "SELECT 1", ["SELECT 1"], SELECT1),                      # the server has a's value now
    ("b", "SELECT 1", ["SET application_name='b';", "SELECT 1"], SELECT1),
    ("a", "SET application_name = 'z'", ["SET application_name='a';", "SET application_name = 'z'"],
     build.command_complete("SET") + build.parameter_status("application_name", "z")),
    ("b", "SELECT 1", ["SET application_name='b';", "SELECT 1"], SELECT1),
    ("a", "SELECT 1", ["SET application_name='z';", "SELECT 1"], SELECT1),   # the value a set itself
]


def test_tracked_parameters_follow_the_client(make):
    """Transaction pooling, one server, two clients with their own application_name: before a client's
    query the pooler SETs the value that client has, and only when the server's differs."""
    h = make(pool_mode="transaction", pool_size=1)
    clients = {}
    for name in ("a", "b"):
        c = h.client()
        out = c.send(startup("app", "app", application_name=name))
        out += c.send(md5_password("secret", "app", out[9:13]))
        params = dict(WELCOME_PARAMS, application_name=name)        # the client's own value, in the welcome
        assert out[13:] == (build.auth_request(0) + b"".join(build.parameter_status(k, v) for k, v in params.items())
                            + build.msg(b"K", key_of(out)) + build.ready_for_query(b"I"))
        clients[name] = c
    (pg,) = h.net.sessions
    for who, sql, received, sent in VARCACHE:
        seen = len(pg.queries)
        assert clients[who].send(build.query(sql)) == sent + build.ready_for_query(b"I"), (who, sql)
        assert pg.queries[seen:] == received, (who, sql)
    assert pool_state(h.pool()) == {"active_clients": 2, "idle_servers": 1}


def test_clients_with_the_same_values_share_them(make):
    """Clients that logged in with the same values hold one read-only mapping (varcache.Shared); a client whose
    value changes (here by the server's ParameterStatus after its SET) gets its own copy, the others keep theirs."""
    h = make(pool_mode="transaction", pool_size=1)
    a, b = logged_in(h), logged_in(h)
    shared = a.protocol.vars
    assert b.protocol.vars is shared and isinstance(shared, varcache.Shared)
    assert shared == {k: WELCOME_PARAMS[k] for k in varcache.TRACKED_PARAMS + ("IntervalStyle",)}
    assert a.send(build.query("SET application_name = 'z'")) == (
        build.command_complete("SET") + build.parameter_status("application_name", "z") + build.ready_for_query(b"I"))
    assert a.protocol.vars == dict(shared, application_name="z") and not isinstance(a.protocol.vars, varcache.Shared)
    assert b.protocol.vars is shared and shared["application_name"] == ""
    (pg,) = h.net.sessions
    seen = len(pg.queries)
    assert b.send(build.query("SELECT 1")) == SELECT1 + build.ready_for_query(b"I")
    assert pg.queries[seen:] == ["SET application_name='';", "SELECT 1"]     # b's own value, from the shared one


# --- protocol-level prepared statements (max_prepared_statements) -----------------------------------------

EXEC = bind("", "s1") + execute() + build.sync()
ROWS = build.data_row(["1"]) + build.command_complete("SELECT 1") + build.ready_for_query(b"I")

# client, what it sends, what it is sent, backend that gets it, message types that backend receives,
# and how many of them are Parses of the statement (under the pooler's name)
PREPARED = [
    ("a", parse("s1", "SELECT 1") + build.sync(), build.msg(b"1") + build.ready_for_query(b"I"), 0, b"PS", 1),
    ("a", EXEC, build.msg(b"2") + ROWS, 0, b"BES", 0),
    # b's own name for the same SQL: the backend has the statement, the pooler answers the Parse itself
    ("b", parse("other", "SELECT 1") + bind("", "other") + execute() + build.sync(),
     build.msg(b"1") + build.msg(b"2") + ROWS, 0, b"BES", 0),
    ("b", build.query("BEGIN"), build.command_complete("BEGIN") + build.ready_for_query(b"T"), 0, b"Q", 0),
    # backend 0 is b's for now: a gets a new server, where the pooler prepares s1 first (its ParseComplete
    # is not a's)
    ("a", EXEC, build.msg(b"2") + ROWS, 1, b"PBES", 1),
    ("a", build.msg(b"C", b"Ss1\0") + build.sync(), build.msg(b"3") + build.ready_for_query(b"I"), 1, b"S", 0),
    ("a", EXEC, errors, 1, b"", 0),
]


def test_prepared_statements_across_servers(make):
    h = make(pool_mode="transaction", pool_size=2)
    clients = {"a": logged_in(h), "b": logged_in(h)}
    for step, (who, data, sent, backend, received, parses) in enumerate(PREPARED):
        before = [len(pg.received_messages) for pg in h.net.sessions]
        out = clients[who].send(data)
        pg = h.net.sessions[backend]
        new = pg.received_messages[before[backend] if backend < len(before) else 0:]
        if sent is errors:
            # a Close makes the name unknown: the pooler refuses the Bind itself
            assert errors(out) == [("FATAL", "08P01", "prepared statement did not exist")], step
            assert clients[who].transport.closed
            continue
        assert out == sent, step
        assert b"".join(t for t, _ in new) == received, step
        names = [body.split(b"\0", 1)[0] for t, body in new if t == b"P"]
        assert len(names) == parses and all(n.startswith(b"PGBOUNCER_") for n in names), (step, names)
        binds = [body.split(b"\0", 2)[1] for t, body in new if t == b"B"]
        assert all(n in pg.statements for n in binds), step       # every Bind names a statement it has
    assert len(h.net.sessions) == 2
    assert h.net.sessions[0].statements.keys() == h.net.sessions[1].statements.keys()


# what PostgreSQL sends on its own to an idle server connection; whether the pooler keeps it (then: what
# PostgreSQL receives for the client's next query), or its log line
UNSOLICITED = [
    (build.notice_response("checkpoint starting"), True, ["SELECT 1"]),
    (build.msg(b"A", struct.pack("!I", 7) + b"chan\0payload\0"), True, ["SELECT 1"]),   # NotificationResponse
    # the server's value changed: the client's is SET again before its query
    (build.parameter_status("TimeZone", "Europe/Paris"), True, ["SET TimeZone='UTC';", "SELECT 1"]),
    (build.error_response("terminating connection due to administrator command", "57P01"), False,
     "got packet 'E' from server when not linked"),
    (build.command_complete("SELECT 1"), False, "closing because: idle server got unexpected message: 'C'"),
    (b"", False, "closing because: server closed connection"),          # a plain EOF
]


@pytest.mark.parametrize("data,kept,then", UNSOLICITED,
                         ids=["notice", "notification", "parameter", "fatal", "stray-result", "eof"])
def test_idle_server_gets_unsolicited_data(make, data, kept, then):
    h = make(pool_mode="transaction")
    c = logged_in(h)
    c.send(build.query("SELECT 1"))
    (pg,) = h.net.sessions
    if data:
        pg.send(data)
    else:
        pg.hang_up()
    h.settle()
    assert c.transport.take() == b"" and not c.transport.closed      # nobody's client is told
    if kept:
        assert pool_state(h.pool()) == {"active_clients": 1, "idle_servers": 1}
        assert not h.log_lines("closing because")
        assert c.send(build.query("SELECT 1")) == SELECT1 + build.ready_for_query(b"I")
        assert pg.queries[1:] == then
    else:
        assert pool_state(h.pool()) == {"active_clients": 1}
        assert h.log_lines(then), h.logs


# --- shutdown -----------------------------------------------------------------------------------------------

def test_shutdown_waits_for_a_connection_drained_from_the_accept_queue(make):
    """so_reuseport: SHUTDOWN WAIT_FOR_CLIENTS takes the connections still queued on the listening socket (close()
    would reset them) and waits for them as for any client, also in the loop turn before they become clients; the
    process leaves when they are gone."""
    h = make(pool_mode="transaction", extra="so_reuseport = 1")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    cli = socket.create_connection(srv.getsockname())        # queued: nobody has accepted it
    closed = []
    h.pooler.listeners = [Listener(sock=srv, desc="test", port=srv.getsockname()[1], unix=False,
                                   server=SimpleNamespace(close=lambda: closed.append(True)))]
    h.pooler.done = h.loop.create_future()
    try:
        h.pooler.shutdown("wait_for_clients")
        assert closed == [True] and not h.pooler.done.done()
        h.loop.run_until_complete(asyncio.sleep(0.05))
        h.pooler.janitor_tick(0)
        assert not h.pooler.done.done() and len(registry.login_clients) == 1
        cli.close()
        h.loop.run_until_complete(asyncio.sleep(0.05))
        assert not registry.login_clients
        h.pooler.janitor_tick(0)
        assert h.pooler.done.done()
    finally:
        cli.close()
        srv.close()
