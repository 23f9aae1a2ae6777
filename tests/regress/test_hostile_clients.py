"""Hostile clients over real sockets against pgbouncer-py in front of real PostgreSQL: malformed, truncated and
oversized packets, lying lengths, stalled logins, clients that never read, connection storms and RST closes.
Each scenario checks that only the offending connection is closed and the pooler keeps serving."""

from __future__ import annotations

import socket
import struct
import threading
import time

import psycopg
import pytest
from pgutil import wait_until
from rawpg import Conn, alive_and_serving, msg, query, rss_kb, startup

BAD_STARTUP = {
    "length below 8": (struct.pack("!I", 4), "bad packet header"),
    "length over 10000": (struct.pack("!II", 20000, 196608), "bad packet header"),
    "protocol 2": (struct.pack("!II", 8, 2 << 16), "old V2 protocol not supported"),
    "unknown protocol": (struct.pack("!II", 8, 7 << 16), "unsupported protocol version"),
    "no terminator": (struct.pack("!II", 13, 196608) + b"user\0", "expected terminator"),
    "no user": (struct.pack("!II", 9, 196608) + b"\0", "no username supplied"),
    "empty user": (struct.pack("!II", 14, 196608) + b"user\0\0", "no username supplied"),
}


@pytest.fixture
def hp(pooler_factory):
    return pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 2})


@pytest.mark.parametrize("case", sorted(BAD_STARTUP))
def test_malformed_startup_packet_gets_error_and_close(hp, case):
    data, text = BAD_STARTUP[case]
    c = Conn(hp.host, hp.port)
    c.send(data)
    err = c.read_until_error_or_eof()
    assert err is not None and text in err, err
    assert c.is_closed()
    alive_and_serving(hp)


def test_truncated_startup_then_close_and_garbage_storm(hp):
    """Half a startup packet then EOF, random garbage, an empty connection: many of each, quickly."""
    for i in range(60):
        c = Conn(hp.host, hp.port)
        if i % 3 == 0:
            c.send(startup("md5user", "testdb")[:i % 17 + 1])
        elif i % 3 == 1:
            c.send(bytes((i * 37 + k * 11) % 256 for k in range(200)))
        c.close() if i % 2 else c.reset()
    alive_and_serving(hp)
    wait_until(lambda: int(hp.admin_dicts("SHOW LISTS")[[r["list"] for r in hp.admin_dicts("SHOW LISTS")]
                                                        .index("used_clients")]["items"]) <= 2,
               message="client slots released")


@pytest.mark.parametrize(("name", "packet", "text"), [
    ("length 2", b"Q" + struct.pack("!I", 2), "bad packet header"),
    ("over max_packet_size", b"Q" + struct.pack("!I", 1_000_000) + b"select 1", "max_packet_size exceeded"),
])
def test_lying_lengths_after_login(pooler_factory, name, packet, text):
    p = pooler_factory.start({"pool_mode": "session", "max_packet_size": 65536})
    bystander = p.connect(autocommit=True)
    c = Conn(p.host, p.port)
    c.login("md5user", "testdb", "md5pass")
    c.simple_query("select 1")           # linked to a server
    c.send(packet)
    err = c.read_until_error_or_eof()
    assert err is not None and text in err, err
    assert c.is_closed()
    assert bystander.execute("select 2").fetchone()[0] == 2
    alive_and_serving(p)


def test_login_packet_over_max_packet_size(pooler_factory):
    p = pooler_factory.start({"max_packet_size": 2048})
    c = Conn(p.host, p.port)
    c.send(startup("md5user", "testdb"))
    t, body = c.read_msg()
    assert t == b"R"
    c.send(msg(b"p", b"x" * 70000 + b"\0"))
    assert c.read_until_error_or_eof() is not None
    assert c.is_closed()
    alive_and_serving(p)


