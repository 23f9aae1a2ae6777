"""Server side: connect and log in to PostgreSQL; in the work phase the relay handler (net/sbuf.py) that tracks
ReadyForQuery and ParameterStatus on the way to the linked client and decides when the transaction is over."""

import asyncio
import os
import ssl
import struct
import time
from time import monotonic

from pgbouncer_py import prepare, varcache
from pgbouncer_py.auth import md5 as md5auth
from pgbouncer_py.auth import scram
from pgbouncer_py.log import log
from pgbouncer_py.net import dns, tls
from pgbouncer_py.net.sbuf import DONE, HOLD, STOP, LinkedFlow, relay_down
from pgbouncer_py.netutil import format_addr, local_addr_of, tune_tcp
from pgbouncer_py.objects import SV_FREE, SV_LOGIN, registry, release, set_server_state, unlink
from pgbouncer_py.proto import build
from pgbouncer_py.proto import constants as C
from pgbouncer_py.proto.messages import (
    MessageReader,
    ProtocolError,
    parse_auth_request,
    parse_error_fields,
    parse_parameter_status,
    parse_sasl_mechanisms,
)
from pgbouncer_py.proto.scan import server_scan as _server_scan

_HDR = struct.Struct("!cI")

PH_CONNECT, PH_SSL, PH_LOGIN, PH_WORK, PH_INTERNAL, PH_CLOSED = range(6)


