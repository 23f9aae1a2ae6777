"""pgbouncer_py.prepare: message codecs, and the client->server rewriting and server->client response queue
driven with in-memory client/server objects."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from pgbouncer_py import prepare
from pgbouncer_py.net.sbuf import DONE
from pgbouncer_py.objects import registry
from pgbouncer_py.stats import Stats


def _msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def P(name, sql="select 1"):
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0\0\0")


def B(name, portal=""):
    return _msg(b"B", portal.encode() + b"\0" + name.encode() + b"\0\0\0\0\0\0\0")


def D(kind, name):
    return _msg(b"D", kind.encode() + name.encode() + b"\0")


def C(kind, name):
    return _msg(b"C", kind.encode() + name.encode() + b"\0")


E, S, H = _msg(b"E", b"\0\0\0\0\0"), _msg(b"S"), _msg(b"H")
R = {t: _msg(t.encode()) for t in "123n"}
R["C"] = _msg(b"C", b"SELECT 1\0")
R["E"] = _msg(b"E", b"SERROR\0M boom\0\0")
R["Z"] = _msg(b"Z", b"I")
R["D"] = _msg(b"D", b"\0\0")


def resp(types: str) -> bytes:
    return b"".join(R[t] for t in types)


# --- codecs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    (b"s1\0select 1\0\0\0", (b"s1", b"select 1\0\0\0")),
    (b"\0select $1\0\0\1\0\0\0\x17", (b"", b"select $1\0\0\1\0\0\0\x17")),
])
def test_parse_parse(body, expected):
    assert prepare.parse_parse(body) == expected


@pytest.mark.parametrize(("body", "expected"), [
    (b"\0s1\0\0\0\0\0\0\0", (b"", b"s1", 4)),
    (b"p\0\0rest", (b"p", b"", 3)),
])
def test_parse_bind(body, expected):
    assert prepare.parse_bind(body) == expected


@pytest.mark.parametrize(("body", "expected"), [(b"Sx\0", (83, b"x")), (b"P\0", (80, b""))])
def test_parse_target(body, expected):
    assert prepare.parse_target(body) == expected


@pytest.mark.parametrize(("func", "body"), [
    (prepare.parse_parse, b"name-without-end"),
    (prepare.parse_parse, b"n\0select 1\0"),          # parameter count missing
    (prepare.parse_bind, b"portal\0stmt"),
    (prepare.parse_target, b"Xname\0"),
    (prepare.parse_target, b"S"),
])
def test_broken_packets(func, body):
    with pytest.raises(prepare.PacketError, match="broken Parse/Bind/Describe/Close packet"):
        func(body)


@pytest.mark.parametrize(("built", "expected"), [
    (prepare.bind_message(b"", b"PGBOUNCER_3", b"\0\0\0\0\0\0"), _msg(b"B", b"\0PGBOUNCER_3\0\0\0\0\0\0\0")),
    (prepare.target_message(b"D", 83, b"PGBOUNCER_9"), _msg(b"D", b"SPGBOUNCER_9\0")),
    (prepare.close_message(b"PGBOUNCER_1"), _msg(b"C", b"SPGBOUNCER_1\0")),
    (prepare.Statement(5, b"select 1\0\0\0").parse_message(), _msg(b"P", b"PGBOUNCER_5\0select 1\0\0\0")),
])
def test_builders(built, expected):
    assert built == expected


# --- the engine with in-memory ends -----------------------------------------------------------------------

class Wire:
    def __init__(self):
        self.data = b""

    def write(self, b):
        self.data += bytes(b)

    def take(self) -> bytes:
        d, self.data = self.data, b""
        return d


def summary(data: bytes, names: dict) -> str:
    """'P:S1 B:S1 E S' for server-bound bytes (PGBOUNCER_n renamed S1, S2.. by first appearance)."""
    out, pos = [], 0
    while pos < len(data):
        t = chr(data[pos])
        n = struct.unpack("!I", data[pos + 1:pos + 5])[0]
        body = data[pos + 5:pos + 1 + n]
        pos += 1 + n
        name = None
        if t == "P":
            name = body.split(b"\0")[0]
        elif t == "B":
            name = body.split(b"\0")[1]
        elif t in "DC":
            name = body[1:].split(b"\0")[0]
        if name and name.startswith(b"PGBOUNCER_"):
            name = names.setdefault(name, f"S{len(names) + 1}")
        elif name is not None:
            name = name.decode() or "-"
        out.append(t if name is None else f"{t}:{name}")
    return " ".join(out)


def types_of(data: bytes) -> str:
    out, pos = "", 0
    while pos < len(data):
        out += chr(data[pos])
        pos += 1 + struct.unpack("!I", data[pos + 1:pos + 5])[0]
    return out


class FakeServer:
    def __init__(self, stats):
        self.transport = Wire()
        self.prepared = {}
        self.psq = None
        self.expect_rfq = 0
        self.tail = b""
        self.tail_need = 0
        self.skip = 0
        self.query_start = self.xact_start = 0.0
        self.params = {}
        self.pool = SimpleNamespace(db=SimpleNamespace(stats=stats))
        self.released = 0

    def relay_at(self, data, pos, end):
        if self.expect_rfq > 0:
            self.expect_rfq -= 1
        return DONE if self.expect_rfq == 0 and not self.psq else end    # as Server.relay_at decides


class FakeClient:
    def __init__(self, stats):
        self.transport = Wire()
        self.prepared = {}
        self.ps = prepare.PS_ON
        self.tail = b""
        self.tail_need = 0
        self.skip = 0
        self.pool = SimpleNamespace(db=SimpleNamespace(stats=stats))
        self._max_packet = 1 << 30
        self.no_pqexec = False
        self.vars = {}
        self.pool_mode = "transaction"
        self.closed_with = None

    def prefix(self):
        return "C-test: "

    def close(self, reason, send_error=False):
        self.closed_with = reason

    def close_requested(self):
        self.close("client close request")


@pytest.fixture
def ends(monkeypatch):
    monkeypatch.setattr(registry, "cfg", SimpleNamespace(max_prepared_statements=2), raising=False)
    stats = Stats()
    server, client = FakeServer(stats), FakeClient(stats)
    server.link, client.link = client, server
    return client, server, stats


def _run(client, server, steps):
    names: dict = {}
    for kind, data, expect in steps:
        if kind == "c":
            if client.ps == prepare.PS_ACTIVE:
                prepare.client_data(client, data, server)
            else:
                prepare.handoff(client, server, data, 0)
            got = (summary(server.transport.take(), names), types_of(client.transport.take()))
        else:
            if prepare.server_data(server, data, client) == DONE:
                server.released += 1             # the caller (Server) releases it
            got = ("", types_of(client.transport.take()))
        assert got == expect, (kind, data)


@pytest.mark.parametrize(("preload", "steps", "lru_after", "client_after"), [
    # a new named statement: rewritten Parse, everything answered by the server
    ([], [("c", P("a") + B("a") + E + S, ("P:S1 B:S1 E S", "")), ("s", resp("12DCZ"), ("", "12DCZ"))],
     1, ["a"]),
    # the server has it: Parse not sent, ParseComplete synthesised at once (nothing precedes it)
    (["a"], [("c", P("a") + B("a") + E + S, ("B:S1 E S", "1")), ("s", resp("2DCZ"), ("", "2DCZ"))],
     1, ["a"]),
    # synthesised ParseComplete waits for the answers to the requests before it
    (["b"], [("c", P("a") + B("a") + E + P("b") + B("b") + E + S, ("P:S1 B:S1 E B:S2 E S", "")),
             ("s", resp("12DC"), ("", "12DC1")), ("s", resp("2DCZ"), ("", "2DCZ"))],
     2, ["a", "b"]),
    # eviction at the limit (2): Close for the oldest goes first, its CloseComplete is hidden
    (["x", "y"], [("c", P("a") + S, ("C:S1 P:S2 S", "")), ("s", resp("31Z"), ("", "1Z"))], 2, ["a"]),
    # an error skips to Sync: the skipped synthesised ParseComplete is not sent and its name is dropped
    (["b"], [("c", P("a") + B("a") + E + P("b") + S, ("P:S1 B:S1 E S", "")), ("s", resp("1EZ"), ("", "1EZ"))],
     2, ["a"]),
    # a Parse that fails leaves neither a client name nor a server statement
    ([], [("c", P("a") + B("a") + E + S, ("P:S1 B:S1 E S", "")), ("s", resp("EZ"), ("", "EZ"))], 0, []),
    # unnamed statements pass through untouched
    ([], [("c", P("") + B("") + D("P", "") + E + S, ("P:- B:- D:- E S", "")), ("s", resp("12nCZ"), ("", "12nCZ"))],
     0, []),
    # Flush without Sync: synthesised ParseComplete right away
    (["a"], [("c", P("a") + H, ("H", "1"))], 1, ["a"]),
])
def test_engine(ends, preload, steps, lru_after, client_after):
    client, server, stats = ends
    keep = []
    for name in preload:
        st = prepare.statements.get(f"{name}-sql".encode() + b"\0\0\0")
        keep.append(st)
        server.prepared[st.id] = st
    fixed = []           # the statements' query text is "<name>-sql", so preloaded ones match
    for kind, data, expect in steps:
        if kind == "c":
            data = _with_sql(data)
        fixed.append((kind, data, expect))
    _run(client, server, fixed)
    assert len(server.prepared) == lru_after
    assert sorted(n.decode() for n in client.prepared) == client_after
    assert client.closed_with is None


def _with_sql(data: bytes) -> bytes:
    """Give every named Parse the query text '<name>-sql'."""
    out, pos = b"", 0
    while pos < len(data):
        n = struct.unpack("!I", data[pos + 1:pos + 5])[0]
        m = data[pos:pos + 1 + n]
        if m[:1] == b"P" and m[5:6] != b"\0":
            name = m[5:].split(b"\0")[0].decode()
            m = P(name, f"{name}-sql")
        out += m
        pos += 1 + n
    return out


def test_close_is_answered_by_the_pooler(ends):
    client, server, _ = ends
    _run(client, server, [("c", _with_sql(P("a") + S), ("P:S1 S", "")), ("s", resp("1Z"), ("", "1Z"))])
    assert server.released == 1
    _run(client, server, [("c", C("S", "a") + S, ("S", "3")), ("s", resp("Z"), ("", "Z"))])
    assert client.prepared == {} and len(server.prepared) == 1


def test_server_is_not_released_while_answers_are_outstanding(ends):
    client, server, _ = ends
    _run(client, server, [("c", S + _with_sql(P("a")) + H, ("S P:S1 H", "")), ("s", resp("Z"), ("", "Z"))])
    assert server.released == 0 and server.psq
    _run(client, server, [("s", resp("1"), ("", "1"))])
    assert server.released == 0


@pytest.mark.parametrize(("msgs", "error"), [
    (P("a") + P("a"), "prepared statement name is already in use"),
    (B("nope") + E + S, "prepared statement did not exist"),
    (D("S", "nope") + S, "prepared statement did not exist"),
    (_msg(b"D", b"Q\0") + S, "broken Parse/Bind/Describe/Close packet"),
])
def test_client_errors_close_the_client(ends, msgs, error):
    client, server, _ = ends
    prepare.handoff(client, server, msgs, 0)
    assert client.closed_with == error


def test_deallocate_all_clears_both_maps(ends):
    client, server, _ = ends
    _run(client, server, [("c", _with_sql(P("a")) + S, ("P:S1 S", "")), ("s", resp("1Z"), ("", "1Z"))])
    prepare.command_complete_hot(server, client, _msg(b"C", b"DEALLOCATE ALL\0"), 0, 20)
    assert client.prepared == {} and server.prepared == {}


def test_counters(ends):
    client, server, stats = ends
    _run(client, server, [("c", _with_sql(P("a") + B("a") + E + P("b") + B("b") + B("a") + S),
                           ("P:S1 B:S1 E P:S2 B:S2 B:S1 S", ""))])
    assert (stats.client_parse_count, stats.server_parse_count, stats.bind_count) == (2, 2, 3)


def test_client_names_are_made_on_first_use():
    """A client starts with the shared read-only NO_STATEMENTS; its own dict is made when it names one, and
    DEALLOCATE ALL / DISCARD ALL gives the shared one back."""
    from pgbouncer_py.statements import NO_STATEMENTS, client_names
    client = SimpleNamespace(prepared=NO_STATEMENTS)
    assert not NO_STATEMENTS and "x" not in client.prepared
    with pytest.raises(TypeError):
        NO_STATEMENTS[b"x"] = None
    names = client_names(client)
    assert names == {} and names is not NO_STATEMENTS and client.prepared is names
    names[b"s1"] = "st"
    assert client_names(client) is names
    prepare.deallocate_all(None, client)
    assert client.prepared is NO_STATEMENTS
