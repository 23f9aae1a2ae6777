"""What an authenticated client can make reach PostgreSQL, and what the console echoes back (issue 17, items 14
and 15), with a raw socket: a frontend message type the pooler does not know is answered by the pooler and never
forwarded (PostgreSQL would end the pooled backend: 300 such clients used to kill 300 backends), and console
text stops at the first NUL, so no raw NUL ever lands in an ErrorResponse field."""

from __future__ import annotations

import re
import struct

import pytest
from rawpg import Conn, alive_and_serving, error_fields, msg, query

KNOWN = frozenset(b"QFPBDECSHdcfX")      # what PgBouncer 1.24.1 takes after login (measured)


def login(p, db="testdb", user="md5user", password="md5pass") -> Conn:
    c = Conn(p.host, p.port)
    c.login(user, db, password)
    return c


def everything(c: Conn) -> list[tuple[bytes, bytes]]:
    out = []
    while (m := c.read_msg()) is not None:
        out.append(m)
    return out


def strict_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse fields, failing on anything a stray NUL would leave behind (an unknown field code)."""
    assert body.endswith(b"\0\0")
    fields = {}
    for part in body[:-1].split(b"\0")[:-1]:
        assert part and chr(part[0]) in "SVCMDHP", f"garbage field {part!r} in {body!r}"
        fields[chr(part[0])] = part[1:].decode()
    return fields


def backends(p) -> set[int]:
    return {r["remote_pid"] for r in p.admin_dicts("SHOW SERVERS")}


@pytest.fixture
def transaction_pooler(pooler_factory):
    return pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 1, "max_prepared_statements": 10})


def test_every_unknown_type_is_refused_and_nothing_reaches_postgres(transaction_pooler, pg):
    p = transaction_pooler
    mark = len(pg.log())
    login(p).simple_query("select 1")
    before = backends(p)
    for t in sorted(set(range(1, 256)) - KNOWN):
        c = login(p)
        c.send(msg(bytes((t,)), b"payload\0"))
        got = everything(c)
        assert [(m[0], strict_fields(m[1])["M"]) for m in got] == [(b"E", "unknown pkt")], t
    assert backends(p) == before                          # the pooled backend lived through all 242
    assert "invalid frontend message type" not in pg.log(mark)
    assert len(re.findall(r"ERROR C-\S+ \S+ unknown pkt from client: \d+/0x[0-9a-f]+", p.log())) == 242
    alive_and_serving(p)


def test_unknown_type_after_a_query_in_the_same_packet(transaction_pooler):
    """The query before it goes out (PgBouncer's order); the client is closed, and with it its unfinished server."""
    p = transaction_pooler
    c = login(p)
    c.send(query("select 1") + msg(b"Z", b"I"))
    assert [(m[0], error_fields(m[1])["M"]) for m in everything(c)] == [(b"E", "unknown pkt")]
    p.wait_for_log(r"closing because: client disconnect while server was not ready")
    alive_and_serving(p)


def test_unknown_type_while_statements_are_tracked(transaction_pooler, pg):
    """A named Parse without Sync keeps the server linked with prepared statements tracked (prepare.client_data
    walks the messages then): the unknown type is refused there too."""
    p = transaction_pooler
    mark = len(pg.log())
    c = login(p)
    parse = msg(b"P", b"s1\0select 1\0\0\0")
    c.send(parse + msg(b"H"))
    assert c.read_msg() == (b"1", b"")                    # ParseComplete: the link period is tracked now
    c.send(msg(b"\x7f", b"x"))
    assert [(m[0], error_fields(m[1])["M"]) for m in everything(c)] == [(b"E", "unknown pkt")]
    assert "invalid frontend message type" not in pg.log(mark)
    alive_and_serving(p)


def test_unknown_type_from_a_queued_client_takes_no_server(transaction_pooler):
    p = transaction_pooler
    holder = login(p)
    holder.send(query("begin"))
    holder.simple_query("select 1")
    queued = login(p)
    queued.send(msg(b"A", b"\0\0\0\0"))
    assert [(m[0], error_fields(m[1])["M"]) for m in everything(queued)] == [(b"E", "unknown pkt")]
    assert len(backends(p)) == 1 and not p.admin_dicts("SHOW POOLS")[-1]["cl_waiting"]
    holder.simple_query("commit")


def test_type_zero_is_a_bad_header(transaction_pooler):
    c = login(transaction_pooler)
    c.send(b"\0\0\0\0\x09abcd")
    assert [(m[0], error_fields(m[1])["M"]) for m in everything(c)] == [(b"E", "bad packet header: '0000000009616263'")]


# --- the console ---
def console(p) -> Conn:
    return login(p, "pgbouncer", "pgbouncer", "adminpass")


@pytest.mark.parametrize(("sql", "message"), [
    (b"FOO\0BAR\0", "invalid command 'FOO', use SHOW HELP;"),
    (b"SET x = '\0' \0", "invalid command 'SET x = '', use SHOW HELP;"),
    (b"KILL_CLIENT 9\0 1\0", "client not found"),
    (b"\0SHOW VERSION\0", None),                          # empty text: the console's empty-query answer
])
def test_console_error_fields_carry_no_nul(pooler_factory, sql, message):
    p = pooler_factory.start()
    c = console(p)
    c.send(msg(b"Q", sql))
    got = []
    while (m := c.read_msg()) is not None:
        got.append(m)
        if m[0] == b"Z":
            break
    errors = [strict_fields(m[1]) for m in got if m[0] == b"E"]
    assert [e["M"] for e in errors] == ([message] if message else [])
    assert got[-1] == (b"Z", b"I")                        # the session goes on
    assert c.simple_query("SHOW STATE")[-1] == (b"Z", b"I")


def test_console_query_without_nul_is_incomplete(pooler_factory):
    p = pooler_factory.start()
    c = console(p)
    c.send(msg(b"Q", b"SHOW VERSION"))
    got = everything(c)
    assert [(m[0], strict_fields(m[1])["S"], strict_fields(m[1])["M"]) for m in got] == \
        [(b"E", "FATAL", "incomplete query")]


def test_console_runs_the_text_before_a_nul(pooler_factory):
    p = pooler_factory.start()
    c = console(p)
    out = c.simple_query("SHOW VERSION\0; SHUTDOWN")
    rows = [m[1] for m in out if m[0] == b"D"]
    assert len(rows) == 1 and b"PgBouncer" in rows[0]
    assert p.is_running()
    assert struct.unpack("!H", rows[0][:2]) == (1,)
