"""Protocol-level harness: the pooler's Client and Server objects on fake transports, in this process, with a
scripted PostgreSQL peer behind every server connection. No socket is opened.

Everything that reaches into the pooler's insides is in this module, so a reshape of the core has one place
to adjust:
- `Pooler.loader` (pgbouncer_py.loader) applies a Config loaded from a real pgbouncer.ini text (users, databases);
- the global `registry` is reset before and after each test;
- server connections: the event loop's create_unix_connection / create_connection are replaced on the loop
  object (the pooler reaches PostgreSQL, and sends cancel requests, only through them): they hand the
  protocol a FakeTransport whose far end is a FakePostgres;
- log lines are captured by replacing `log.write`.

Tests drive only the asyncio.Protocol methods of Client (connection_made, data_received, eof_received,
connection_lost), look at what FakeTransport.write() received, and read the pool state lists.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgbouncer_py import hooks
from pgbouncer_py.client import Client
from pgbouncer_py.config import load_config
from pgbouncer_py.janitor import Janitor
from pgbouncer_py.log import log
from pgbouncer_py.main import Pooler, wire_hooks
from pgbouncer_py.objects import CLIENT_LISTS, SERVER_LISTS, registry
from pgbouncer_py.proto import build

_SET = re.compile(r"""\s*SET\s+("?\w+"?)\s*(?:=|\s+TO\s+)\s*('(?:[^']|'')*'|[^;']+)\s*;?""", re.I)
_SETS = re.compile(f"(?:{_SET.pattern})+", re.I)
CANCEL_CODE = 80877102
SSL_CODE = 80877103
GSS_CODE = 80877104
_I32 = struct.Struct("!I")


# --- messages ---------------------------------------------------------------------------------------------

def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """Typed messages (type byte, body) of a complete stream; asserts nothing is left over."""
    out, pos = [], 0
    while pos < len(data):
        assert pos + 5 <= len(data), f"truncated message at {pos}: {data[pos:]!r}"
        t = data[pos:pos + 1]
        n = _I32.unpack_from(data, pos + 1)[0]
        assert pos + 1 + n <= len(data), f"truncated {t!r} message at {pos}"
        out.append((t, data[pos + 5:pos + 1 + n]))
        pos += 1 + n
    return out


def types(data: bytes) -> bytes:
    """The message type letters of a stream: b'RSSKZ' for a welcome."""
    return b"".join(t for t, _ in split_messages(data))


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.rstrip(b"\0").split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


def errors(data: bytes) -> list[tuple[str, str, str]]:
    """(severity, SQLSTATE, message) of every ErrorResponse in a stream."""
    return [(f["S"], f["C"], f["M"]) for f in (error_fields(b) for t, b in split_messages(data) if t == b"E")]


def startup(user: str, database: str, **params: str) -> bytes:
    return build.startup_message({"user": user, "database": database, **params})


def md5_password(password: str, user: str, salt: bytes) -> bytes:
    """PasswordMessage for AuthenticationMD5Password, computed here from the protocol's definition."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    outer = hashlib.md5(inner.encode() + salt).hexdigest()
    return build.password_message(b"md5" + outer.encode() + b"\0")


def parse(name: str, sql: str) -> bytes:
    return build.msg(b"P", build.cstr(name) + build.cstr(sql) + b"\0\0")


def bind(portal: str, stmt: str, *values: str) -> bytes:
    body = build.cstr(portal) + build.cstr(stmt) + struct.pack("!HH", 0, len(values))
    for v in values:
        body += _I32.pack(len(v)) + v.encode()
    return build.msg(b"B", body + struct.pack("!H", 0))


def describe_portal(portal: str = "") -> bytes:
    return build.msg(b"D", b"P" + build.cstr(portal))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return build.msg(b"E", build.cstr(portal) + _I32.pack(max_rows))


# --- transports -------------------------------------------------------------------------------------------

