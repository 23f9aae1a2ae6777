"""HOT: message-boundary walks of the relay, ints and offsets only. The compiled `_scan` (built from _scan.c
when a C compiler is there) replaces these pure-Python versions when importable; PGBOUNCER_PY_PURE=1 keeps them."""

import os
import struct

from pgbouncer_py.proto.sql import FIRST_BYTES as _SQL_FIRST

_unpack_len = struct.Struct("!I").unpack_from

CLIENT_PS = 1           # prepared statements are tracked on this link (prepare.PS_ON)
CLIENT_NO_PQEXEC = 2    # disable_pqexec: every Query is the caller's business

# the frontend message types a logged-in client may send, as PgBouncer knows them: Query, FunctionCall, the
# extended protocol, COPY, Terminate. Any other type is refused by the pooler, never forwarded to PostgreSQL.
CLIENT_TYPES = frozenset(b"QFPBDECSHdcfX")
_PASS = frozenset(b"CHdcf")     # known types the walk steps over without a look (Close only when untracked)


def server_scan(data, pos: int) -> int:
    """Offset of the first ReadyForQuery, ParameterStatus or 16/19-byte CommandComplete (maybe DEALLOCATE ALL
    or DISCARD ALL) whose header starts at or after pos; else where the walk ran out (an incomplete header,
    or past the end when the last message continues in the next read)."""
    n = len(data)
    while pos + 5 <= n:
        t = data[pos]
        ln = _unpack_len(data, pos + 1)[0]
        if t == 90 or t == 83 or (t == 67 and (ln == 19 or ln == 16)):
            return pos
        pos += 1 + ln
    return pos


def unnamed_batch_end(data, pos: int, max_packet: int, might_be_sql=None) -> int:
    """The extended-protocol batch at pos, complete up to its Sync and naming nothing: the offset after the
    Sync; else -1. A Parse text whose first byte may start SQL EXECUTE fails it, unless `might_be_sql`
    (data, start, end) is given and says it is not."""
    n = len(data)
    while pos + 5 <= n:
        t = data[pos]
        ln = _unpack_len(data, pos + 1)[0]
        end = pos + 1 + ln
        if end > n or ln < 4 or ln > max_packet:
            return -1
        if t == 83:
            return end
        if t == 80:
            if end - pos < 8 or data[pos + 5] != 0 or (data[pos + 6] in _SQL_FIRST and (
                    might_be_sql is None or might_be_sql(data, pos + 6, end))):
                return -1
        elif t == 66:
            z = data.find(b"\0", pos + 5, end)
            if z < 0 or z + 1 >= end or data[z + 1] != 0:
                return -1
        elif t == 68 or t == 67:
            if end - pos < 7 or (data[pos + 5] == 83 and data[pos + 6] != 0):
                return -1
        elif t != 69 and t != 72:
            return -1
        pos = end
    return -1


# a Query text whose first byte is one of these letters may only be the command starting with these three
_PREFIX = {ord(c): k[:3].encode() for k in ("prepare", "execute", "deallocate") for c in (k[0], k[0].upper())}


def _may_be_sql(data, i: int, e: int) -> bool:
    """The Query text at data[i] (i < e; e: the end of the message or of the read) may be SQL PREPARE, EXECUTE or
    DEALLOCATE (sql.might_start decides): its first byte is in sql.FIRST_BYTES and, when that is a letter, the
    next two bytes are that command's next letters in any case, or are not in this read. So DELETE, DROP, END,
    EXPLAIN, PERFORM... pass the walk without a stop (the C walker's may_be_sql is the same test)."""
    c = data[i]
    if c not in _SQL_FIRST:
        return False
    kw = _PREFIX.get(c)
    if kw is None:
        return True             # a blank, or what may start a comment
    for k in (1, 2):
        if i + k >= e:
            return True         # cut: unsure
        if data[i + k] | 0x20 != kw[k]:
            return False
    return True


def client_scan(data, pos: int, max_packet: int, flags: int) -> tuple[int, int, int]:
    """Walk client messages from pos: (where it stopped, Query/Sync count, 1 when any message is work for the
    server). It stops at what the caller must look at itself: Terminate, a bad length, a type not in
    CLIENT_TYPES, a Query under disable_pqexec or one that may be SQL PREPARE/EXECUTE/DEALLOCATE, and with
    CLIENT_PS Parse/Bind/Describe/Close that are not a complete unnamed batch (such a batch counts as one Sync)."""
    n = len(data)
    syncs = work = 0
    ps = flags & CLIENT_PS
    while pos + 5 <= n:
        t = data[pos]
        ln = _unpack_len(data, pos + 1)[0]
        if t == 88 or ln < 4 or ln > max_packet:
            break
        if t == 81:
            if flags & CLIENT_NO_PQEXEC or (ps and pos + 5 < n and _may_be_sql(data, pos + 5, min(pos + 1 + ln, n))):
                break
            syncs += 1
            work = 1
        elif t == 83:
            syncs += 1
            work = 1
        elif t == 69 or t == 70:
            work = 1
        elif t == 80 or t == 66 or t == 68 or (t == 67 and ps):
            work = 1
            if ps:
                end = unnamed_batch_end(data, pos, max_packet)
                if end < 0:
                    break
                syncs += 1
                pos = end
                continue
        elif t not in _PASS:
            break               # a type the pooler does not know: the caller refuses it
        pos += 1 + ln
    return pos, syncs, work


_pure_client_scan, _pure_server_scan = client_scan, server_scan     # kept for the tests that compare both

if not os.environ.get("PGBOUNCER_PY_PURE"):
    try:
        from pgbouncer_py.proto._scan import client_scan, server_scan  # noqa: F401, F811
        COMPILED = True
    except ImportError:
        COMPILED = False
else:
    COMPILED = False
