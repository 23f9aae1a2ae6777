"""Protocol-level prepared statements across server connections in transaction/statement mode
(max_prepared_statements): per-client name map, global statement ids, per-server LRU, rewriting of
Parse/Bind/Describe/Close and the ordered queue of expected server responses.

While a link is tracked (client.ps == PS_ACTIVE, server.psq set) both directions are relayed by net/sbuf.py with
the handlers here, called at every message: client_at (rewrite, queue the expected answer) and server_at (drop
answers to injected requests, add synthesised ones; ReadyForQuery goes to the server's own handler, which makes
the release decision). The untracked client handler switches a link to tracking at its first named statement."""

import struct
import time
from collections import deque
from functools import partial

from pgbouncer_py import sqlprepare
from pgbouncer_py.log import log
from pgbouncer_py.net.sbuf import DONE, HOLD, SKIP, SKIP_DONE, STOP, relay
from pgbouncer_py.objects import registry
from pgbouncer_py.proto import scan, sql
from pgbouncer_py.proto.messages import parse_parameter_status
from pgbouncer_py.statements import (  # noqa: F401  (prepare.Statement, prepare.statements: stable names)
    K_BIND,
    K_BIND_INJ,
    K_CLOSE,
    K_CLOSE_INJ,
    K_DESCRIBE,
    K_EXEC_INJ,
    K_EXECUTE,
    K_PARSE,
    K_PARSE_INJ,
    K_PARSE_NEW,
    K_QUERY,
    K_SQL,
    K_SYN_CLOSE,
    K_SYN_PARSE,
    K_SYNC,
    K_UNTRACKED,
    NO_STATEMENTS,
    Statement,
    client_names,
    close_message,
    evict_for_one,
    lru_touch,
    lru_unevict,
    server_add,
    statements,
    target_message,
)

_I32 = struct.Struct("!I")
_unpack_len = _I32.unpack_from

# client.ps values
PS_OFF, PS_ON, PS_ACTIVE = 0, 1, 2
_EXTENDED = frozenset((K_PARSE, K_PARSE_NEW, K_PARSE_INJ, K_BIND, K_DESCRIBE, K_CLOSE, K_CLOSE_INJ, K_EXECUTE,
                       K_BIND_INJ, K_EXEC_INJ,
                       K_SYN_PARSE, K_SYN_CLOSE))
# response types that end the answer to a request of each kind
_ENDS = {
    K_PARSE: (49,), K_PARSE_NEW: (49,), K_PARSE_INJ: (49,),           # '1'
    K_BIND: (50,), K_BIND_INJ: (50,),                                  # '2'
    K_DESCRIBE: (84, 110),                                             # 'T' 'n'
    K_CLOSE: (51,), K_CLOSE_INJ: (51,),                                # '3'
    K_EXECUTE: (67, 73, 115), K_EXEC_INJ: (67, 73, 115),               # 'C' 'I' 's'
    K_SYNC: (90,), K_QUERY: (90,), K_UNTRACKED: (90,), K_SQL: (90,),   # 'Z'
}
_DROP = (K_PARSE_INJ, K_CLOSE_INJ, K_BIND_INJ, K_EXEC_INJ)


PARSE_COMPLETE = b"1\0\0\0\4"
CLOSE_COMPLETE = b"3\0\0\0\4"

ERR_IN_USE = "prepared statement name is already in use"
ERR_MISSING = "prepared statement did not exist"
ERR_BROKEN = "broken Parse/Bind/Describe/Close packet"
ERR_SQL_ORIGIN = "prepared statement was created by SQL PREPARE: Bind/Describe of it is not supported"


# --- online restart (-R): the maps travel with the sockets ---

def _export(st: Statement) -> list:
    return [st.id, st.key.hex(), int(st.sql)]


def _import(item: list) -> Statement:
    return statements.adopt(item[0], bytes.fromhex(item[1]), bool(item[2]) if len(item) > 2 else False)


