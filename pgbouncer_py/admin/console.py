"""The admin console (virtual database 'pgbouncer'): command parsing, access rules and dispatch."""

import re
import struct

from pgbouncer_py import PGBOUNCER_VERSION
from pgbouncer_py.log import log
from pgbouncer_py.objects import registry
from pgbouncer_py.proto import build
from pgbouncer_py.proto import constants as C
from pgbouncer_py.proto.messages import ProtocolError, parse_query
from pgbouncer_py.proto.scan import CLIENT_TYPES

WELCOME_PARAMS = (("server_version", f"{PGBOUNCER_VERSION}/bouncer"), ("client_encoding", "UTF8"),
                  ("server_encoding", "UTF8"), ("DateStyle", "ISO"), ("TimeZone", "GMT"),
                  ("standard_conforming_strings", "on"), ("is_superuser", "on"))

_WORD = r'(?:[0-9a-z_]+|"[^"]*")'
_CMD_RE = re.compile(rf"^\s*({_WORD})(?:\s+({_WORD}))?\s*(?:;\s*)?$", re.IGNORECASE)
_SET_RE = re.compile(r"^\s*set\s+([0-9a-z_]+|\"[^\"]*\")\s*(?:=|\s+to\s+)\s*('(?:[^']|'')*'|[^\s;']+)\s*(?:;\s*)?$",
                     re.IGNORECASE | re.DOTALL)
_SHUTDOWN_RE = re.compile(r"^\s*shutdown(?:\s+(wait_for_servers|wait_for_clients))?\s*(?:;\s*)?$", re.IGNORECASE)
# pgbouncer-py extension (docs/extensions.md): PAUSE [db] TIMEOUT seconds [FORCE]
_PAUSE_TIMEOUT_RE = re.compile(rf"^\s*pause(?:\s+({_WORD}))?\s+timeout\s+([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                               r"(?:\s+(force))?\s*(?:;\s*)?$", re.IGNORECASE)

_NOT_FOR_CONSOLE = frozenset(b"Fdcf")    # FunctionCall and COPY messages: an ERROR, then "bad packet" (PgBouncer's)

FAKE_SHOW = {"client_encoding": "UTF-8", "default_transaction_isolation": "read committed",
             "standard_conforming_strings": "on", "datestyle": "ISO", "timezone": "GMT"}


class AdminError(Exception):
    """An error answered to the console client as ERROR 08P01 (the session goes on)."""

    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message)
        self.sqlstate = sqlstate


def unquote(word: str | None) -> str | None:
    if word is None:
        return None
    if word.startswith('"') and word.endswith('"'):
        return word[1:-1]
    return word.lower()


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
        from pgbouncer_py.admin import commands
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
            from pgbouncer_py.admin import extended
            extended.message(self, mtype, body)
            return
        sql = parse_query(body)
        self.run(sql)

    def run(self, sql: str, *, ready: bool = True) -> None:
        """Answer one simple-protocol query; ready=False when the caller sends ReadyForQuery itself."""
        from pgbouncer_py.admin import commands
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


def parse_command(sql: str) -> tuple[str, str | None] | None:
    m = _CMD_RE.match(sql)
    if m is None:
        return None
    return unquote(m.group(1)), unquote(m.group(2))


def parse_set(sql: str) -> tuple[str, str] | None:
    m = _SET_RE.match(sql)
    if m is None:
        return None
    key = unquote(m.group(1))
    val = m.group(2)
    if val.startswith("'"):
        val = val[1:-1].replace("''", "'")
    return key, val


def parse_pause_timeout(sql: str) -> tuple[str | None, float, bool] | None:
    """(database or None, seconds, force) for PAUSE [db] TIMEOUT n [FORCE], else None."""
    m = _PAUSE_TIMEOUT_RE.match(sql)
    if m is None:
        return None
    return unquote(m.group(1)), float(m.group(2)), m.group(3) is not None


def parse_shutdown(sql: str) -> str | None:
    """'' for plain SHUTDOWN, the mode in lower case, or None when it is not a SHUTDOWN."""
    m = _SHUTDOWN_RE.match(sql)
    if m is None:
        return None
    return (m.group(1) or "").lower()
