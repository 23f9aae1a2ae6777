"""proto/scan.py: one table of message streams against the pure-Python walks and the compiled ones (when built)."""

import importlib
import os
import subprocess
import sys

import pytest

from pgbouncer_py.proto import build, scan, sql
from pgbouncer_py.proto.build import msg

PURE = importlib.import_module("pgbouncer_py.proto.scan")
try:
    from pgbouncer_py.proto import _scan as COMPILED
except ImportError:
    COMPILED = None

IMPLS = [pytest.param(("pure", scan._pure_client_scan, scan._pure_server_scan), id="pure"),
         pytest.param(("compiled", getattr(COMPILED, "client_scan", None), getattr(COMPILED, "server_scan", None)),
                      id="compiled", marks=pytest.mark.skipif(COMPILED is None, reason="C scanner not built"))]

PS, NOPQ = scan.CLIENT_PS, scan.CLIENT_NO_PQEXEC
BIG = 2147483647


Q = build.query("SELECT 1")
SYNC = msg(b"S")
PARSE = msg(b"P", b"\0SELECT $1\0\0\0")
PARSE_NAMED = msg(b"P", b"s1\0SELECT 1\0\0\0")
PARSE_EXEC = msg(b"P", b"\0EXECUTE p\0\0\0")
BIND = msg(b"B", b"\0\0\0\0\0\0\0\0")
BIND_NAMED = msg(b"B", b"\0s1\0\0\0\0\0\0\0")
DESC_P = msg(b"D", b"P\0")
DESC_S_NAMED = msg(b"D", b"Ss1\0")
EXEC = msg(b"E", b"\0\0\0\0\0")
CLOSE_P = msg(b"C", b"P\0")
FLUSH = msg(b"H")
TERM = msg(b"X")
COPYDATA = msg(b"d", b"abc")
BATCH = PARSE + BIND + DESC_P + EXEC + SYNC

