"""HOT: the relay, the one loop that moves protocol bytes from a connection to its linked peer, and the flow
control between the two (PgBouncer's sbuf).

`relay(conn, data, dst, scan, at, flags=-1)` takes one read: it puts the incomplete tail of the previous read in front,
walks message boundaries with `scan` (proto/scan's compiled or pure walkers, or None: stop at every message),
calls the handler `at` at each boundary the walk stops at, forwards the spans the handlers let through with one
`dst.write` per read, and keeps only an incomplete tail (in `conn.tail`; `conn.skip` is how far the last
message runs into the next read). Nothing here knows the protocol beyond the 5-byte message header.

    scan(data, pos) -> the offset of the next message the handler must see (past the end when none); or, with
        `flags` >= 0, a counting walker (proto/scan.client_scan):
        scan(data, pos, conn._max_packet, flags) -> (that offset, requests stepped over, 1 if any was work):
        the requests (Query, Sync) are answers the peer now expects (peer.expect_rfq, one ReadyForQuery each)
        and work starts the peer's query and transaction clocks (peer.query_start, peer.xact_start)
    at(conn, data, pos, end) -> a decision about the message at [pos, end) (end may lie beyond this read):
        an offset >= 0  forward up to there and walk on from it (normally `end`; further to step over a batch)
        DONE            forward it; when this read is written the link's transaction is over
        HOLD            it is incomplete and must be seen whole: keep it and what follows for the next read
        SKIP            drop it (only whole messages): `conn.relay_arg`, bytes, is forwarded in its place
        SKIP_DONE       SKIP, then as DONE
        STOP            forward what came before it, call `conn.relay_arg()` (close, refuse) and stop reading
        SWITCH          forward what came before it and stop: the handler changed how this link is relayed,
                        the rest is left in `conn.tail` for the new handler (relay returns SWITCH)

The client (client.py, through relay_up below), the server (server.py, through relay_down) and
prepared-statement tracking (prepare.py, through relay itself) are such handlers; relay() returns DONE, STOP or SWITCH when one of them was decided (STOP/SWITCH
end the walk), else 0. The loop keeps no state of its own between reads besides conn.tail/tail_need/skip, so a
compiled version of it can replace this one behind the same interface.

Flow control: LinkedFlow (below) stops reading a peer while our send buffer is full; the client also pauses
itself while it holds data with no server (client.py, _pause/_resume).
"""

import struct
from time import monotonic

_unpack_len = struct.Struct("!I").unpack_from

DONE = -1
HOLD = -2
SKIP = -3
SKIP_DONE = -4
STOP = -5
SWITCH = -6


def relay(conn, data, dst, scan, at, flags: int = -1) -> int:
    """Relay one read `data` of conn to the transport `dst` (see the module docstring)."""
    tail = conn.tail
    if tail:
        if len(tail) + len(data) < conn.tail_need:
            tail += data          # a large message still incomplete: gathered in place (bytearray), linear time
            return 0
        data = b"".join((tail, data))
        conn.tail = b""
    n = len(data)
    pos = conn.skip
    out = None                    # pieces to forward, once a handler dropped or replaced something; then
    result = 0                    # `start` is the first byte not yet forwarded or dropped (before: 0)
    while pos + 5 <= n:
        if flags >= 0:            # a counting walker (client_scan): requests and work are the peer's
            pos, requests, work = scan(data, pos, conn._max_packet, flags)
            if work:
                peer = conn.link
                peer.expect_rfq += requests
                if not peer.query_start:
                    peer.query_start = now = monotonic()
                    if not peer.xact_start:
                        peer.xact_start = now
            if pos + 5 > n:
                break
        elif scan is not None:
            pos = scan(data, pos)
            if pos + 5 > n:
                break
        end = pos + 1 + _unpack_len(data, pos + 1)[0]
        r = at(conn, data, pos, end)
        if r >= 0:
            pos = r
            continue
        if r == DONE:
            result = DONE
            pos = end
            continue
        if r == HOLD:
            break
        if r == SKIP or r == SKIP_DONE:
            if out is None:
                out = []
                start = 0
            if pos > start:
                out.append(data[start:pos])
            rep = conn.relay_arg
            if rep:
                out.append(rep)
            start = pos = end
            if r == SKIP_DONE:
                result = DONE
            continue
        # STOP, SWITCH: what came before the message goes, the handler has the rest
        _write(dst, data, 0 if out is None else start, pos, out)
        conn.skip = 0
        if r == SWITCH:
            conn.tail = data[pos:]
            conn.tail_need = 0
            return SWITCH
        conn.tail = b""
        conn.relay_arg()
        return STOP
    if pos >= n:
        conn.skip = pos - n
        if out is None:           # nothing was dropped
            dst.write(data)
        else:
            _write(dst, data, start, n, out)
    else:
        conn.skip = 0
        conn.tail = bytearray(memoryview(data)[pos:])
        conn.tail_need = 1 + _unpack_len(data, pos + 1)[0] if pos + 5 <= n else 5
        _write(dst, data, 0 if out is None else start, pos, out)
    return result


def _write(dst, data, start: int, stop: int, out) -> None:
    if out is None:
        if stop > start:
            dst.write(data if start == 0 and stop == len(data) else data[start:stop])
        return
    if stop > start:
        out.append(data[start:stop])
    if out:
        dst.write(out[0] if len(out) == 1 else b"".join(out))


class LinkedFlow:
    """Mixin for the client and server protocols, the relay's flow control: when one side's send buffer is full,
    stop reading its peer (`link`); `paused_peer` says whether we paused it."""

    __slots__ = ()

    def pause_writing(self) -> None:
        peer = self.link
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()
            self.paused_peer = True

    def resume_writing(self) -> None:
        peer = self.link
        if self.paused_peer and peer is not None and peer.transport is not None:
            self.paused_peer = False
            peer.transport.resume_reading()



# The same loop with a code object of its own per direction of an untracked link: relay_up (client -> server,
# the counting walker) and relay_down (server -> client); relay() itself is left to prepared-statement tracking
# (prepare.py, both directions). CPython 3.11 specialises attribute access and calls per code object, and one
# connection type and walker per site keeps them specialised (about 500 instructions per transaction for
# relay_up, bench/run.py --callgrind). A compiled relay would replace all three.
relay_up = type(relay)(relay.__code__.replace(), relay.__globals__, "relay_up")
relay_down = type(relay)(relay.__code__.replace(), relay.__globals__, "relay_down", relay.__defaults__)