class FakeTransport(asyncio.Transport):
    """Records what the protocol writes; `far` (a FakePostgres) gets it too. close()/abort() end the connection
    as an asyncio transport does: connection_lost(None) on the next loop turn."""

    events = 0          # writes, closes and deliveries of all fake transports: settle() waits until it stops

    def __init__(self, loop, protocol=None, *, peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 6432),
                 far=None):
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.far = far
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self._extra = {"peername": peername, "sockname": sockname, "socket": None}

    # what the protocol calls
    def write(self, data) -> None:
        if self.closed:
            return
        self.out += data
        FakeTransport.events += 1
        if self.far is not None:
            self.far.received(bytes(data))

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def close(self) -> None:
        self._end(aborted=False)

    def abort(self) -> None:
        self._end(aborted=True)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    # what the test (or the far end) calls
    def take(self) -> bytes:
        """What was written since the last take()."""
        data = bytes(self.out)
        self.out.clear()
        return data

    def _end(self, aborted: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.aborted = aborted
        FakeTransport.events += 1
        if self.far is not None:
            self.far.transport_closed()
        if self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, None)


# --- the scripted PostgreSQL ------------------------------------------------------------------------------

WELCOME_PARAMS = {"server_version": "16.4", "server_encoding": "UTF8", "client_encoding": "UTF8",
                  "DateStyle": "ISO, MDY", "TimeZone": "UTC", "integer_datetimes": "on",
                  "standard_conforming_strings": "on", "application_name": "", "IntervalStyle": "postgres",
                  "is_superuser": "off", "session_authorization": "app"}

CANCELED = ("ERROR", "57014", "canceling statement due to user request")


@dataclass
class Script:
    """How every FakePostgres of a test behaves."""
    password: str | None = None         # None: trust; else md5 authentication with this password
    params: dict = field(default_factory=lambda: dict(WELCOME_PARAMS))
    hold: set = field(default_factory=set)          # queries that get no answer until answer_held()
    refuse_connect: bool = False
    chunk: int = 0                      # > 0: answers reach the pooler in pieces of this many bytes


def result(tag: str, rows=(), columns=("?column?",)) -> bytes:
    out = b""
    if rows:
        out += build.row_description([(c, 23) for c in columns])
        out += b"".join(build.data_row(list(r)) for r in rows)
    return out + build.command_complete(tag)