# (stream, start, max_packet, flags) -> (stop offset, Query/Sync count, work)
CLIENT_CASES = [
    ("one query", Q, 0, BIG, 0, (len(Q), 1, 1)),
    ("two queries", Q + Q, 0, BIG, 0, (2 * len(Q), 2, 1)),
    ("empty", b"", 0, BIG, 0, (0, 0, 0)),
    ("incomplete header", Q[:3], 0, BIG, 0, (0, 0, 0)),
    ("body continues in the next read", Q[:7], 0, BIG, 0, (len(Q), 1, 1)),
    ("start inside the buffer", Q + Q, len(Q), BIG, 0, (2 * len(Q), 1, 1)),
    ("start past the end (skip)", Q, len(Q) + 3, BIG, 0, (len(Q) + 3, 0, 0)),
    ("copy data is not work", COPYDATA * 3, 0, BIG, 0, (3 * len(COPYDATA), 0, 0)),
    ("untracked batch", BATCH, 0, BIG, 0, (len(BATCH), 1, 1)),
    ("tracked unnamed batch: one step", BATCH, 0, BIG, PS, (len(BATCH), 1, 1)),
    ("tracked batch with Flush and Close", PARSE + BIND + FLUSH + CLOSE_P + EXEC + SYNC, 0, BIG, PS,
     (len(PARSE + BIND + FLUSH + CLOSE_P + EXEC + SYNC), 1, 1)),
    ("tracked named Parse stops", Q + PARSE_NAMED + SYNC, 0, BIG, PS, (len(Q), 1, 1)),
    ("tracked named Bind stops", BIND_NAMED + SYNC, 0, BIG, PS, (0, 0, 1)),
    ("tracked named Describe stops", DESC_S_NAMED + SYNC, 0, BIG, PS, (0, 0, 1)),
    ("tracked Parse text that may be EXECUTE stops", PARSE_EXEC + SYNC, 0, BIG, PS, (0, 0, 1)),
    ("tracked incomplete batch stops", PARSE + BIND, 0, BIG, PS, (0, 0, 1)),
    ("tracked batch cut inside a message stops", BATCH[:-3], 0, BIG, PS, (0, 0, 1)),
    ("untracked named Parse passes", PARSE_NAMED + BIND_NAMED + EXEC + SYNC, 0, BIG, 0,
     (len(PARSE_NAMED + BIND_NAMED + EXEC + SYNC), 1, 1)),
    ("Close alone is not work untracked", CLOSE_P, 0, BIG, 0, (len(CLOSE_P), 0, 0)),
    ("Terminate stops", Q + TERM, 0, BIG, 0, (len(Q), 1, 1)),
    ("bad length stops", b"Q\0\0\0\x02", 0, BIG, 0, (0, 0, 0)),
    ("max_packet_size stops", Q + Q, 0, len(Q) - 2, 0, (0, 0, 0)),
    ("disable_pqexec stops at the Query", SYNC + Q, 0, BIG, NOPQ, (len(SYNC), 1, 1)),
    ("tracked Query that may be PREPARE stops", build.query("PREPARE p AS SELECT 1"), 0, BIG, PS, (0, 0, 0)),
    ("tracked Query with a leading blank stops", build.query(" SELECT 1"), 0, BIG, PS, (0, 0, 0)),
    ("untracked Query that may be PREPARE passes", build.query("PREPARE p AS SELECT 1"), 0, BIG, 0,
     (len(build.query("PREPARE p AS SELECT 1")), 1, 1)),
    ("tracked SELECT passes", Q, 0, BIG, PS, (len(Q), 1, 1)),
    ("FunctionCall is work, no Sync", msg(b"F", b"\0\0\0\1"), 0, BIG, 0, (9, 0, 1)),
    # a type the pooler does not know stops the walk (the caller refuses it; it never reaches PostgreSQL)
    ("unknown type stops", Q + msg(b"p", b"x\0") + Q, 0, BIG, 0, (len(Q), 1, 1)),
    ("unknown type stops tracked", Q + msg(b"Z", b"I"), 0, BIG, PS, (len(Q), 1, 1)),
    ("unknown type 0 stops", msg(b"\0"), 0, BIG, 0, (0, 0, 0)),
    ("unknown high type stops", SYNC + msg(b"\xff"), 0, BIG, 0, (len(SYNC), 1, 1)),
    ("Flush and copy messages pass", FLUSH + COPYDATA + msg(b"c") + msg(b"f", b"no\0"), 0, BIG, 0,
     (len(FLUSH + COPYDATA) + 5 + 8, 0, 0)),
    ("incomplete unknown header does not stop early", Q + b"p\0\0", 0, BIG, 0, (len(Q), 1, 1)),
]


def test_client_types_are_what_pgbouncer_forwards():
    """Measured on PgBouncer 1.24.1: these 13 types are handled after login, every other one is 'unknown pkt'."""
    assert scan.CLIENT_TYPES == frozenset(b"QFPBDECSHdcfX")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,data,start,max_packet,flags,expected", CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_client_scan(impl, name, data, start, max_packet, flags, expected):
    _, client_scan, _ = impl
    assert client_scan(data, start, max_packet, flags) == expected
    assert client_scan(bytearray(data), start, max_packet, flags) == expected     # any buffer, same answer


RFQ = build.ready_for_query(b"I")
ROW = build.row_description([("a", 23)]) + build.data_row(["1"])
PSTATUS = build.parameter_status("TimeZone", "UTC")
SELECT1 = build.command_complete("SELECT 1")
DISCARD = build.command_complete("DISCARD ALL")        # 16-byte length field: looked at
DEALLOC = build.command_complete("DEALLOCATE ALL")     # 19

