"""Pooling, parameters, startup packet and protocol hygiene against the real PgBouncer 1.24.1 (issue 17, items
11-14): max_prepared_statements switched off at run time, a forced-user pool filled with no client, a server not
reused while a cancel request for it is on its way, track_extra_parameters in any case, the `options` startup
parameter, TLS 1.3 cipher errors, and message types the pooler must never forward."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time

import psycopg
import pytest
from pgutil import wait_until
from regress import rawpg
from test_prepared import SYNC, Raw, bind, execute, parse, query, rows, types
from tlsutil import TlsFiles

BOTH = pytest.mark.parametrize("binary", ["py", "c124"])


def attempt(fn):
    try:
        return fn()
    except Exception as e:  # the outcome is what the test compares
        return e


# --- item 11: max_prepared_statements at run time ---
def statement_names(c: Raw) -> list:
    c.send(query("select name from pg_prepared_statements order by 1"))
    return rows(c.until())


@BOTH
@pytest.mark.parametrize("how", ["SET", "RELOAD"])
def test_max_prepared_statements_zero_stops_rewriting_at_once(pooler_factory, binary, how):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1, "max_prepared_statements": 10},
                             binary=binary)
    c = Raw(p.port)
    c.send(parse("s1", "select 1"), bind("s1"), execute(), SYNC)
    assert types(c.until()) == "12DCZ"
    assert statement_names(c) == [("PGBOUNCER_1",)]
    if how == "SET":
        p.admin("SET max_prepared_statements = 0")
    else:
        p.ini_path.write_text(p.ini_path.read_text().replace("max_prepared_statements = 10",
                                                             "max_prepared_statements = 0"))
        p.admin("RELOAD")
    # the same connected client: its names now go to PostgreSQL as they are
    c.send(parse("s2", "select 2"), bind("s2"), execute(), SYNC)
    assert rows(c.until()) == [("2",)]
    assert statement_names(c) == [("PGBOUNCER_1",), ("s2",)]
    c.send(bind("s1"), execute(), SYNC)                      # prepared under its rewritten name only
    got = c.until()
    assert types(got) == "EZ" and b'prepared statement "s1" does not exist' in got[0][1]
    c.close()


# --- item 11: a forced-user pool with min_pool_size, no client ---
@BOTH
def test_forced_user_pool_is_filled_without_any_client(pooler_factory, pg, binary):
    dbs = {"forced": pg.server_connstr("testdb", user="md5user", password="md5pass", min_pool_size=2),
           "free": pg.server_connstr("otherdb", min_pool_size=2)}
    p = pooler_factory.start({"pool_mode": "transaction"}, databases=dbs, binary=binary)
    wait_until(lambda: [r["state"] for r in p.admin_dicts("SHOW SERVERS")] == ["idle", "idle"],
               message="two idle servers for the forced pool")
    assert {(r["database"], r["user"]) for r in p.admin_dicts("SHOW SERVERS")} == {("forced", "md5user")}
    pools = {(r["database"], r["user"]) for r in p.admin_dicts("SHOW POOLS")}
    assert ("forced", "md5user") in pools and not any(db == "free" for db, _ in pools)
    assert len(re.findall(r"LOG S-\S+ forced/md5user@\S+ new connection to server", p.log())) == 2


# --- item 11: no server reuse while a cancel request for it is on its way ---
class SlowConnectProxy:
    """A TCP relay to PostgreSQL whose new connections can be held back (`delay` seconds) before they reach it:
    a cancel request sent through it lands late."""

    def __init__(self, port: int):
        self.target = port
        self.delay = 0.0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.socks: list[socket.socket] = [self.sock]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn, self.delay), daemon=True).start()

    def _relay(self, conn: socket.socket, delay: float) -> None:
        time.sleep(delay)
        up = socket.create_connection(("127.0.0.1", self.target))
        self.socks += [conn, up]
        threading.Thread(target=self._pump, args=(up, conn), daemon=True).start()
        self._pump(conn, up)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        # shutdown first: a bare close() does not wake a pump thread blocked in recv(), and the connection to
        # PostgreSQL would then stay open (a backend left behind for the tests that count backends)
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def cancel_request(p, key: bytes) -> None:
    """A CancelRequest with a client's BackendKeyData, answered (EOF) once the pooler has passed it on. A plain
    socket, not libpq: PQcancel keeps the GIL while it waits, which would stall the proxy thread."""
    with socket.create_connection((p.host, p.port), timeout=20) as s:
        s.sendall(struct.pack("!II", 16, 80877102) + key)
        while s.recv(100):
            pass


def timed_query(c: Raw, sql: str, results: dict, name: str) -> threading.Thread:
    def run():
        c.send(query(sql))
        got = c.until()
        results[name] = rows(got) or [f for t, b in got if t == "E" for f in b.split(b"\0") if f[:1] == b"M"]
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@BOTH
def test_a_server_is_not_reused_before_its_cancel_request_lands(pooler_factory, pg, binary):
    proxy = SlowConnectProxy(pg.port)
    try:
        p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1},
                                 databases={"testdb": f"host=127.0.0.1 port={proxy.port} dbname=testdb"},
                                 binary=binary)
        a, b = Raw(p.port), Raw(p.port)
        a.send(query("select 1"))
        a.until()                                          # the pool's one server, connected without delay
        proxy.delay = 2.0                                  # from now on a cancel request needs 2 s to land
        results: dict = {}
        ta = timed_query(a, "select 'a' from pg_sleep(0.6)", results, "a")
        time.sleep(0.2)
        threading.Thread(target=cancel_request, args=(p, a.backend_key), daemon=True).start()
        time.sleep(0.2)
        tb = timed_query(b, "select 'b' from pg_sleep(3)", results, "b")    # waits for the server
        ta.join(10)
        assert results["a"] == [("a",)]                    # the cancel lands at ~2.2 s, after a's query ended
        time.sleep(0.3)
        pool = next(r for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb")
        assert (pool["sv_being_canceled"], pool["cl_waiting"]) == (1, 1)
        tb.join(20)
        assert results["b"] == [("b",)]                    # b's query was not the one canceled
    finally:
        proxy.close()


# --- item 12: track_extra_parameters in any case ---
@BOTH
def test_track_extra_parameters_is_case_insensitive(pooler_factory, binary):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 2, "verbose": 2,
                              "track_extra_parameters": "intervalstyle"}, binary=binary)
    a = p.connect(options="-c intervalstyle=sql_standard", autocommit=True)
    other = p.connect(autocommit=True)
    assert a.execute("show intervalstyle").fetchone() == ("sql_standard",)
    a.execute("set IntervalStyle = 'POSTGRES_verbose'")
    other.execute("begin")                        # holds a's server (the most recently used): its own value back
    assert other.execute("show intervalstyle").fetchone() == ("postgres",)
    held = other.execute("select pg_backend_pid()").fetchone()[0]
    # a's value follows it to the other server
    assert a.execute("select current_setting('IntervalStyle'), pg_backend_pid() <> %s", [held]).fetchone() == \
        ("postgres_verbose", True)
    other.execute("commit")
    p.wait_for_log(r"DEBUG C-\S+ testdb/md5user@\S+ setting client var: IntervalStyle='postgres_verbose'")
    p.wait_for_log(r"(?i)DEBUG S-\S+ testdb/md5user@\S+ varcache_apply: SET intervalstyle='postgres_verbose';")


# --- item 13: the options startup parameter, ignored parameters ---
OPTIONS = [
    ("-c  intervalstyle=sql_standard   -c datestyle=german", ("German, DMY", "sql_standard", "")),
    (" -c datestyle=german", ("German, DMY", "postgres", "")),
    ("-cdatestyle=german --intervalstyle=sql_standard", ("German, DMY", "sql_standard", "")),
    ("-c application_name=hello\\ world", ("ISO, MDY", "postgres", "hello world")),
    ("-c application_name=a\\ b\\ \\ c", ("ISO, MDY", "postgres", "a b  c")),
    ("-c application_name=x\\y", ("ISO, MDY", "postgres", "xy")),
    ("--application_name=a\\\\b", ("ISO, MDY", "postgres", "a\\b")),
    ("-c application_name=a\\\\ -c datestyle=german", ("German, DMY", "postgres", "a\\")),
    ("-c application_name=", ("ISO, MDY", "postgres", "")),
    ("-c extra_float_digits=2", ("ISO, MDY", "postgres", "")),
    ("-c search_path=x", "unsupported startup parameter in options: search_path"),
    ("--application-name=dashes", "unsupported startup parameter in options: application-name"),
    ("-c datestyle=german ", "unsupported options startup parameter: only '-c config=val' and '--config=val' "
                             "are allowed"),
    ("\t-c\tdatestyle=german", "unsupported options startup parameter: only '-c config=val' and "
                               "'--config=val' are allowed"),
    ("-c datestyle", "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed"),
]


def login_and_show(p, **params) -> tuple | str:
    """(DateStyle, IntervalStyle, application_name) after a raw login with these startup parameters, or the
    login error's message."""
    c = rawpg.Conn(p.host, p.port)
    try:
        c.login("md5user", "testdb", "md5pass", **params)
    except AssertionError as e:
        return re.search(r"'M': \"?'?(.*?)'?\"?}", str(e)).group(1)
    try:
        out = []
        for sql in ("show datestyle", "show intervalstyle", "show application_name"):
            out += [m[1][6:].decode() for m in c.simple_query(sql) if m[0] == b"D"]
        return tuple(out)
    finally:
        c.close()