class FakePostgres:
    """One backend: startup and authentication, then simple and extended queries answered from a small
    script, transaction status in ReadyForQuery, Terminate. Answers go out on the next loop turn, as from a
    real socket; everything received is kept as messages (`received_messages`)."""

    next_pid = 1000

    def __init__(self, net: FakeNet, transport: FakeTransport):
        self.net = net
        self.script = net.script
        self.transport = transport
        self.buf = bytearray()
        self.phase = "startup"
        self.startup_params: dict[str, str] = {}
        self.received_messages: list[tuple[bytes, bytes]] = []
        self.queries: list[str] = []
        self.status = b"I"
        self.held: list[str] = []
        self.statements: dict[bytes, str] = {}      # prepared statements on this backend: name -> SQL
        self.skipping = False                       # an extended-protocol error: skip to Sync
        self.closed = False
        self.terminated = False
        self.cancel_for: tuple[int, bytes] | None = None
        FakePostgres.next_pid += 1
        self.pid = FakePostgres.next_pid
        self.key = struct.pack("!I", self.pid * 7919 % 2**32)
        self.params = dict(self.script.params)        # this backend's reported parameters
        self.salt = b"\x01\x02\x03\x04"

    # transport side
    def received(self, data: bytes) -> None:
        self.buf += data
        while not self.closed:
            if self.phase == "startup":
                if len(self.buf) < 8:
                    return
                n = _I32.unpack_from(self.buf, 0)[0]
                if len(self.buf) < n:
                    return
                pkt = bytes(self.buf[:n])
                del self.buf[:n]
                self._startup(pkt)
                continue
            if len(self.buf) < 5:
                return
            n = _I32.unpack_from(self.buf, 1)[0]
            if len(self.buf) < 1 + n:
                return
            t, body = bytes(self.buf[:1]), bytes(self.buf[5:1 + n])
            del self.buf[:1 + n]
            self.received_messages.append((t, body))
            self._message(t, body)

    def transport_closed(self) -> None:
        self.closed = True

    def send(self, data: bytes) -> None:
        step = self.script.chunk or len(data)
        for i in range(0, len(data), step):
            self.net.loop.call_soon(self._deliver, data[i:i + step])

    def _deliver(self, data: bytes) -> None:
        FakeTransport.events += 1
        if not self.transport.closed:
            self.transport.protocol.data_received(data)

    def hang_up(self) -> None:
        """PostgreSQL closes the connection (say, the backend was terminated) after what it sent so far:
        EOF, then connection_lost."""
        self.closed = True
        self.net.loop.call_soon(self._hang_up_now)

    def _hang_up_now(self) -> None:
        FakeTransport.events += 1
        if self.transport.closed:
            return
        self.transport.closed = True
        self.transport.protocol.eof_received()
        self.transport.protocol.connection_lost(None)

    # protocol
    def _startup(self, pkt: bytes) -> None:
        code = _I32.unpack_from(pkt, 4)[0]
        if code == SSL_CODE:
            self.send(b"N")
            return
        if code == CANCEL_CODE:
            pid, key = _I32.unpack_from(pkt, 8)[0], pkt[12:16]
            self.cancel_for = (pid, key)
            self.net.cancel_requests.append((pid, key))
            target = self.net.backend(pid)
            if target is not None and target.key == key and target.held:
                target.answer_held(error=CANCELED)
            self.hang_up()
            return
        parts = pkt[8:].split(b"\0")
        self.startup_params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 2, 2)}
        if self.script.password is None:
            self._logged_in()
        else:
            self.phase = "auth"
            self.send(build.auth_request(5, self.salt))

    def _logged_in(self) -> None:
        self.phase = "work"
        out = build.auth_request(0)
        out += b"".join(build.parameter_status(k, v) for k, v in self.params.items())
        out += build.msg(b"K", _I32.pack(self.pid) + self.key)
        self.send(out + build.ready_for_query(b"I"))

    def _message(self, t: bytes, body: bytes) -> None:
        if self.phase == "auth":
            user = self.startup_params["user"]
            if t == b"p" and md5_password(self.script.password, user, self.salt)[5:] == body:
                self._logged_in()
            else:
                self.send(build.error_response(f'password authentication failed for user "{user}"', "28P01"))
                self.hang_up()
            return
        if t == b"X":
            self.terminated = True
            self.closed = True
            return
        if t == b"Q":
            sql = body[:-1].decode()
            self.queries.append(sql)
            if sql in self.script.hold:
                self.held.append(sql)
                return
            if _SETS.fullmatch(sql):
                self.send(self._run_sets(sql) + build.ready_for_query(self.status))
                return
            self.send(self._run(sql) + build.ready_for_query(self.status))
        elif t == b"S":
            self.skipping = False
            self.send(build.ready_for_query(self.status))
        elif self.skipping:
            return                                  # after an error, extended messages wait for the Sync
        elif t == b"P":
            name, rest = body.split(b"\0", 1)
            if name and name in self.statements:
                self._extended_error(f'prepared statement "{name.decode()}" already exists', "42P05")
                return
            if name:
                self.statements[name] = rest.split(b"\0", 1)[0].decode()
            self.send(build.msg(b"1"))
        elif t == b"B":
            stmt = body.split(b"\0", 2)[1]
            if stmt and stmt not in self.statements:
                self._extended_error(f'prepared statement "{stmt.decode()}" does not exist', "26000")
                return
            self.send(build.msg(b"2"))
        elif t == b"D":
            self.send(build.row_description([("?column?", 23)]))
        elif t == b"E":
            self.send(build.data_row(["1"]) + build.command_complete("SELECT 1"))
        elif t == b"C":
            if body[:1] == b"S":
                self.statements.pop(body[1:].split(b"\0", 1)[0], None)
            self.send(build.msg(b"3"))

    def _extended_error(self, text: str, code: str) -> None:
        self.skipping = True
        if self.status == b"T":
            self.status = b"E"
        self.send(build.error_response(text, code, "ERROR"))

    def _run(self, sql: str) -> bytes:
        word = sql.split(None, 1)[0].upper() if sql.strip() else ""
        if not word:
            return build.empty_query_response()
        if word in ("BEGIN", "START"):
            self.status = b"T"
            return build.command_complete("BEGIN")
        if word in ("COMMIT", "ROLLBACK", "END"):
            tag = "ROLLBACK" if self.status == b"E" else word
            self.status = b"I"
            return build.command_complete(tag)
        if self.status == b"E":
            return build.error_response("current transaction is aborted, commands ignored until end of "
                                        "transaction block", "25P02", "ERROR")
        if word == "SET":
            return build.command_complete("SET")
        if word == "DISCARD":
            return build.command_complete("DISCARD ALL")
        if word == "SELECT" and sql.upper().startswith("SELECT 1/0"):
            if self.status == b"T":
                self.status = b"E"
            return build.error_response("division by zero", "22012", "ERROR")
        if word == "SELECT":
            return result("SELECT 1", rows=[["1"]])
        return build.error_response(f'syntax error at or near "{sql.split()[0]}"', "42601", "ERROR")

    def _run_sets(self, sql: str) -> bytes:
        """`SET name='value';` statements (what the pooler sends to apply a client's parameters): a
        CommandComplete each, then ParameterStatus for the reported parameters that changed."""
        out, changed = b"", {}
        for name, value in _SET.findall(sql):
            name = name.strip('"')
            value = value[1:-1].replace("''", "'") if value.startswith("'") else value.strip()
            out += build.command_complete("SET")
            for known in self.params:
                if known.lower() == name.lower():
                    self.params[known] = changed[known] = value
        return out + b"".join(build.parameter_status(k, v) for k, v in changed.items())

    def answer_held(self, error: tuple[str, str, str] | None = None) -> None:
        """Answer the oldest held query: its result, or the ErrorResponse `error` (severity, code, text)."""
        sql = self.held.pop(0)
        if error is not None:
            out = build.error_response(error[2], error[1], error[0])
            if self.status == b"T":
                self.status = b"E"
        else:
            out = self._run(sql)
        self.send(out + build.ready_for_query(self.status))


