"""The admin console session (virtual database 'pgbouncer'): welcome, message dispatch (simple protocol here,
extended in extended.py), deferred answers and the admin access check; commands.py runs the commands."""

import struct

from pgbouncer_py import PGBOUNCER_VERSION
from pgbouncer_py.admin import commands, extended
from pgbouncer_py.admin.parse import (  # noqa: F401  (the parsers' names here too: tests, fuzz targets)
    AdminError,
    parse_command,
    parse_pause_timeout,
    parse_set,
    parse_shutdown,
    unquote,
)
from pgbouncer_py.log import log
from pgbouncer_py.objects import registry
from pgbouncer_py.proto import build
from pgbouncer_py.proto import constants as C
from pgbouncer_py.proto.messages import ProtocolError, parse_query
from pgbouncer_py.proto.scan import CLIENT_TYPES

WELCOME_PARAMS = (("server_version", f"{PGBOUNCER_VERSION}/bouncer"), ("client_encoding", "UTF8"),
                  ("server_encoding", "UTF8"), ("DateStyle", "ISO"), ("TimeZone", "GMT"),
                  ("standard_conforming_strings", "on"), ("is_superuser", "on"))

_NOT_FOR_CONSOLE = frozenset(b"Fdcf")    # FunctionCall and COPY messages: an ERROR, then "bad packet" (PgBouncer's)


class Console:
    """One console session; reads simple-protocol queries and answers them."""

    def __init__(self, client):
        self.client = client
        self.deferred = False        # a command (PAUSE, SUSPEND, WAIT_CLOSE) will answer later
        self.deferred_rfq = True     # the deferred answer ends with ReadyForQuery (simple protocol)
        self.held: list = []         # messages that arrived while a command was deferred

    def welcome(self) -> None:
        out = [build.parameter_status(k, v) for k, v in WELCOME_PARAMS]
        out.append(build.msg(b"K", self.client.cancel_key))
        out.append(build.ready_for_query(b"I"))
        self.client.transport.write(b"".join(out))

    def closed(self) -> None:
        commands.console_closed(self)

    def send(self, data: bytes) -> None:
        t = self.client.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def message(self, mtype: int, body: bytes) -> None:
        if mtype == C.Q_TERMINATE:
            self.client.close("client close request")
            return
        if mtype not in CLIENT_TYPES:
            self.client.unknown_packet(bytes((mtype,)) + struct.pack("!I", len(body) + 4) + body[:3])
            return
        if mtype in _NOT_FOR_CONSOLE:
            self.send_error(f"unsupported packet type for admin console: {mtype}")
            self.send(build.ready_for_query(b"I"))
            self.client.close("bad packet", send_error=True)
            return
        if self.deferred:
            self.held.append((mtype, body))   # answered in order once the deferred command is done
            return
        if mtype != C.Q_QUERY:
            extended.message(self, mtype, body)
            return
        sql = parse_query(body)
        self.run(sql)

    def run(self, sql: str, *, ready: bool = True) -> None:
        """Answer one simple-protocol query; ready=False when the caller sends ReadyForQuery itself."""
        self.count_query()
        try:
            if sql.strip() == "" or sql.strip() == ";":
                self.send(build.empty_query_response())
                answer = None
            else:
                answer = commands.execute(self, sql)
        except (AdminError, ProtocolError) as e:
            self.send_error(str(e), getattr(e, "sqlstate", "08P01"))
            answer = None
        if isinstance(answer, str) and answer == "defer":
            self.deferred = True
            self.deferred_rfq = ready
            return      # the command answers later (PAUSE, SUSPEND, WAIT_CLOSE, ...)
        if answer is not None:
            self.send(answer if isinstance(answer, bytes) else commands.encode(answer))
        if ready and self.client.transport is not None:
            self.send(build.ready_for_query(b"I"))

    def count_query(self) -> None:
        stats = self.client.pool.db.stats
        stats.query_count += 1
        stats.xact_count += 1

    def send_error(self, message: str, sqlstate: str = "08P01") -> None:
        """ERROR to the console client; logged like PgBouncer (ERROR line, then the pooler error warning)."""
        log.error(message)
        if registry.cfg.log_pooler_errors:
            log.warning(f"{self.client.prefix()}pooler error: {message}")
        self.send(build.error_response(message, sqlstate, "ERROR"))

    def finish_deferred(self, data: bytes) -> None:
        """Send the late answer of a deferred command, then handle what the client sent meanwhile."""
        if not self.deferred:
            return
        self.deferred = False
        self.send(data + (build.ready_for_query(b"I") if self.deferred_rfq else b""))
        held, self.held = self.held, []
        for i, (mtype, body) in enumerate(held):
            if self.deferred or self.client.transport is None or self.client.transport.is_closing():
                self.held.extend(held[i:])
                break
            self.message(mtype, body)

    def require_admin(self) -> None:
        if self.client.admin_level < 2:
            raise AdminError("admin access needed")