@BOTH
def test_options_startup_parameter(pooler_factory, binary):
    p = pooler_factory.start({"verbose": 1, "ignore_startup_parameters": "extra_float_digits,huge"}, binary=binary)
    assert [login_and_show(p, options=o) for o, _ in OPTIONS] == [want for _, want in OPTIONS]
    assert login_and_show(p, huge="x" * 4096) == ("ISO, MDY", "postgres", "")      # an ignored 4 KB value
    p.wait_for_log(r"DEBUG C-\S+ \S+ received options: -c application_name=hello\\ world")
    p.wait_for_log(r"DEBUG C-\S+ \S+ got var from options: application_name=hello world")
    p.wait_for_log(r"DEBUG C-\S+ \S+ ignoring startup parameter from options: extra_float_digits=2")
    p.wait_for_log(r"WARNING C-\S+ \S+ unsupported startup parameter in options: search_path=x")
    p.wait_for_log(r"DEBUG C-\S+ \S+ ignoring startup parameter: huge=x{100}")


# --- item 13: TLS 1.3 cipher suites that OpenSSL refuses ---
@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("certs"))


def tls_settings(certs: TlsFiles) -> dict:
    return {"client_tls_sslmode": "allow", "client_tls_key_file": certs.server_key,
            "client_tls_cert_file": certs.server}