class FakeNet:
    """Stands in for the network: the loop's connection methods open FakePostgres backends."""

    def __init__(self, loop, script: Script):
        self.loop = loop
        self.script = script
        self.backends: list[FakePostgres] = []        # every connection opened, cancel connections included
        self.cancel_requests: list[tuple[int, bytes]] = []
        self.addresses: list = []
        loop.create_unix_connection = self._create_unix_connection
        loop.create_connection = self._create_connection

    async def _create_unix_connection(self, protocol_factory, path=None, **kw):
        return self._open(protocol_factory, ("unix", path))

    async def _create_connection(self, protocol_factory, host=None, port=None, **kw):
        return self._open(protocol_factory, ("tcp", host, port))

    def _open(self, protocol_factory, address):
        self.addresses.append(address)
        if self.script.refuse_connect:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = protocol_factory()
        transport = FakeTransport(self.loop, protocol, peername="", sockname="")
        backend = FakePostgres(self, transport)
        transport.far = backend
        self.backends.append(backend)
        protocol.connection_made(transport)
        return transport, protocol

    def backend(self, pid: int) -> FakePostgres | None:
        return next((b for b in self.backends if b.pid == pid), None)

    @property
    def sessions(self) -> list[FakePostgres]:
        """Backends that are server connections (not cancel requests)."""
        return [b for b in self.backends if b.cancel_for is None]


# --- the pooler -------------------------------------------------------------------------------------------

INI = """\
[databases]
app = host={sockdir} port=5432 dbname=appdb {dbextra}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
unix_socket_dir =
auth_type = {auth_type}
auth_file = {userlist}
pool_mode = {pool_mode}
default_pool_size = {pool_size}
logfile =
pidfile =
{extra}
"""

USERLIST = '"app" "secret"\n"md5user" "md5{md5}"\n'


class FakeClient:
    """A client connection: a pooler Client on a FakeTransport, fed by the test."""

    def __init__(self, pooler: PoolerHarness, port: int):
        self.h = pooler
        self.protocol = Client(listener=None)
        self.transport = FakeTransport(pooler.loop, self.protocol, peername=("127.0.0.1", port))
        self.protocol.connection_made(self.transport)
        self.key = b""

    def send(self, data: bytes, settle: bool = True) -> bytes:
        """Feed bytes to the client protocol, let the loop run, return what the client was sent."""
        self.protocol.data_received(data)
        if settle:
            self.h.settle()
        return self.transport.take()

    def eof(self) -> bytes:
        self.protocol.eof_received()
        self.transport.closed = True
        self.protocol.connection_lost(None)
        self.h.settle()
        return self.transport.take()

    @property
    def state(self) -> str:
        return self.protocol.state

    @property
    def server(self):
        return self.protocol.link

    def login(self, user: str = "app", database: str = "app", password: str | None = None) -> bytes:
        """Startup (+ md5 password): returns everything sent to the client."""
        out = self.send(startup(user, database))
        if password is not None:
            assert out[:9] == b"R\0\0\0\x0c\0\0\0\x05" and len(out) == 13, out   # AuthenticationMD5Password
            out = self.send(md5_password(password, user, out[9:13]))
        keys = [body for t, body in split_messages(out) if t == b"K"] if out[-6:-1] == b"Z\0\0\0\x05" else []
        self.key = keys[0] if keys else b""
        return out

    def cancel_key(self) -> bytes:
        """The key of the BackendKeyData the welcome gave (kept by login())."""
        assert self.key, "no welcome seen"
        return self.key


