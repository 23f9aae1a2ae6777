"""Security scenarios against real PostgreSQL: console access rules, no user enumeration, passwords kept out of
logs and SHOW output, hba/TLS requirements that a second startup packet, an SSLRequest trick or a forged
cancel request cannot bypass."""

from __future__ import annotations

import struct
import threading

import psycopg
import psycopg2
import pytest
from pgutil import STATS_PASSWORD, STATS_USER
from rawpg import Conn, alive_and_serving, msg, startup


@pytest.mark.parametrize("command", ["PAUSE", "RESUME", "DISABLE testdb", "KILL testdb", "RELOAD",
                                     "SET verbose = 1", "SHUTDOWN", "SUSPEND", "RECONNECT"])
def test_stats_user_cannot_run_admin_commands(pooler, command):
    conn = psycopg2.connect(pooler.dsn("pgbouncer", STATS_USER, STATS_PASSWORD))
    conn.autocommit = True
    with conn.cursor() as cur:
        with pytest.raises(psycopg2.Error, match="admin access needed"):
            cur.execute(command)
        cur.execute("SHOW POOLS")           # read-only commands stay available
        assert cur.fetchall()
    conn.close()
    alive_and_serving(pooler)


def test_ordinary_user_cannot_reach_console(pooler):
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        psycopg.connect(pooler.dsn("pgbouncer", "md5user", "md5pass"))
    # not over the unix socket either (where the pooler's own OS user gets in as admin)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pooler.dsn("pgbouncer", "md5user", "md5pass", unix=True))


def _login_reply(p, user: str, password: str) -> tuple[int, str | None]:
    """(auth request code, error text) of a cleartext-style attempt over a raw socket."""
    c = Conn(p.host, p.port)
    c.send(startup(user, "testdb"))
    t, body = c.read_msg()
    if t == b"E":
        return -1, c.read_until_error_or_eof()
    code = struct.unpack("!I", body[:4])[0]
    if code == 5:
        c.send(msg(b"p", b"md5" + b"0" * 32 + b"\0"))
    elif code == 10:
        c.send(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", 20) + b"n,,n=,r=abcdefghijkl"))
        m = c.read_msg()
        if m is not None and m[0] == b"R":
            c.send(msg(b"p", b"c=biws,r=bogus,p=AAAA"))
    else:
        c.send(msg(b"p", password.encode() + b"\0"))
    err = c.read_until_error_or_eof()
    c.close()
    return code, err


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
def test_no_user_enumeration(pooler_factory, auth_type):
    p = pooler_factory.start({"auth_type": auth_type})
    known = _login_reply(p, "scramuser", "wrong")
    unknown = _login_reply(p, "nosuchuser", "wrong")
    assert known[0] == unknown[0], "the auth method offered tells which users exist"
    assert known[1] and unknown[1]
    assert known[1].replace("scramuser", "X") == unknown[1].replace("nosuchuser", "X")
    alive_and_serving(p)


def test_passwords_never_in_logs_or_show(pooler_factory, pg):
    dbs = {"testdb": pg.server_connstr("testdb"),
           "withpw": pg.server_connstr("testdb", user="md5user", password="md5pass")}
    p = pooler_factory.start({"verbose": 2, "log_connections": 1}, databases=dbs)
    for user, pw in (("md5user", "md5pass"), ("scramuser", "scrampass")):
        with psycopg.connect(p.dsn("testdb", user, pw), autocommit=True) as c:
            c.execute("select 1")
    with psycopg.connect(p.dsn("withpw", "scramuser", "scrampass"), autocommit=True) as c:
        c.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn("testdb", "md5user", "Wr0ngSecretPw"))
    shown = []
    for cmd in ("SHOW DATABASES", "SHOW USERS", "SHOW CONFIG", "SHOW CLIENTS", "SHOW SERVERS", "SHOW POOLS",
                "SHOW PEERS", "SHOW STATE"):
        shown.append(repr(p.admin(cmd)))
    text = p.log() + "\n".join(shown)
    for secret in ("md5pass", "scrampass", "Wr0ngSecretPw", "adminpass", "statspass"):
        assert secret not in text, f"{secret} leaked"


def test_second_startup_packet_during_login_is_refused(pooler):
    """A second startup packet (another user) instead of the password answer: read as a message whose type
    byte is 0 and whose length is the next four bytes; once that much has arrived the login is refused."""
    c = Conn(pooler.host, pooler.port)
    c.send(startup("md5user", "testdb"))
    t, _ = c.read_msg()
    assert t == b"R"
    second = startup("postgres", "testdb")
    bogus_len = struct.unpack("!I", second[1:5])[0]
    c.send(second + b"\0" * (bogus_len + 1 - len(second)))
    reply = _all_until_close(c)
    assert b"E" in reply[:1] and b"R\0\0\0\x08\0\0\0\0" not in reply, reply
    alive_and_serving(pooler)


def _all_until_close(c: Conn) -> bytes:
    c.sock.settimeout(10)
    data = c.buf
    while True:
        chunk = c.sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_hostssl_rule_not_bypassed_by_sslrequest_without_tls(pooler_factory):
    """TLS is not configured: an SSLRequest gets 'N', and the plaintext login that follows still does not
    match a hostssl rule."""
    p = pooler_factory.start(hba="hostssl all all 0.0.0.0/0 md5\n")
    c = Conn(p.host, p.port)
    c.send(struct.pack("!II", 8, 80877103))
    assert c.read_bytes(1) == b"N"
    c.send(startup("md5user", "testdb"))
    m = c.read_msg()
    assert m is not None and m[0] == b"E"
    assert c.is_closed()
    # and two SSLRequests in a row do not confuse it either
    c = Conn(p.host, p.port)
    c.send(struct.pack("!II", 8, 80877103) * 2)
    assert c.read_bytes(1) == b"N"
    c.send(startup("md5user", "testdb"))
    reply = _all_until_close(c)
    assert b"login rejected" in reply and b"R\0\0\0" not in reply, reply
    assert p.is_running()


def test_forged_cancel_requests_do_not_cancel_others(pooler):
    victim = pooler.connect(autocommit=True)
    result = {}

    def run():
        try:
            result["v"] = victim.execute("select pg_sleep(1.5), 'done'").fetchone()[1]
        except psycopg.Error as e:
            result["e"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    for pid, key in ((0, 0), (1, 1), (0xFFFFFFFF, 0xFFFFFFFF), (12345, 67890)):
        c = Conn(pooler.host, pooler.port)
        c.send(struct.pack("!IIII", 16, 80877102, pid, key))
        assert c.is_closed()
    c = Conn(pooler.host, pooler.port)          # cancel request with a lying length
    c.send(struct.pack("!III", 12, 80877102, 1))
    assert c.is_closed()
    t.join(15)
    assert result.get("v") == "done", result
    alive_and_serving(pooler)