def export_client(client) -> dict:
    return {"ps": client.ps, "names": {name.hex(): _export(st) for name, st in client.prepared.items()}}


def export_server(server) -> list:
    return [_export(st) for st in server.prepared.values()]


def import_client(client, data: dict | None) -> None:
    client.ps = enabled_for(client)
    for name, item in ((data or {}).get("names") or {}).items():
        client_names(client)[bytes.fromhex(name)] = _import(item)


def import_server(server, data: list | None) -> None:
    for item in data or ():
        st = _import(item)
        server.prepared[st.id] = st


class PacketError(Exception):
    """A client message the pooler cannot accept; str(e) is the text sent to the client."""


# --- sans-I/O decoding and rewriting of one message body ---

def _cstr_end(body: bytes, pos: int) -> int:
    end = body.find(b"\0", pos)
    if end < 0:
        raise PacketError(ERR_BROKEN)
    return end


def parse_parse(body: bytes) -> tuple[bytes, bytes]:
    """Parse body -> (statement name, key = the rest: query\\0 + parameter types)."""
    e = _cstr_end(body, 0)
    q = _cstr_end(body, e + 1)
    if len(body) < q + 3:
        raise PacketError(ERR_BROKEN)
    return body[:e], body[e + 1:]


def parse_bind(body: bytes) -> tuple[bytes, bytes, int]:
    """Bind body -> (portal, statement name, offset of what follows the statement name)."""
    p = _cstr_end(body, 0)
    s = _cstr_end(body, p + 1)
    return body[:p], body[p + 1:s], s + 1


def parse_target(body: bytes) -> tuple[int, bytes]:
    """Describe/Close body -> (b'S' or b'P' as int, name)."""
    if len(body) < 2 or body[0] not in (83, 80):
        raise PacketError(ERR_BROKEN)
    e = _cstr_end(body, 1)
    return body[0], body[1:e]


def bind_message(portal: bytes, server_name: bytes, rest: bytes) -> bytes:
    body = portal + b"\0" + server_name + b"\0" + rest
    return b"B" + _I32.pack(len(body) + 4) + body


# --- activation ---

def enabled_for(client) -> int:
    """PS_ON when the feature applies to this client (max_prepared_statements > 0, not session mode)."""
    cfg = registry.cfg
    if getattr(cfg, "max_prepared_statements", 0) > 0 and client.pool_mode != "session" and not client.admin:
        return PS_ON
    return PS_OFF


def activate(client, server) -> None:
    """Start tracking for this link period: from now on every client message and server answer is queued."""
    client.ps = PS_ACTIVE
    q = server.psq
    if q is None:
        q = server.psq = deque()
    if server.expect_rfq > 0:
        q.append((K_UNTRACKED, server.expect_rfq, None))


def deactivate(server, client) -> None:
    """The server goes back to the pool (its queue is empty): the next link period starts untracked."""
    server.psq = None
    if client is not None and client.ps == PS_ACTIVE:
        client.ps = PS_ON if registry.cfg.max_prepared_statements > 0 else PS_OFF


def config_changed(old, new) -> None:
    """max_prepared_statements changed at run time (SET, RELOAD): connected clients start or stop rewriting
    statement names at once, as with PgBouncer (a client in the middle of a tracked transaction switches when
    that transaction ends: its server's queue of expected answers must run out first)."""
    if (old.max_prepared_statements > 0) == (new.max_prepared_statements > 0):
        return
    for pool in list(registry.pools.values()):
        for client in pool.all_clients():
            if client.ps != PS_ACTIVE:
                client.ps = enabled_for(client)


def _ensure_on_server(server, st: Statement, out: list, q, stats) -> None:
    if lru_touch(server.prepared, st):
        return
    server_add(server, st, out, q)
    out.append(st.parse_message())
    q.append((K_PARSE_INJ, st, None))
    stats.server_parse_count += 1


# --- client -> server ---