class PoolerHarness:
    """A configured pooler in this process: registry filled from a pgbouncer.ini, a real asyncio loop whose
    connection methods reach FakePostgres backends, captured log lines."""

    def __init__(self, tmp_path: Path, monkeypatch, *, auth_type="md5", pool_mode="session", pool_size=2,
                 extra: str = "", dbextra: str = "", script: Script | None = None):
        self.tmp = tmp_path
        self.logs: list[str] = []
        monkeypatch.setattr(log, "write", self._log)
        for attr in ("verbose", "quiet", "logfile_path", "syslog_on"):     # Loader.apply configures log
            monkeypatch.setattr(log, attr, getattr(log, attr))
        userlist = tmp_path / "userlist.txt"
        md5 = hashlib.md5(b"md5passmd5user").hexdigest()
        userlist.write_text(USERLIST.format(md5=md5))
        ini = tmp_path / "pgbouncer.ini"
        ini.write_text(INI.format(sockdir=tmp_path / "pg", auth_type=auth_type, userlist=userlist,
                                  pool_mode=pool_mode, pool_size=pool_size, extra=extra, dbextra=dbextra))
        self.cfg = load_config(str(ini))
        self.loop = asyncio.new_event_loop()
        self.net = FakeNet(self.loop, script or Script())
        registry.__init__()
        registry.loop = self.loop
        self.pooler = Pooler(self.cfg)
        registry.main = self.pooler
        for name in ("new_console", "hold_transport", "admin_tick"):    # wired for this test only
            monkeypatch.setattr(hooks, name, getattr(hooks, name))
        wire_hooks()
        self.pooler.loader.apply(self.cfg)
        self.janitor = Janitor()
        self.ports = iter(range(40001, 50000))

    def _log(self, level: str, message: str) -> None:
        self.logs.append(f"{level} {message}")

    def close(self) -> None:
        for pool in list(registry.pools.values()):
            for c in pool.all_clients():
                c.close("test over", quiet=True)
        self.settle()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.settle()
        self.loop.close()
        registry.__init__()

    def settle(self) -> None:
        """Run the loop until what the fakes scheduled (answers, connection_lost, connect tasks) has happened:
        no task left unfinished and nothing written or delivered for a few turns."""
        self.loop.run_until_complete(_settle())

    def client(self) -> FakeClient:
        return FakeClient(self, next(self.ports))

    def pool(self, db: str = "app", user: str = "app"):
        return registry.pools[(db, user)]

    def janitor_tick(self, after: float) -> None:
        """One janitor visit `after` seconds from now (explicit `now`), then the loop runs."""
        self.janitor.visit(time.monotonic() + after)
        self.settle()

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.logs if text in line]


async def _settle(quiet_turns: int = 4, limit: int = 500) -> None:
    quiet = 0
    me = asyncio.current_task()
    for _ in range(limit):
        before = FakeTransport.events
        await asyncio.sleep(0)
        busy = any(not t.done() for t in asyncio.all_tasks() if t is not me)
        quiet = 0 if busy or FakeTransport.events != before else quiet + 1
        if quiet >= quiet_turns:
            return
    raise AssertionError(f"the loop did not settle in {limit} turns")


def pool_state(pool) -> dict[str, int]:
    """Non-empty state lists of a pool: {'active_clients': 1, 'idle_servers': 1, ...}. Checks the house rule
    on the way: every client and server is in exactly one list, the one its state names."""
    seen = set()
    for mapping in (CLIENT_LISTS, SERVER_LISTS):
        for name in set(mapping.values()):
            for obj in getattr(pool, name):
                assert mapping.get(obj.state) == name, f"{obj!r} in {name} with state {obj.state}"
                assert id(obj) not in seen, f"{obj!r} in two lists"
                seen.add(id(obj))
    names = dict.fromkeys(list(CLIENT_LISTS.values()) + list(SERVER_LISTS.values()))
    return {name: len(getattr(pool, name)) for name in names if getattr(pool, name)}