class Server(LinkedFlow, asyncio.Protocol):
    """One connection to PostgreSQL, owned by a pool."""

    def __init__(self, pool, host: str, port: int, unix_path: str | None, pool_side):
        self.pool = pool
        self.stats = pool.db.stats      # (a pool's database, and its stats object, never change)
        self.pool_side = pool_side      # pooling.PoolSide: told of the login and the exit (pooling creates servers)
        self.state = None
        self.phase = PH_CONNECT
        self.transport = None
        self.link = None
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.reader = MessageReader()
        self.params = varcache.Values()
        self.vars_checked_at = 0         # varcache.covered: params version the set below is valid for
        self.vars_checked: set = set()   # client vars versions known to be covered by params
        self.backend_pid = 0
        self.backend_key = b""
        self.cancel_key_raw = b""
        self.expect_rfq = 0
        self.tail = b""                 # the relay's incomplete message (net/sbuf.py)
        self.tail_need = 0
        self.skip = 0
        self.relay_arg = None
        self.ready = False              # idle, not in a transaction
        self.close_needed = False
        self.created = time.monotonic()
        self.connect_time = time.time()
        self.request_time = time.time()
        self.idle_since = time.monotonic()
        self.query_start = 0.0
        self.xact_start = 0.0
        self.internal_done = None       # callback when an internal query (reset, SET, check) finishes
        self.internal_error = None
        self.internal_rows = None       # DataRow bodies of an internal query (auth_query)
        self.tls = ""
        self.tls_generation = tls.state.generation   # which server-side TLS configuration made this connection
        self._tls_try = None            # None: as server_tls_sslmode says; True/False: retry with/without TLS
        self._reconnecting = False
        self._handshaking = False       # start_tls running: its outcome, not connection_lost, decides
        self.local_addr = ("", 0)
        self.scram_client = None
        self.paused_peer = False
        self.closing_reason = None
        self.connect_task = None
        self.prepared = {}              # server-side prepared statements: id -> Statement, LRU order (issue 7)
        self.psq = None                 # prepare: queue of expected responses while tracking, else None
        self.setting_vars = False
        self.replication = None         # "physical"/"logical": a dedicated server of one replication client
        self.replication_client = None  # that client, until the server is linked to it
        self.last_rfq = 0.0             # monotonic time of the last ReadyForQuery (idle_transaction_timeout)
        self.id = next(registry.socket_ids)    # SHOW SERVERS `id`: one counter with the clients, creation order
        self.cancels = 0                # cancel requests on their way to this backend (not reused before they land)

    @property
    def closed(self) -> bool:
        return self.phase == PH_CLOSED

    # --- identification for logs and the console ---
    def prefix(self) -> str:
        db = self.pool.db.name if self.pool else "(nodb)"
        user = self.pool.user.name if self.pool else "(nouser)"
        addr = format_addr(self.host, self.port, self.unix_path is not None)
        return f"S-0x{id(self):x}: {db}/{user}@{addr} "

    # --- connecting ---
    def start_connect(self) -> None:
        loop = registry.loop
        self.connect_task = loop.create_task(self._connect())

    async def _connect(self) -> None:
        cfg = registry.cfg
        loop = registry.loop
        try:
            if self.unix_path:
                coro = loop.create_unix_connection(lambda: self, self.unix_path)
            else:
                coro = self._resolve_and_connect(loop)
            timeout = cfg.server_connect_timeout or None
            await asyncio.wait_for(coro, timeout)
        except dns.DNSError:
            self.close("server DNS lookup failed", connect_failed=True)    # the resolver logged why
        except TimeoutError:
            self.close("connect timeout", connect_failed=True)
        except OSError as e:
            log.debug(f"{self.prefix()}connect failed: {e.strerror or e}")
            self.close("connect failed", connect_failed=True)
        except asyncio.CancelledError:
            pass

    async def _resolve_and_connect(self, loop):
        """Host names go through the asynchronous resolver with its TTL cache (never blocking the loop)."""
        addrs = await dns.resolver.resolve(self.host, registry.cfg)
        for addr in addrs[:-1]:
            try:
                return await loop.create_connection(lambda: self, addr, self.port)
            except OSError:
                continue
        return await loop.create_connection(lambda: self, addrs[-1], self.port)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._reconnecting = False
        cfg = registry.cfg
        tune_tcp(transport, cfg)
        self.local_addr = local_addr_of(transport)
        if self.phase == PH_CLOSED:
            transport.abort()
            return
        if cfg.log_connections:
            la = self.local_addr
            src = format_addr(la[0], la[1], False) if self.unix_path is None else "unix socket"
            log.info(f"{self.prefix()}new connection to server (from {src})")
        self.tls_generation = tls.state.generation
        use_tls = self._tls_try
        if use_tls is None:
            # libpq: allow starts without TLS, prefer and stricter modes ask for it; never over unix sockets
            use_tls = tls.state.server_ctx is not None and tls.state.server_mode != "allow"
        if use_tls and self.unix_path is None and tls.state.server_ctx is not None:
            self.phase = PH_SSL
            transport.write(build.ssl_request())
        else:
            self._send_startup()

    def _send_startup(self) -> None:
        self.phase = PH_LOGIN
        db = self.pool.db
        params = {"database": db.dbname, "user": self.pool.user.name}
        conf = db.conf
        if conf is not None:
            for key, pname in (("client_encoding", "client_encoding"), ("datestyle", "DateStyle"),
                               ("timezone", "TimeZone"), ("application_name", "application_name")):
                v = getattr(conf, key, None)
                if v:
                    params[pname] = v
        if self.replication is not None:
            params["replication"] = "database" if self.replication == "logical" else "true"
            client = self.replication_client
            if client is not None:
                # the dedicated server starts as the client asked: its parameters and its options, verbatim
                params.update(client.vars)
                options = client.replication_options()
                if options:
                    params["options"] = options
        self.transport.write(build.startup_message(params))

    async def _start_tls(self) -> None:
        ctx = tls.state.server_ctx
        kw = {}
        if registry.cfg.server_connect_timeout:
            kw["ssl_handshake_timeout"] = registry.cfg.server_connect_timeout
        self._handshaking = True
        try:
            new_transport = await registry.loop.start_tls(self.transport, self, ctx, server_hostname=self.host, **kw)
        except (ssl.SSLError, OSError, ConnectionError, ValueError, TimeoutError, RuntimeError) as e:
            self._handshaking = False
            if self.phase == PH_CLOSED:
                return
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            if isinstance(reason, str) and reason.isupper():
                reason = reason.lower().replace("_", " ")
            if tls.state.server_mode == "prefer" and self._tls_try is None:
                # libpq's prefer: a failed TLS attempt is followed by one without TLS
                log.debug(f"{self.prefix()}TLS handshake failed ({reason}), retrying without TLS")
                self._reconnect(False)
                return
            self.transport = None
            if isinstance(e, TimeoutError):
                self.close("connect timeout", connect_failed=True)
                return
            # PgBouncer's words: the handshake error, then the connection is "crashed"; retried later
            log.warning(f"TLS handshake error: handshake failed: {_tls_error_text(e, reason)}")
            self.close("server conn crashed?", connect_failed=True)
            return
        self._handshaking = False
        if self.phase == PH_CLOSED:
            if new_transport is not None:
                new_transport.abort()
            return
        if new_transport is None:
            self.close("server conn crashed?", connect_failed=True)
            return
        self.transport = new_transport
        self.tls = tls.connection_info(new_transport.get_extra_info("ssl_object"))
        self._send_startup()

    def _reconnect(self, use_tls: bool) -> None:
        """libpq's second attempt (allow: now with TLS; prefer: now without): a fresh TCP connection."""
        old, self.transport = self.transport, None
        self._tls_try = use_tls
        self._reconnecting = True
        if old is not None:
            old.abort()
        self.reader = MessageReader()
        self.params.clear()
        self.scram_client = None
        self.backend_pid, self.backend_key = 0, b""
        self.tls = ""
        self.phase = PH_CONNECT
        self.start_connect()

    # --- incoming data ---
    def data_received(self, data: bytes) -> None:
        try:
            if self.phase == PH_WORK and self.internal_done is None:
                client = self.link
                if client is not None:     # HOT: the relay (net/sbuf.py), as in _forward
                    self.stats.bytes_sent += len(data)
                    if self.psq is None:
                        if relay_down(self, data, client.transport, _server_scan, _relay_at) == DONE:
                            release(self)
                    elif prepare.server_data(self, data, client) == DONE:
                        release(self)
                    return
            self._slow_path(data)
        except ProtocolError as e:
            self.close(f"server sent bad packet: {e}")
        except Exception as e:  # never let one connection take down the process
            log.error(f"{self.prefix()}internal error in server handler: {e!r}")
            self.close("internal error")

    def _forward(self, data: bytes, client) -> None:
        """Relay server bytes to the linked client (net/sbuf.py): relay_at is the handler, or prepared-statement
        tracking's while a queue of expected answers is kept (server.psq)."""
        self.pool.db.stats.bytes_sent += len(data)
        if self.psq is None:
            r = relay_down(self, data, client.transport, _server_scan, _relay_at)
        else:
            r = prepare.server_data(self, data, client)
        if r == DONE:
            release(self)

    def relay_at(self, data, pos: int, end: int) -> int:
        """HOT: the relay's handler for untracked server bytes, at what server_scan stops at: ReadyForQuery,
        ParameterStatus, a 16/19-byte CommandComplete (maybe DEALLOCATE ALL / DISCARD ALL). At ReadyForQuery
        (prepare's handler brings it here too) it accounts the query and transaction and makes the one release
        decision: DONE when the server goes back to the pool, STOP on a statement-mode violation (a
        transaction was opened: the client gets what came before, then the pool's error), else forward."""
        if end > len(data):
            return HOLD
        t = data[pos]
        if t == 90:                          # 'Z' ReadyForQuery
            now = monotonic()
            if self.expect_rfq > 0:
                self.expect_rfq -= 1
            stats = self.stats
            if self.query_start:
                stats.query_count += 1
                stats.query_time += int((now - self.query_start) * 1e6)
                self.query_start = 0.0
            self.last_rfq = now
            if data[pos + 5] == 73:          # 'I'
                self.ready = True
                if self.xact_start:
                    stats.xact_count += 1
                    stats.xact_time += int((now - self.xact_start) * 1e6)
                    self.xact_start = 0.0
                # the one release decision: in transaction and statement mode, when no other ReadyForQuery
                # is expected and no prepared-statement answer is outstanding, the client's transaction is over
                client = self.link
                if self.expect_rfq == 0 and client is not None and client.pool_mode != "session" and not self.psq:
                    return DONE
                return end
            self.ready = False
            if not self.xact_start:
                self.xact_start = now
            client = self.link
            if client is not None and client.pool_mode == "statement" and self.expect_rfq == 0:
                self.relay_arg = self._statement_mode_violation
                return STOP
            return end
        client = self.link
        if t == 83:                          # 'S' ParameterStatus
            name, value = parse_parameter_status(data[pos + 5:end])
            self.params[name] = value
            client.set_var(name, value)      # the server's spelling of the value becomes the client's
            if log.verbose:
                log.debug(f"{client.prefix()}setting client var: {name}='{value}'")
        else:
            prepare.command_complete_hot(self, client, data, pos, end)
        return end

    def _statement_mode_violation(self) -> None:
        self.close("transaction blocks not allowed in statement pooling mode")

    def _slow_path(self, data: bytes) -> None:
        if self.phase == PH_SSL:
            b = data[:1]
            rest = data[1:]
            strict = tls.state.server_mode in ("require", "verify-ca", "verify-full")
            if b == b"S":
                if rest:
                    # bytes after 'S' were not protected by TLS (CVE-2021-23222): do not use them
                    self.close("server sent unencrypted data after SSL response", connect_failed=True)
                    return
                self.phase = PH_CONNECT
                self.transport.pause_reading()
                registry.loop.create_task(self._start_tls())
                return
            if b == b"N":
                if strict:
                    self.close("server refused SSL", connect_failed=True)
                    return
                self._send_startup()
                if rest:
                    self._slow_path(rest)
                return
            if b == b"E" and not strict:
                # a server that does not know SSLRequest answers with an error and hangs up: try again without
                self._reconnect(False)
                return
            self.close("bad sslreq answer", connect_failed=True)
            return
        self.reader.feed(data)
        while self.phase not in (PH_CLOSED,):
            if self.phase == PH_WORK and self.link is not None and self.internal_done is None:
                rest = self.reader.take_rest()
                if rest:
                    self._forward(rest, self.link)
                return
            m = self.reader.next()
            if m is None:
                return
            mtype, body = m
            if self.phase == PH_LOGIN:
                self._login_message(mtype, body)
            else:
                self._idle_message(mtype, body)

    def _login_message(self, mtype: int, body: bytes) -> None:
        if mtype == C.B_AUTH:
            self._auth_request(body)
        elif mtype == C.B_PARAMETER_STATUS:
            name, value = parse_parameter_status(body)
            self.params[name] = value
        elif mtype == C.B_BACKEND_KEY:
            if len(body) >= 8:
                self.backend_pid = struct.unpack_from("!I", body)[0]
                self.backend_key = body[4:]
        elif mtype == C.B_ERROR:
            f = parse_error_fields(body)
            sev = f.get("S", "ERROR")
            msg = f.get("M", "")
            if self._tls_try is None and not self.tls and self.unix_path is None and \
                    tls.state.server_mode == "allow" and tls.state.server_ctx is not None:
                # libpq's allow: the attempt without TLS was refused, the second one uses TLS
                log.debug(f"{self.prefix()}login without TLS failed ({msg}), retrying with TLS")
                self._reconnect(True)
                return
            code = f.get("C", "08P01")
            if self.replication is not None:
                # a dedicated replication server: its client is told "login failed", the log says why
                log.error(f"S: login failed: {sev}: {msg}")
                self.close("login failed", login_error="login failed")
                return
            log.warning(f"server login failed: {sev} {msg}")
            if code == C.SQLSTATE_CANNOT_CONNECT_NOW:
                # "the database system is starting up / shutting down": waiting clients stay queued
                self.close(msg, connect_failed=True)
                return
            self.close(msg, login_error=msg, login_sqlstate=code)
        elif mtype == C.B_READY:
            self.phase = PH_WORK
            self.ready = True
            self.pool_side.login_done(self)
        elif mtype == C.B_NOTICE or mtype == C.B_NEGOTIATE_VERSION:
            pass
        else:
            self.close(f"unexpected message during login: {chr(mtype)!r}",
                       login_error="server login failed: unexpected message")

    def _auth_request(self, body: bytes) -> None:
        code, extra = parse_auth_request(body)
        if code == C.AUTH_OK:
            return
        password = self.pool_side.password(self.pool)
        user = self.pool.user
        if code == C.AUTH_CLEARTEXT:
            if password is None or password.startswith("md5") or password.startswith("SCRAM-SHA-256$"):
                self._login_fail("server login failed: wrong password type")
                return
            self.transport.write(build.password_message(password.encode() + b"\0"))
        elif code == C.AUTH_MD5:
            if password is None or password.startswith("SCRAM-SHA-256$"):
                self._login_fail("server login failed: wrong password type")
                return
            resp = md5auth.md5_response(password, user.name, extra[:4])
            self.transport.write(build.password_message(resp.encode() + b"\0"))
        elif code == C.AUTH_SASL:
            mechs = parse_sasl_mechanisms(extra)
            if "SCRAM-SHA-256" not in mechs:
                self._login_fail("server login failed: none of the server's SASL authentication mechanisms are supported")
                return
            if password is not None and password.startswith("SCRAM-SHA-256$"):
                if user.scram_client_key is None:
                    self._login_fail("server login failed: wrong password type")
                    return
                self.scram_client = scram.ScramClient(user.name, client_key=user.scram_client_key,
                                                      server_key=user.scram_server_key)
            elif password is None or password.startswith("md5"):
                self._login_fail("server login failed: wrong password type")
                return
            else:
                self.scram_client = scram.ScramClient(user.name, password=password)
            self.transport.write(build.sasl_initial_response("SCRAM-SHA-256", self.scram_client.client_first()))
        elif code == C.AUTH_SASL_CONTINUE:
            if self.scram_client is None:
                self._login_fail("server login failed: unexpected SASL message")
                return
            try:
                self.transport.write(build.password_message(self.scram_client.client_final(extra)))
            except scram.ScramError as e:
                self._login_fail(f"server login failed: {e}")
        elif code == C.AUTH_SASL_FINAL:
            try:
                self.scram_client.verify_server_final(extra)
            except (scram.ScramError, AttributeError) as e:
                self._login_fail(f"server login failed: {e}")
        else:
            self._login_fail(f"server login failed: unsupported authentication method {code}")

    def _login_fail(self, msg: str) -> None:
        log.warning(f"{self.prefix()}{msg}")
        self.close("login failed", login_error=msg)

    def _idle_message(self, mtype: int, body: bytes) -> None:
        """Messages while no client is linked: internal queries (reset, SET, check) or asynchronous ones."""
        if mtype == C.B_PARAMETER_STATUS:
            name, value = parse_parameter_status(body)
            self.params[name] = value
            if self.setting_vars and self.link is not None and log.verbose:    # pooling._vars_applied adopts it
                log.debug(f"{self.link.prefix()}setting client var: {name}='{value}'")
            return
        if self.internal_done is not None:
            if mtype == C.B_ERROR:
                f = parse_error_fields(body)
                self.internal_error = f.get("M", "error")
            elif mtype == C.B_DATA_ROW and self.internal_rows is not None:
                self.internal_rows.append(body)
            elif mtype == C.B_COMMAND_COMPLETE and self.prepared:
                prepare.deallocate_all_tag(self, body)
            elif mtype == C.B_READY:
                self.ready = body[:1] == b"I"
                done, self.internal_done = self.internal_done, None
                err, self.internal_error = self.internal_error, None
                done(self, err)
            return
        if mtype == C.B_NOTICE or mtype == C.B_NOTIFICATION:
            return
        if mtype == C.B_ERROR:
            f = parse_error_fields(body)
            log.warning(f"{self.prefix()}got packet 'E' from server when not linked")
            log.debug(f"{self.prefix()}the server said: {f.get('S', '')} {f.get('M', '')}")
            self.close("server conn crashed?")
            return
        self.close(f"idle server got unexpected message: {chr(mtype)!r}")

    def run_internal(self, sql: str, done) -> None:
        """Send an internal query; done(server, error_or_None) is called at its ReadyForQuery."""
        self.internal_done = done
        self.internal_error = None
        self.transport.write(build.query(sql))

    def connection_lost(self, exc) -> None:
        if self._handshaking or self._reconnecting and self.transport is None:
            return                      # handshake failures and libpq-style retries are handled where they happen
        if self.phase != PH_CLOSED:
            if self.phase == PH_LOGIN or self.phase == PH_SSL or self.phase == PH_CONNECT:
                self.close("server closed connection during login", connect_failed=True)
            else:
                self.close("server conn crashed?" if self.link is not None or not self.ready
                           else "server closed connection")

    # --- the one exit path ---
    def close(self, reason: str, *, login_error: str | None = None, login_sqlstate: str = "08P01",
              connect_failed: bool = False, notify_client: bool = True) -> None:
        """The one exit. login_error: the login was refused (PostgreSQL's message, or ours), which waiting
        clients may be told; connect_failed: the server could not be reached or the connection broke before
        the login finished, so the pool retries after server_login_retry while its clients stay queued."""
        if self.phase == PH_CLOSED:
            return
        self.phase = PH_CLOSED
        self.closing_reason = reason
        age = int(time.monotonic() - self.created)
        if registry.cfg.log_disconnections:
            log.info(f"{self.prefix()}closing because: {reason} (age={age}s)")
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.transport is not None:
            try:
                if self.state != SV_LOGIN:
                    self.transport.write(build.terminate())
            except Exception:
                pass
            self.transport.close() if self.ready else self.transport.abort()
        client = self.link
        if client is not None:
            unlink(client, self)
        set_server_state(self, SV_FREE)
        self.pool_side.closed(self, client, reason, login_error, login_sqlstate, connect_failed, notify_client)


_relay_at = Server.relay_at


def _tls_error_text(e: BaseException, reason) -> str:
    """OpenSSL's words for a failed handshake ('certificate verify failed: ...'), without Python's decoration."""
    verify = getattr(e, "verify_message", None)
    if isinstance(reason, str) and verify:
        return f"{reason}: {verify}"
    return str(reason)


def server_unix_path(host: str | None, port: int) -> str | None:
    if host is None or host == "":
        return os.path.join("/var/run/postgresql" if os.path.isdir("/var/run/postgresql") else "/tmp",
                            f".s.PGSQL.{port}")
    if host.startswith("/"):
        return os.path.join(host, f".s.PGSQL.{port}")
    if host.startswith("@"):
        return "\0" + host[1:] + f"/.s.PGSQL.{port}"
    return None