def test_truncated_query_then_eof_does_not_poison_the_server(pooler_factory):
    """Half a Query reached the server, then the client vanished: that server must not serve anyone again."""
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1})
    for closer in ("close", "reset"):
        c = Conn(p.host, p.port)
        c.login("md5user", "testdb", "md5pass")
        c.simple_query("select 1")
        full = query("select 'poisoned'")
        c.send(full[:9])                 # header + 4 bytes of the text
        time.sleep(0.2)
        getattr(c, closer)()
        with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=5) as other:
            assert other.execute("select 42").fetchone()[0] == 42
    alive_and_serving(p)


def test_client_login_timeout_closes_stalled_startup(pooler_factory):
    p = pooler_factory.start({"client_login_timeout": 1})
    stalled = Conn(p.host, p.port)
    stalled.send(startup("md5user", "testdb")[:6])    # never finishes
    in_auth = Conn(p.host, p.port)
    in_auth.send(startup("md5user", "testdb"))        # asked for a password, never answers
    t0 = time.monotonic()
    assert stalled.is_closed(timeout=15)
    assert in_auth.is_closed(timeout=15)
    assert time.monotonic() - t0 < 14
    p.wait_for_log(r"closing because: client_login_timeout")
    alive_and_serving(p)


def test_client_that_never_reads_stays_bounded(pooler_factory):
    """A client floods queries with big results and never reads: the pooler stops reading from its server
    (backpressure) instead of buffering everything, and other clients keep being served."""
    p = pooler_factory.start({"pool_mode": "session", "default_pool_size": 4})
    alive_and_serving(p)
    before = rss_kb(p.pid)
    c = Conn(p.host, p.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.login("md5user", "testdb", "md5pass")
    flood = query("select repeat('x', 1000) from generate_series(1, 50000)") * 20   # ~1 GB of results
    sender = threading.Thread(target=lambda: _send_quietly(c, flood), daemon=True)
    sender.start()
    time.sleep(2)
    for _ in range(5):
        with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=5) as other:
            assert other.execute("select 7").fetchone()[0] == 7
    grown = rss_kb(p.pid) - before
    assert grown < 64 * 1024, f"pooler RSS grew by {grown} kB for a client that does not read"
    c.reset()
    sender.join(10)
    alive_and_serving(p)


def _send_quietly(c: Conn, data: bytes) -> None:
    try:
        c.sock.settimeout(30)
        c.send(data)
    except OSError:
        pass


def test_thousand_connects_beyond_max_client_conn(pooler_factory):
    p = pooler_factory.start({"max_client_conn": 20})
    held = [p.connect(autocommit=True) for _ in range(5)]
    admitted = 0
    conns = []
    for _ in range(300):
        c = Conn(p.host, p.port)
        c.send(startup("md5user", "testdb"))
        conns.append(c)
    for c in conns:                   # read every answer before closing any (a close frees a slot)
        m = c.read_msg()              # an error, or EOF when the close raced the error
        if m is not None and m[0] == b"R":
            admitted += 1
    for c in conns:
        c.close()
    assert admitted <= 15
    for h in held:
        assert h.execute("select 1").fetchone()[0] == 1
    # connect-and-close storm: open and drop at once, no startup packet at all
    for _ in range(500):
        s = socket.create_connection((p.host, p.port))
        s.close()
    alive_and_serving(p)
    assert p.admin("SHOW VERSION")


def test_rst_during_long_query_frees_the_server(pooler_factory, pg):
    """The client disappears with RST (half-open from the pooler's view) while its query runs: the pooler
    drops the client, does not hand the busy server to anyone else, and serves the next client."""
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1})
    c = Conn(p.host, p.port)
    c.login("md5user", "testdb", "md5pass")
    c.send(query("select pg_sleep(1.5), 'late'"))
    time.sleep(0.3)
    c.reset()
    with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=10) as other:
        assert other.execute("select 'mine'").fetchone()[0] == "mine"
    alive_and_serving(p)