def client_data(client, data: bytes, server) -> None:
    """All client bytes while tracking is active: relayed (net/sbuf.py) with client_at as the handler."""
    if server.psq is None:              # a new server for a client that was tracking: start again
        activate(client, server)
    if relay(client, data, server.transport, None, client_at) != STOP:
        _emit_synth(server, client)


def client_at(client, data, pos: int, end: int) -> int:
    """The relay's handler for every client message while tracking: rewrite Parse/Bind/Describe/Close to the
    server's statement names, queue what answer each request expects (server.psq)."""
    t = data[pos]
    ln = end - pos - 1
    if ln < 4 or ln > client._max_packet:
        client.relay_arg = partial(client.close, "bad packet header" if ln < 4 else "max_packet_size exceeded",
                                   send_error=True)
        return STOP
    server = client.link
    q = server.psq
    if t == 80 or t == 66 or t == 68 or t == 67:          # P B D C
        if end > len(data):
            return HOLD
        _start_query(server)
        out: list = []
        try:
            _client_message(client, server, t, data[pos + 5:end], data, pos, end, out, q, client.pool.db.stats)
        except PacketError as e:
            client.relay_arg = partial(client.close, str(e), send_error=True)
            return STOP
        client.relay_arg = out[0] if len(out) == 1 else b"".join(out)
        return SKIP
    if t == 83 or t == 81 or t == 70:                     # Sync, Query, FunctionCall
        if t == 81:
            if client.no_pqexec:
                client.relay_arg = partial(client.close, "PQexec disallowed", send_error=True)
                return STOP
            n = len(data)
            if pos + 5 < n and data[pos + 5] in sql.FIRST_BYTES and sql.might_start(data, pos + 5, min(end, n)):
                if end > n:
                    return HOLD
                msg = sqlprepare.client_query(client, server, data[pos + 5:end - 1], q, client.pool.db.stats, K_SQL)
                if msg is not None:                         # SQL-level PREPARE/EXECUTE/DEALLOCATE
                    server.expect_rfq += 1
                    _start_query(server)
                    client.relay_arg = msg
                    return SKIP
        server.expect_rfq += 1
        q.append((K_SYNC if t == 83 else K_QUERY, None, None))
        _start_query(server)
        return end
    if t == 69:                                           # Execute
        q.append((K_EXECUTE, None, None))
        _start_query(server)
        return end
    if t == 88:                                           # Terminate
        client.relay_arg = client.close_requested
        return STOP
    if t not in scan.CLIENT_TYPES:                        # never forwarded
        client.relay_arg = partial(client.unknown_packet, data[pos:pos + 8])
        return STOP
    return end


def _start_query(server) -> None:
    if not server.query_start:
        now = time.monotonic()
        server.query_start = now
        if not server.xact_start:
            server.xact_start = now


def _client_message(client, server, t: int, body: bytes, data: bytes, pos: int, end: int, out: list, q,
                    stats) -> None:
    if t == 80:                                                  # Parse
        name, key = parse_parse(body)
        if not name:
            if key[0] in sql.FIRST_BYTES and sqlprepare.parse_execute(client, server, key, out, q, stats):
                return                                           # SQL EXECUTE sent with the extended protocol
            out.append(data[pos:end])
            q.append((K_PARSE, None, None))
            return
        stats.client_parse_count += 1
        if name in client.prepared:
            log.info(f"{client.prefix()}prepared statement '{name.decode(errors='replace')}' was already prepared")
            raise PacketError(ERR_IN_USE)
        st = statements.get(key)
        client_names(client)[name] = st
        if lru_touch(server.prepared, st):
            q.append((K_SYN_PARSE, st, name))
            return
        server_add(server, st, out, q)
        out.append(st.parse_message())
        q.append((K_PARSE_NEW, st, name))
        stats.server_parse_count += 1
        return
    if t == 66:                                                  # Bind
        portal, name, rest_at = parse_bind(body)
        if not name:
            out.append(data[pos:end])
            q.append((K_BIND, None, None))
            return
        st = client.prepared.get(name)
        if st is None:
            raise PacketError(ERR_MISSING)
        if st.sql:
            raise PacketError(ERR_SQL_ORIGIN)
        stats.bind_count += 1
        _ensure_on_server(server, st, out, q, stats)
        out.append(bind_message(portal, st.server_name, body[rest_at:]))
        q.append((K_BIND, None, None))
        return
    kind, name = parse_target(body)
    if kind == 80 or not name:                                   # portal, or the unnamed statement
        out.append(data[pos:end])
        q.append((K_DESCRIBE if t == 68 else K_CLOSE, None, None))
        return
    if t == 68:                                                  # Describe statement
        st = client.prepared.get(name)
        if st is None:
            raise PacketError(ERR_MISSING)
        if st.sql:
            raise PacketError(ERR_SQL_ORIGIN)
        _ensure_on_server(server, st, out, q, stats)
        out.append(target_message(b"D", 83, st.server_name))
        q.append((K_DESCRIBE, None, None))
        return
    # Close statement: only the client's name goes; the server keeps the statement for others
    st = client.prepared.get(name)
    if st is not None:
        del client.prepared[name]
    q.append((K_SYN_CLOSE, st, name))