def start_and_reload_with(pooler_factory, certs, binary, key, value, keeps_tls=True) -> tuple[str, str]:
    """(log of a start with key=value, log of a RELOAD to it from a good configuration)."""
    failed = attempt(lambda: pooler_factory.start({**tls_settings(certs), key: value}, binary=binary, timeout=10))
    assert "exited with code 1" in str(failed)
    start_log = pooler_factory.poolers[-1].log()
    p = pooler_factory.start(tls_settings(certs), binary=binary)
    mark = p.log_mark()
    p.ini_path.write_text(p.ini_path.read_text().replace("[pgbouncer]\n", f"[pgbouncer]\n{key} = {value}\n"))
    p.admin("RELOAD")
    p.wait_for_log(r"LOG RELOAD command issued", since=mark)
    p.admin("SHOW VERSION")          # the reload is done when the next command is answered
    if keeps_tls:
        with psycopg.connect(p.dsn(sslmode="require")) as conn:            # the old TLS configuration serves
            assert conn.execute("select 1").fetchone() == (1,)
    return start_log, p.log()[mark:]


def error_lines(text: str) -> list[str]:
    return [re.sub(r"^.*? \[\d+\] ", "", line) for line in text.splitlines() if re.search(r"\] (ERROR|FATAL) ", line)]


