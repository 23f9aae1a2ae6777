"""The relay loop (net/sbuf.py) with fake connections and transports: bytes in, bytes out, decisions.

Both walkers (the compiled scanner when built, and the pure-Python one) drive the same loop."""

import struct

import pytest

from pgbouncer_py.net import sbuf
from pgbouncer_py.proto import scan


def m(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class Wire:
    """A transport: records every write."""

    def __init__(self):
        self.writes: list[bytes] = []

    def write(self, b) -> None:
        self.writes.append(bytes(b))

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


class Peer:
    def __init__(self):
        self.expect_rfq = 0
        self.query_start = self.xact_start = 0.0


class Conn:
    def __init__(self):
        self.tail = b""
        self.tail_need = 0
        self.skip = 0
        self.relay_arg = None
        self._max_packet = 1 << 20
        self.link = Peer()
        self.seen: list[bytes] = []      # the messages the handler was called at (whole, when complete)
        self.stopped = False


SERVER_WALKERS = [scan._pure_server_scan] + ([scan.server_scan] if scan.COMPILED else [])
CLIENT_WALKERS = [scan._pure_client_scan] + ([scan.client_scan] if scan.COMPILED else [])

ANSWER = (m(b"T", b"\0\1a\0" + b"\0" * 18) + m(b"D", b"\0\1\0\0\0\0011") + m(b"S", b"TimeZone\0UTC\0")
          + m(b"C", b"SELECT 1\0") + m(b"Z", b"I"))


def seeing(decide=None):
    """A handler that records complete messages (HOLD until whole) and returns decide(conn, msg, end) or end."""
    def at(conn, data, pos, end):
        if end > len(data):
            return sbuf.HOLD
        msg = bytes(data[pos:end])
        conn.seen.append(msg)
        r = decide(conn, msg, end) if decide is not None else None
        return end if r is None else r
    return at


def run(conn, chunks, walker, at, flags=-1):
    out = Wire()
    results = [sbuf.relay(conn, c, out, walker, at, flags) for c in chunks]
    return out, results


@pytest.mark.parametrize("walker", SERVER_WALKERS)
def test_one_read_is_one_write_and_the_handler_sees_only_the_walkers_stops(walker):
    conn = Conn()
    out, results = run(conn, [ANSWER], walker, seeing())
    assert out.writes == [ANSWER]
    assert [s[:1] for s in conn.seen] == [b"S", b"Z"]      # not T, D, nor a long CommandComplete
    assert results == [0] and conn.tail == b"" and conn.skip == 0


@pytest.mark.parametrize("walker", SERVER_WALKERS)
@pytest.mark.parametrize("split", range(1, len(ANSWER)))
def test_any_split_forwards_the_same_bytes_and_shows_whole_messages(walker, split):
    conn = Conn()
    out, _ = run(conn, [ANSWER[:split], ANSWER[split:]], walker, seeing())
    assert out.data == ANSWER
    assert conn.seen == [m(b"S", b"TimeZone\0UTC\0"), m(b"Z", b"I")]
    assert conn.tail == b"" and conn.skip == 0


@pytest.mark.parametrize("walker", SERVER_WALKERS)
def test_a_long_message_streams_through_without_being_held(walker):
    row = m(b"D", b"x" * 10000)
    conn = Conn()
    chunks = [row[:3000], row[3000:6000], row[6000:] + m(b"Z", b"I")]
    out, _ = run(conn, chunks, walker, seeing())
    assert [len(w) for w in out.writes] == [3000, 3000, len(row) - 6000 + 6]     # each read goes out at once
    assert conn.seen == [m(b"Z", b"I")]


def test_a_held_message_is_gathered_until_whole():
    big = m(b"P", b"q" * 5000)
    conn = Conn()
    pieces = [big[i:i + 700] for i in range(0, len(big), 700)]
    out, results = run(conn, pieces, None, seeing())
    assert out.writes == [big]                              # nothing before it is whole, then once
    assert conn.seen == [big] and results == [0] * len(pieces)
    assert conn.tail == b""


def test_done_forwards_and_is_returned_after_the_write():
    conn = Conn()
    out, results = run(conn, [ANSWER], scan._pure_server_scan,
                       seeing(lambda c, msg, end: sbuf.DONE if msg[:1] == b"Z" else None))
    assert results == [sbuf.DONE] and out.writes == [ANSWER]


@pytest.mark.parametrize(("decide", "expected"), [
    # drop ParameterStatus: the bytes around it go in one write
    (lambda c, msg, end: sbuf.SKIP if msg[:1] == b"S" and not setattr(c, "relay_arg", b"") else None,
     ANSWER.replace(m(b"S", b"TimeZone\0UTC\0"), b"")),
    # replace it by other bytes
    (lambda c, msg, end: sbuf.SKIP if msg[:1] == b"S" and not setattr(c, "relay_arg", m(b"N")) else None,
     ANSWER.replace(m(b"S", b"TimeZone\0UTC\0"), m(b"N"))),
    # replace ReadyForQuery and end the transaction
    (lambda c, msg, end: sbuf.SKIP_DONE if msg[:1] == b"Z" and not setattr(c, "relay_arg", msg + m(b"1")) else None,
     ANSWER + m(b"1")),
])
def test_skip_replaces_the_message(decide, expected):
    conn = Conn()
    out, results = run(conn, [ANSWER], scan._pure_server_scan, seeing(decide))
    assert out.writes == [expected]
    assert results == [sbuf.DONE if expected.endswith(m(b"1")) else 0]


def test_stop_forwards_what_came_before_then_runs_the_handlers_action():
    conn = Conn()
    out = Wire()

    def action():
        conn.stopped = out.data          # what the peer had received when the action ran

    def at(c, data, pos, end):
        if data[pos] == 83:
            c.relay_arg = action
            return sbuf.STOP
        return end

    r = sbuf.relay(conn, ANSWER, out, scan._pure_server_scan, at)
    before = ANSWER[:ANSWER.index(m(b"S", b"TimeZone\0UTC\0"))]
    assert r == sbuf.STOP and out.writes == [before] and conn.stopped == before
    assert conn.tail == b"" and conn.skip == 0


def test_switch_leaves_the_rest_for_the_new_handler():
    conn = Conn()
    data = m(b"Q", b"select 1\0") + m(b"P", b"a\0select 2\0\0\0") + m(b"S")

    def at(c, d, pos, end):
        return sbuf.SWITCH if d[pos] == 80 else end

    out = Wire()
    r = sbuf.relay(conn, data, out, None, at)
    assert r == sbuf.SWITCH
    assert out.writes == [m(b"Q", b"select 1\0")]
    assert bytes(conn.tail) == data[len(m(b"Q", b"select 1\0")):] and conn.skip == 0
    out2, results = run(conn, [b""], None, seeing())         # the new handler starts at the Parse
    assert out2.data == bytes(data[len(m(b"Q", b"select 1\0")):]) and conn.seen[0][:1] == b"P"


@pytest.mark.parametrize("walker", CLIENT_WALKERS)
def test_a_counting_walker_gives_the_peer_its_requests(walker):
    conn = Conn()
    batch = m(b"Q", b"select 1\0") + m(b"B", b"\0\0\0\0\0\0\0\0") + m(b"E", b"\0\0\0\0\0") + m(b"S") + m(b"H")
    out, results = run(conn, [batch[:7], batch[7:]], walker, seeing(), 0)
    assert out.data == batch and conn.seen == []
    assert conn.link.expect_rfq == 2                 # the Query and the Sync each get a ReadyForQuery
    assert conn.link.query_start and conn.link.xact_start


@pytest.mark.parametrize("walker", CLIENT_WALKERS)
def test_the_counting_walker_stops_at_terminate(walker):
    conn = Conn()
    data = m(b"Q", b"select 1\0") + m(b"X")
    out, _ = run(conn, [data], walker, seeing(lambda c, msg, end: sbuf.STOP if not setattr(
        c, "relay_arg", lambda: setattr(c, "stopped", True)) else None), 0)
    assert out.writes == [m(b"Q", b"select 1\0")] and conn.seen == [m(b"X")] and conn.stopped
    assert conn.link.expect_rfq == 1