def _emit_synth(server, client) -> None:
    """Answer the synthesised responses at the head of the queue (nothing from the server precedes them)."""
    q = server.psq
    if not q or q[0][0] < K_SYN_PARSE:
        return
    parts = []
    while q and q[0][0] >= K_SYN_PARSE:
        parts.append(PARSE_COMPLETE if q.popleft()[0] == K_SYN_PARSE else CLOSE_COMPLETE)
    if client.transport is not None:
        client.transport.write(b"".join(parts))


# --- server -> client ---

def server_data(server, data: bytes, client) -> int:
    """All server bytes while a queue is kept: relayed (net/sbuf.py) with server_at as the handler. When the
    transaction is over (DONE, returned) tracking stops: the caller releases the server."""
    r = relay(server, data, client.transport, None, server_at)
    if r == DONE:
        deactivate(server, client)
    return r


def server_at(server, data, pos: int, end: int) -> int:
    """The relay's handler for every server message while tracking: drop the answers to injected requests,
    add synthesised ones, map statement names back in errors, undo what an error prevented."""
    t = data[pos]
    if (t == 90 or t == 83 or t == 67 or t == 69) and end > len(data):
        return HOLD
    q = server.psq
    kind = q[0][0] if q else 0
    if t == 90:                                              # ReadyForQuery
        while q and q[0][0] not in (K_SYNC, K_QUERY, K_UNTRACKED, K_SQL):
            q.popleft()                                      # defensive: nothing else answers at 'Z'
        if q:
            e = q[0]
            if e[0] == K_UNTRACKED and e[1] > 1:
                q[0] = (K_UNTRACKED, e[1] - 1, None)
            else:
                q.popleft()
        out = [data[pos:end]]
        _synth_into(q, out)                                  # answers synthesised after it
        r = server.relay_at(data, pos, end)                  # the server's own accounting and decision
        if r == STOP or len(out) == 1:
            return r
        server.relay_arg = b"".join(out)
        return SKIP_DONE if r == DONE else SKIP
    client = server.link
    if kind == K_SQL and (t == 67 or t == 69):               # answers to a rewritten SQL-level command
        server.relay_arg = sqlprepare.response(q[0][1], t, data[pos + 5:end]) or b""
        return SKIP
    if t == 83:                                              # ParameterStatus
        name, value = parse_parameter_status(data[pos + 5:end])
        server.params[name] = value
        client.set_var(name, value)
        if log.verbose:
            log.debug(f"{client.prefix()}setting client var: {name}='{value}'")
    elif t == 67 and kind != K_EXECUTE:                      # CommandComplete of a simple Query
        _command_tag(server, client, data[pos + 5:end])
    elif t == 69 and kind in _EXTENDED:                      # ErrorResponse
        out = [sqlprepare.client_names_in_error(client, data[pos:end])]
        _error_skip(server, client, q)
        _synth_into(q, out)
        server.relay_arg = b"".join(out)
        return SKIP
    if kind and t in _ENDS.get(kind, ()):
        if t == 67:
            _command_tag(server, client, data[pos + 5:end])
        e = q.popleft()
        out = [] if e[0] in _DROP else [data[pos:end]]
        _synth_into(q, out)
        if not out:
            server.relay_arg = b""
            return SKIP
        if len(out) == 1 and e[0] not in _DROP:
            return end
        server.relay_arg = b"".join(out)
        return SKIP
    return end