@BOTH
def test_invalid_tls_setting_at_start_and_on_reload(pooler_factory, certs, binary):
    """The frame of a TLS setup error, the same in both: the reason on an ERROR line, then FATAL at start or
    ERROR on RELOAD (which keeps the old configuration)."""
    start, reload = start_and_reload_with(pooler_factory, certs, binary, "client_tls_ciphers", "bogus")
    assert error_lines(start) == ["ERROR invalid client_tls_ciphers: bogus", "FATAL TLS setup failed"]
    assert error_lines(reload) == ["ERROR invalid client_tls_ciphers: bogus",
                                   "ERROR TLS configuration could not be reloaded, keeping old configuration"]


@BOTH
def test_invalid_tls13_ciphers(pooler_factory, certs, binary):
    # (PgBouncer 1.24.1 also drops its TLS settings when a RELOAD fails on an unknown parameter)
    start, reload = start_and_reload_with(pooler_factory, certs, binary, "client_tls13_ciphers", "TLS_NO_SUCH_SUITE",
                                          keeps_tls=binary == "py")
    if binary == "py":
        # PgBouncer 1.25's words, in the frame above (1.25 added the setting)
        assert error_lines(start) == ["ERROR TLS setup failed: failed to set the TLSv1.3 cipher suites",
                                      "FATAL TLS setup failed"]
        assert error_lines(reload) == ["ERROR TLS setup failed: failed to set the TLSv1.3 cipher suites",
                                       "ERROR TLS configuration could not be reloaded, keeping old configuration"]
    else:
        # PgBouncer 1.24.1 does not know client_tls13_ciphers at all: any value fails the configuration file
        assert error_lines(start)[0] == "ERROR unknown parameter: pgbouncer/client_tls13_ciphers"
        assert error_lines(reload)[0] == "ERROR unknown parameter: pgbouncer/client_tls13_ciphers"


# --- item 14: message types the pooler does not know ---
def unknown_type_answer(p, t: bytes) -> list:
    c = rawpg.Conn(p.host, p.port)
    c.login("md5user", "testdb", "md5pass")
    c.simple_query("select 1")
    c.send(rawpg.msg(t, b"payload\0"))
    out = []
    while (m := c.read_msg()) is not None:
        f = rawpg.error_fields(m[1]) if m[0] == b"E" else {}
        out.append((m[0], f.get("S"), f.get("C"), f.get("M")))
    c.close()
    return out


def backend_pids_when_idle(p) -> set[int]:
    def idle():
        servers = p.admin_dicts("SHOW SERVERS")
        return all(r["state"] == "idle" for r in servers) and {r["remote_pid"] for r in servers}
    return wait_until(idle, message="every server idle")


@BOTH
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_unknown_message_type_is_answered_by_the_pooler(pooler_factory, pg, binary, pool_mode):
    p = pooler_factory.start({"pool_mode": pool_mode}, binary=binary)
    mark = len(pg.log())
    with p.connect(autocommit=True) as first:
        first.execute("select 1")
    before = backend_pids_when_idle(p)
    for t in (b"p", b"Z", b"\xff"):
        assert unknown_type_answer(p, t) == [(b"E", "FATAL", "08P01", "unknown pkt")]
    # type 0 reads as the start of a startup packet: PgBouncer names the header
    assert unknown_type_answer(p, b"\0") == [(b"E", "FATAL", "08P01", "bad packet header: '000000000c706179'")]
    p.wait_for_log(r"ERROR C-\S+ testdb/md5user@\S+ unknown pkt from client: 112/0x70")
    p.wait_for_log(r"LOG C-\S+ testdb/md5user@\S+ closing because: unknown pkt \(age=")
    p.wait_for_log(r"WARNING C-\S+ testdb/md5user@\S+ pooler error: unknown pkt")
    p.wait_for_log(r"LOG C-\S+ testdb/md5user@\S+ closing because: bad packet header: '000000000c706179' \(age=")
    # nothing reached PostgreSQL: no pooled backend was lost
    assert before <= backend_pids_when_idle(p)
    assert "invalid frontend message type" not in pg.log(mark) and not re.search(r"S-\S+ .*closing", p.log())


@BOTH
def test_unknown_message_type_while_waiting_for_a_server(pooler_factory, binary):
    """A client with no server refused at once: it is not queued, and no server is taken or opened for it."""
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1}, binary=binary)
    holder = p.connect(autocommit=True)
    holder.execute("begin")
    c = rawpg.Conn(p.host, p.port)
    c.login("md5user", "testdb", "md5pass")
    c.send(rawpg.msg(b"p", b"x\0"))
    assert c.read_until_error_or_eof() == "unknown pkt"
    assert c.is_closed(5)
    assert len(p.admin_dicts("SHOW SERVERS")) == 1
    holder.execute("commit")


