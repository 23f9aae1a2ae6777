"""The extended query protocol on the console (Parse/Bind/Describe/Execute/Sync/Close/Flush), so drivers that
always use it (psycopg 3, asyncpg, JDBC, Npgsql) can run console commands; PgBouncer itself refuses them."""

import struct

from pgbouncer_py.admin import commands
from pgbouncer_py.admin.parse import AdminError
from pgbouncer_py.proto import build
from pgbouncer_py.proto.messages import ProtocolError

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")

P_PARSE, P_BIND, P_DESCRIBE, P_EXECUTE, P_SYNC, P_FLUSH, P_CLOSE = (ord(c) for c in "PBDESHC")


class _Reader:
    """Cursor over one message body."""

    def __init__(self, body: bytes):
        self.b = body
        self.pos = 0

    def cstr(self) -> str:
        end = self.b.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("broken extended-protocol packet")
        s = self.b[self.pos:end].decode("utf-8", "replace")
        self.pos = end + 1
        return s

    def i16(self) -> int:
        if self.pos + 2 > len(self.b):
            raise ProtocolError("broken extended-protocol packet")
        v = _I16.unpack_from(self.b, self.pos)[0]
        self.pos += 2
        return v

    def i32(self) -> int:
        if self.pos + 4 > len(self.b):
            raise ProtocolError("broken extended-protocol packet")
        v = _I32.unpack_from(self.b, self.pos)[0]
        self.pos += 4
        return v

    def byte(self) -> int:
        if self.pos >= len(self.b):
            raise ProtocolError("broken extended-protocol packet")
        v = self.b[self.pos]
        self.pos += 1
        return v

    def skip(self, n: int) -> None:
        self.pos += n


class _Portal:
    __slots__ = ("sql", "formats", "answer", "ran")

    def __init__(self, sql: str, formats: list[int]):
        self.sql = sql
        self.formats = formats
        self.answer = None       # Result cached by Describe so Execute returns the same rows
        self.ran = False


class Session:
    """Per-console extended-protocol state: named statements, portals, error-skip mode."""

    def __init__(self):
        self.statements: dict[str, tuple[str, list[int]]] = {}
        self.portals: dict[str, _Portal] = {}
        self.failed = False      # after an error, everything up to Sync is ignored


def _session(console) -> Session:
    s = getattr(console, "ext", None)
    if s is None:
        s = console.ext = Session()
    return s


def message(console, mtype: int, body: bytes) -> None:
    """One frontend message that is not a simple Query or Terminate."""
    sess = _session(console)
    if mtype == P_SYNC:
        sess.failed = False
        sess.portals.pop("", None)
        console.send(build.ready_for_query(b"I"))
        return
    if mtype == P_FLUSH:
        return
    if sess.failed:
        return
    try:
        handler = _HANDLERS.get(mtype)
        if handler is None:
            console.client.close(f"unsupported message type on the admin console: {chr(mtype)!r}", send_error=True)
            return
        handler(console, sess, _Reader(body))
    except (AdminError, ProtocolError) as e:
        sess.failed = True
        console.send_error(str(e), getattr(e, "sqlstate", "08P01"))


def _parse(console, sess: Session, r: _Reader) -> None:
    name = r.cstr()
    sql = r.cstr()
    n = r.i16()
    types = [r.i32() for _ in range(max(n, 0))]
    sess.statements[name] = (sql, types)
    console.send(build.msg(b"1"))


def _bind(console, sess: Session, r: _Reader) -> None:
    portal = r.cstr()
    stmt = r.cstr()
    if stmt not in sess.statements:
        raise AdminError(f'prepared statement "{stmt}" does not exist', "26000")
    nfmt = r.i16()
    r.skip(2 * max(nfmt, 0))
    nparams = r.i16()
    for _ in range(max(nparams, 0)):
        ln = r.i32()
        if ln > 0:
            r.skip(ln)
    nres = r.i16()
    formats = [r.i16() for _ in range(max(nres, 0))]
    sess.portals[portal] = _Portal(sess.statements[stmt][0], formats)
    console.send(build.msg(b"2"))


def _describe(console, sess: Session, r: _Reader) -> None:
    kind = r.byte()
    name = r.cstr()
    if kind == ord("S"):
        if name not in sess.statements:
            raise AdminError(f'prepared statement "{name}" does not exist', "26000")
        sql, types = sess.statements[name]
        params = struct.pack("!h", len(types)) + b"".join(struct.pack("!i", t) for t in types)
        console.send(build.msg(b"t", params))
        if commands.is_show(sql):
            res = commands.execute(console, sql)
            if isinstance(res, commands.Result):
                console.send(build.row_description(res.columns))
                return
        console.send(build.msg(b"n"))
        return
    portal = sess.portals.get(name)
    if portal is None:
        raise AdminError(f'portal "{name}" does not exist', "34000")
    if commands.is_show(portal.sql):
        portal.answer = commands.execute(console, portal.sql)
        if isinstance(portal.answer, commands.Result):
            console.send(commands.row_description(portal.answer.columns, portal.formats))
            return
    console.send(build.msg(b"n"))


def _execute(console, sess: Session, r: _Reader) -> None:
    name = r.cstr()
    portal = sess.portals.get(name)
    if portal is None:
        raise AdminError(f'portal "{name}" does not exist', "34000")
    console.count_query()
    sql = portal.sql
    if sql.strip() in ("", ";"):
        console.send(build.empty_query_response())
        return
    answer = portal.answer if portal.answer is not None and not portal.ran else commands.execute(console, sql)
    portal.ran = True
    portal.answer = None
    if isinstance(answer, str) and answer == "defer":
        console.deferred = True
        console.deferred_rfq = False     # the client's Sync (held meanwhile) brings ReadyForQuery
        return
    if isinstance(answer, commands.Result):
        console.send(commands.encode(answer, describe=False, formats=portal.formats))
    elif answer:
        console.send(answer)


def _close(console, sess: Session, r: _Reader) -> None:
    kind = r.byte()
    name = r.cstr()
    (sess.statements if kind == ord("S") else sess.portals).pop(name, None)
    console.send(build.msg(b"3"))


_HANDLERS = {P_PARSE: _parse, P_BIND: _bind, P_DESCRIBE: _describe, P_EXECUTE: _execute, P_CLOSE: _close}