def _synth_into(q, out: list) -> None:
    while q and q[0][0] >= K_SYN_PARSE:
        out.append(PARSE_COMPLETE if q.popleft()[0] == K_SYN_PARSE else CLOSE_COMPLETE)


def _error_skip(server, client, q) -> None:
    """An error answered an extended-protocol request: PostgreSQL skips everything up to the next Sync.
    Undo, newest first, what the skipped requests (and the failed one) would have changed."""
    skipped = []
    while q and q[0][0] != K_SYNC:
        e = q.popleft()
        if e[0] == K_QUERY or e[0] == K_SQL:
            if server.expect_rfq > 0:
                server.expect_rfq -= 1           # a Query inside a failed pipeline gets no ReadyForQuery
            if e[0] == K_SQL:
                sqlprepare.undo(e[1])
            continue
        if e[0] == K_UNTRACKED:
            q.appendleft(e)
            break
        skipped.append(e)
    lru = server.prepared
    for kind, st, name in reversed(skipped):
        if kind == K_PARSE_NEW or kind == K_PARSE_INJ or kind == K_EXEC_INJ:
            lru.pop(st.id, None)
            if kind == K_PARSE_NEW and client.prepared.get(name) is st:
                del client.prepared[name]
        elif kind == K_SYN_PARSE:
            if client.prepared.get(name) is st:
                del client.prepared[name]
        elif kind == K_CLOSE_INJ:
            lru_unevict(lru, st)
        elif kind == K_SYN_CLOSE:
            if st is not None and name not in client.prepared:
                client_names(client)[name] = st


def _command_tag(server, client, body: bytes) -> None:
    if body == b"DEALLOCATE ALL\0" or body == b"DISCARD ALL\0":
        deallocate_all(server, client)


def deallocate_all(server, client) -> None:
    """DEALLOCATE ALL / DISCARD ALL ran on the server: its statements and the client's names are gone."""
    if server is not None:
        server.prepared.clear()
    if client is not None and client.prepared:
        client.prepared = NO_STATEMENTS


def unnamed_batch_end(data: bytes, pos: int, max_packet: int = 2147483647) -> int:
    """HOT helper: when the extended-protocol batch starting at `pos` is complete in `data` (up to its Sync) and
    uses only the unnamed statement, return the offset after its Sync: such a batch needs no tracking and stays
    on the fast path (pgbench -M extended, psycopg's parameterised queries). Else -1: track it."""
    return scan.unnamed_batch_end(data, pos, max_packet, sql.might_start)


def handoff(client, server, data: bytes, pos: int) -> None:
    """Start tracking at `pos` (a message boundary) of client bytes: what came before goes as it is. (The relay
    switches to tracking by itself, _client_at's SWITCH; this entry is for the unit tests.)"""
    if pos:
        server.transport.write(data[:pos])
    client.skip = 0
    activate(client, server)
    client_data(client, data[pos:] if pos else data, server)


def command_complete_hot(server, client, data: bytes, pos: int, end: int) -> None:
    """Called from the untracked fast path for a short CommandComplete that may be DEALLOCATE/DISCARD ALL."""
    _command_tag(server, client, data[pos + 5:end])


def deallocate_all_tag(server, body: bytes) -> None:
    """CommandComplete of an internal query (server_reset_query): DISCARD ALL drops the server's statements."""
    if body == b"DEALLOCATE ALL\0" or body == b"DISCARD ALL\0":
        server.prepared.clear()