@BOTH
@pytest.mark.parametrize("batch", [
    rawpg.msg(b"P", b"\0sel ect\0\0\0") + rawpg.msg(b"H"),                # an error, then PostgreSQL skips to a Sync
    rawpg.msg(b"H", b"x" * 10) + rawpg.msg(b"F", b"\0\0\0\1\0\0\0\0\0\0"),    # a malformed Flush, then a FunctionCall
], ids=["parse-error", "flush-garbage"])
def test_a_client_gone_in_the_middle_of_a_batch_takes_its_server_along(pooler_factory, batch, binary):
    """Found while refusing unknown types: a server whose client left after extended-protocol messages without
    their Sync was given to the next client, whose query then hung (PostgreSQL still skipping to a Sync)."""
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1}, binary=binary)
    c = rawpg.Conn(p.host, p.port)
    c.login("md5user", "testdb", "md5pass")
    c.send(batch)
    assert c.read_msg()[0] == b"E"
    c.reset()
    p.wait_for_log(r"LOG S-\S+ testdb/md5user@\S+ closing because: client disconnect while server was not ready")
    other = rawpg.Conn(p.host, p.port, timeout=5)          # a socket timeout, not a hang, if the server is stuck
    other.login("md5user", "testdb", "md5pass")
    assert [m[0] for m in other.simple_query("select 1")] == [b"T", b"D", b"C", b"Z"]


# --- the same startup packet again (pgbouncer-py keeps what a packet's checks gave, per config) ---
def login_and_show_one(p, setting: str, **params) -> str:
    """`show <setting>` after a raw login with these startup parameters, or the login error's message."""
    c = rawpg.Conn(p.host, p.port)
    try:
        c.login("md5user", "testdb", "md5pass", **params)
    except AssertionError as e:
        return re.search(r"'M': \"?'?(.*?)'?\"?}", str(e)).group(1)
    try:
        return [m[1][6:].decode() for m in c.simple_query(f"show {setting}") if m[0] == b"D"][0]
    finally:
        c.close()


@BOTH
def test_the_same_startup_packet_again_and_after_reload(pooler_factory, binary):
    """Logins with one startup packet end the same each time (a tracked parameter's value; an ignored parameter's
    DEBUG line at every login); after a RELOAD a packet is judged by the new settings (those RELOAD changes)."""
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1, "verbose": 1,
                              "track_extra_parameters": "IntervalStyle, search_path",
                              "ignore_startup_parameters": "extra_float_digits"}, binary=binary)
    assert [login_and_show_one(p, "intervalstyle", IntervalStyle="sql_standard") for _ in range(3)] == \
        ["sql_standard"] * 3
    assert login_and_show_one(p, "intervalstyle") == "postgres"
    # (search_path is not reported by PostgreSQL 15: only whether the login is let in is compared here)
    assert [login_and_show_one(p, "server_version_num", search_path="s1")[:2] for _ in range(2)] == ["15", "15"]
    mark = p.log_mark()
    assert [login_and_show_one(p, "extra_float_digits", extra_float_digits="2") for _ in range(2)] == ["1", "1"]
    wait_until(lambda: len(re.findall(r"DEBUG C-\S+ \S+ ignoring startup parameter: extra_float_digits=2",
                                      p.log()[mark:])) == 2, message="the ignored parameter logged at each login")
    # RELOAD: ignore_startup_parameters is reloaded, track_extra_parameters is not (on both)
    p.ini_path.write_text(re.sub(r"(?m)^(ignore_startup_parameters|track_extra_parameters)\s*=.*$", r"\1 =",
                                 p.ini_path.read_text()))
    p.admin("RELOAD")
    assert login_and_show_one(p, "extra_float_digits", extra_float_digits="2") == \
        "unsupported startup parameter: extra_float_digits"
    assert login_and_show_one(p, "server_version_num", search_path="s1")[:2] == "15"