BROKEN_EXTENDED = {
    "parse without terminators": msg(b"P", b"stmt"),
    "parse without type count": msg(b"P", b"s1\0select 1\0"),
    "bind of unknown statement": msg(b"B", b"\0nosuch\0\0\0\0\0\0\0") + msg(b"S"),
    "bind without terminators": msg(b"B", b"portal"),
    "describe bad kind": msg(b"D", b"Xname\0") + msg(b"S"),
    "close without name": msg(b"C", b"S"),
    "execute short": msg(b"E", b"\0") + msg(b"S"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_EXTENDED))
@pytest.mark.parametrize("prepared", [0, 10])
def test_broken_extended_protocol_messages(pooler_factory, case, prepared):
    """Malformed Parse/Bind/Describe/Close/Execute, with and without prepared-statement tracking: the client
    gets an error (from the pooler or PostgreSQL), other clients and the pool are unaffected."""
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1,
                              "max_prepared_statements": prepared})
    c = Conn(p.host, p.port)
    c.login("md5user", "testdb", "md5pass")
    c.send(BROKEN_EXTENDED[case] + msg(b"S"))
    assert c.read_until_error_or_eof() is not None
    c.close()
    with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=10) as other:
        assert other.execute("select 1", prepare=True).fetchone()[0] == 1
    alive_and_serving(p)


@pytest.mark.parametrize("data", [
    msg(b"P", b"x"), msg(b"B", b"\0\0\0"), msg(b"D", b"P"), msg(b"E", b""), msg(b"Z", b""), msg(b"\xff", b"a" * 10),
    msg(b"Q", b"SHOW"), msg(b"Q", b"SET a"), msg(b"Q", b"KILL \"\0"),
])
def test_console_survives_broken_messages(pooler, data):
    c = Conn(pooler.host, pooler.port)
    c.login("pgbouncer", "pgbouncer", "adminpass")
    c.send(data + msg(b"S"))
    c.sock.settimeout(5)
    try:
        c.read_until_error_or_eof()
    except TimeoutError:
        pass            # an incomplete extended-protocol exchange may simply wait for more
    c.close()
    assert pooler.admin("SHOW VERSION")
    alive_and_serving(pooler)


@pytest.mark.parametrize("phase", ["startup", "auth", "work"])
def test_random_framed_messages_over_sockets(pooler_factory, phase):
    """Seeded random messages (valid framing, random types and bodies) at each phase of a connection."""
    import random
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 2, "max_prepared_statements": 5})
    rnd = random.Random(f"pgb-{phase}")
    for _ in range(25):
        c = Conn(p.host, p.port)
        if phase == "auth":
            c.send(startup("md5user", "testdb"))
            assert c.read_msg()[0] == b"R"
        elif phase == "work":
            c.login("md5user", "testdb", "md5pass")
        blob = b"".join(msg(bytes([rnd.choice(b"QPBEDSCFHdcfpX\0\xff")]),
                            bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40))))
                        for _ in range(rnd.randint(1, 6)))
        if phase == "startup":
            blob = struct.pack("!I", len(blob) + 8) + struct.pack("!I", 196608) + blob
        c.sock.settimeout(10)
        try:
            c.send(blob)
            c.sock.recv(65536)
        except (OSError, TimeoutError):
            pass
        c.reset()
    alive_and_serving(p)
    wait_until(lambda: p.admin_dicts("SHOW POOLS")[0] is not None)


def test_tcp_client_reset_before_accept_is_not_taken_for_unix(pooler_factory):
    """Found by the soak run: a TCP client that sent its packet and reset before the pooler looked at the
    connection had no peer name and was classified as a unix-socket client (logged '@unix:', and matched
    against 'local' hba rules). The socket family decides, not the peer name."""
    p = pooler_factory.start()
    for _ in range(150):
        c = Conn(p.host, p.port)
        c.send(struct.pack("!I", 4))
        c.reset()
    alive_and_serving(p)
    wait_until(lambda: p.log().count("bad packet header") >= 10, message="the bad packets were handled")
    assert "@unix:" not in p.log(), [ln for ln in p.log().splitlines() if "@unix:" in ln][:3]