SERVER_CASES = [
    ("rows then ReadyForQuery", ROW + SELECT1 + RFQ, 0, len(ROW + SELECT1)),
    ("nothing to look at", ROW + SELECT1, 0, len(ROW + SELECT1)),
    ("ParameterStatus", ROW + PSTATUS + RFQ, 0, len(ROW)),
    ("DISCARD ALL tag", DISCARD + RFQ, 0, 0),
    ("DEALLOCATE ALL tag", ROW + DEALLOC, 0, len(ROW)),
    ("incomplete header", ROW[:4], 0, 0),
    ("body continues in the next read", ROW[:8], 0, len(build.row_description([("a", 23)]))),
    ("start past the end (skip)", RFQ, 10, 10),
    ("start after the event", ROW + RFQ + ROW, len(ROW + RFQ), len(ROW + RFQ + ROW)),
    ("empty", b"", 0, 0),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,data,start,expected", SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_server_scan(impl, name, data, start, expected):
    _, _, server_scan = impl
    assert server_scan(data, start) == expected
    assert server_scan(memoryview(data), start) == expected


@pytest.mark.skipif(COMPILED is None, reason="C scanner not built")
def test_compiled_knows_the_same_sql_first_bytes():
    assert frozenset(COMPILED.SQL_FIRST) == sql.FIRST_BYTES


@pytest.mark.skipif(COMPILED is None, reason="C scanner not built")
@pytest.mark.parametrize("args", [(b"", -1), (b"", "x"), ("text", 0), (b"", 0, 1)])
def test_compiled_rejects_bad_arguments(args):
    with pytest.raises((TypeError, ValueError)):
        COMPILED.server_scan(*args)


def test_random_streams_agree():
    """Both implementations give the same answer on random cuts of random message mixes."""
    if COMPILED is None:
        pytest.skip("C scanner not built")
    import random
    rnd = random.Random(7)
    parts = [Q, SYNC, PARSE, PARSE_NAMED, PARSE_EXEC, BIND, BIND_NAMED, DESC_P, DESC_S_NAMED, EXEC, CLOSE_P, FLUSH,
             TERM, COPYDATA, RFQ, PSTATUS, DISCARD, SELECT1, build.query("EXECUTE p"), b"Q\0\0\0\x01",
             msg(b"p", b"pw\0"), msg(b"c"), msg(b"f", b"x\0"), msg(bytes((200,)))]
    for _ in range(3000):
        data = b"".join(rnd.choice(parts) for _ in range(rnd.randint(0, 6)))
        data = data[:rnd.randint(0, len(data))]
        start = rnd.randint(0, 6)
        flags = rnd.randint(0, 3)
        max_packet = rnd.choice([BIG, 12])
        assert COMPILED.client_scan(data, start, max_packet, flags) == \
            scan._pure_client_scan(data, start, max_packet, flags), (data, start, max_packet, flags)
        assert COMPILED.server_scan(data, start) == scan._pure_server_scan(data, start), (data, start)


def test_pure_switch():
    """PGBOUNCER_PY_PURE=1 keeps the pure-Python walks, whatever is built."""
    code = "from pgbouncer_py.proto import scan; print(scan.COMPILED, scan.client_scan.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PGBOUNCER_PY_PURE": "1"}).stdout.split()
    assert out == ["False", "pgbouncer_py.proto.scan"]
    assert PURE.COMPILED == (COMPILED is not None and not os.environ.get("PGBOUNCER_PY_PURE"))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("text", "stops"), [
    ("END", False), ("DELETE FROM t", False), ("explain select 1", False), ("drop table t", False),
    ("Execute p", True), ("pRepare p as select 1", True), ("DEALLOCATE p", True), ("deallocate all", True),
    ("PREVIEW", True), ("EXE", True), ("E", False), ("E;", False), ("Ex", False), ("/* c */ END", True),
])
def test_tracked_query_stops_only_when_its_first_two_bytes_may_start_a_command(impl, text, stops):
    """A walk with CLIENT_PS stops at a Query only when sql.might_start might say yes: a first byte that is a
    letter must be followed by that command's next two letters (or the text is cut there)."""
    q = build.query(text)
    client_scan = impl[1]
    assert (client_scan(q, 0, BIG, PS)[0] == 0) is stops
    if not stops:
        assert not sql.might_start(q, 5, len(q))
    assert client_scan(q[:6], 0, BIG, PS)[0] == (0 if q[5] in sql.FIRST_BYTES else len(q))   # cut: unsure
