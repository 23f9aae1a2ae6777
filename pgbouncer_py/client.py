"""Client side: startup packet, authentication, then the work phase: the relay handler (net/sbuf.py) for what the
client sends to its linked server."""

import asyncio
import os
import socket
import struct
import sys
import time
from functools import partial

from pgbouncer_py import hooks, metrics, pooling, prepare, varcache
from pgbouncer_py.auth import login
from pgbouncer_py.log import log
from pgbouncer_py.net import listen, tls
from pgbouncer_py.net.sbuf import STOP, SWITCH, LinkedFlow, relay_up
from pgbouncer_py.netutil import addr_of, format_addr, local_addr_of, peer_cred, tune_tcp
from pgbouncer_py.objects import (
    CL_ACTIVE,
    CL_ACTIVE_CANCEL,
    CL_WAITING,
    CL_WAITING_LOGIN,
    Database,
    client_arrived,
    client_gone,
    client_logged_in,
    link_idle_fast,
    registry,
    set_client_state,
)
from pgbouncer_py.proto import build, sql
from pgbouncer_py.proto import constants as C
from pgbouncer_py.proto.messages import MessageReader, ProtocolError, parse_options, parse_startup_packet
from pgbouncer_py.proto.scan import CLIENT_TYPES
from pgbouncer_py.proto.scan import client_scan as _client_scan
from pgbouncer_py.statements import NO_STATEMENTS

_unpack_len = struct.Struct("!I").unpack_from
_RFQ_IDLE = build.ready_for_query(b"I")
_AUTH_OK = build.auth_request(C.AUTH_OK)
_LINK_FIRST = CLIENT_TYPES - {88}    # data that may take an idle server at once (not Terminate, not an unknown type)

PH_STARTUP, PH_AUTH, PH_WAIT_LOGIN, PH_WORK, PH_CLOSED = range(5)

# startup parameters with a canonical spelling (PostgreSQL reports these names in ParameterStatus)
CANONICAL = {"client_encoding": "client_encoding", "datestyle": "DateStyle", "timezone": "TimeZone",
             "standard_conforming_strings": "standard_conforming_strings",
             "application_name": "application_name", "intervalstyle": "IntervalStyle"}


CANCELED = "canceling statement due to user request"

_SSL_REQUEST = struct.pack("!II", 8, C.SSL_REQUEST_CODE)

# BackendKeyData up to the key (registry.new_cancel_key: always 8 bytes), built once instead of per login
_KEY_HEAD = build.msg(b"K", bytes(8))[:-8]

# what a login needs from the config, computed once per Config object (a Config is immutable: RELOAD and SET make
# a new one): (cfg, ignore_startup_parameters lowered, track_extra_parameters lowered)
_login_cfg: tuple = (None, frozenset(), frozenset())


def _login_settings(cfg) -> tuple:
    global _login_cfg
    if _login_cfg[0] is not cfg:
        _login_cfg = (cfg, frozenset(p.lower() for p in cfg.list_setting("ignore_startup_parameters")),
                      frozenset(p.lower() for p in cfg.list_setting("track_extra_parameters")))
    return _login_cfg


# startup packets kept by clients (Client._startup), one copy per distinct small packet: clients of one application
# send the same bytes. Bounded: when full it starts over (clients keep what they hold).
_packets: dict[bytes, bytes] = {}
SHARED_PACKET_MAX_LEN = 512
SHARED_PACKETS_MAX = 4096


def _shared_packet(pkt: bytes) -> bytes:
    """The one kept copy of a small startup packet equal to `pkt` (a larger one is kept as it is)."""
    if len(pkt) > SHARED_PACKET_MAX_LEN:
        return pkt
    kept = _packets.get(pkt)
    if kept is None:
        if len(_packets) >= SHARED_PACKETS_MAX:
            _packets.clear()
        kept = _packets[pkt] = pkt
    return kept


# startup packets met before under a config, and what their parse and parameter checks gave: clients of one
# application send the same bytes, so a login usually skips both (~300 bytecodes). packet -> (cfg, user name,
# database name, vars: a varcache.Shared, the kept packet). Only packets whose handling had no other effect are
# kept (no options, replication, ignored or _pq_ parameter, minor protocol version, or a log line). Bounded like
# _packets: when full it starts over.
_startups: dict[bytes, tuple] = {}
STARTUPS_MAX = 4096

# finish_login's welcome (ParameterStatus messages), built once per (server welcome, config, client values)
_welcome_cache: dict = {}


def first_request_end(buf) -> int:
    """Offset after the first complete request in buf (a Query, FunctionCall, or messages up to a Sync), or -1."""
    pos, n = 0, len(buf)
    while pos + 5 <= n:
        t = buf[pos]
        end = pos + 1 + _unpack_len(buf, pos + 1)[0]
        if end > n:
            return -1
        if t == 81 or t == 83 or t == 70:          # Query, Sync, FunctionCall
            return end
        pos = end
    return -1


def _start_clock(server) -> None:
    """The client's data is work for the server: its query (and transaction) clock starts."""
    now = time.monotonic()
    server.query_start = now
    if not server.xact_start:
        server.xact_start = now


class Client(LinkedFlow, asyncio.Protocol):
    """One client connection."""

    # slots keep an idle client small (bytes per idle client, issue 11); anything else lands in __dict__
    __slots__ = ("_max_packet", "addr", "admin", "auth", "cancel_key",
                 "connect_time", "counted_db", "counted_user", "created", "db",
                 "dbname", "id", "idle_since", "is_unix", "link", "listener", "_laddr", "login_user", "no_pqexec",
                 "paused_peer", "paused_reading", "pending", "phase",
                 "pool", "pool_mode", "port", "prepared", "ps", "reader", "replication", "request_time",
                 "skip", "startup_buf", "_startup", "state", "tail", "tail_need", "transport", "user",
                 "username", "vars", "wait_notified", "wait_start", "__dict__", "__weakref__")

    # rarely set, never read on the work path: class-level defaults instead of slots (8 bytes less per client);
    # setting one gives that client an instance value
    _tls_pending = False      # SSLRequest answered 'S' (or direct TLS seen): handshake not finished
    tls = ""
    peer_cert = None          # verified client certificate (SSLObject.getpeercert() dict), for auth cert
    peer_pid = None
    peer_uid = None
    admin_level = 0           # 1 = stats_users, 2 = admin_users
    console = None
    closing_reason = None

    def __init__(self, listener=None):
        self.listener = listener
        self.state = None
        self.phase = PH_STARTUP
        self.transport = None
        self.pool = None
        self.db = None
        self.user = None          # the authenticated User
        self.username = ""
        self.dbname = ""
        self.link = None
        self.pool_mode = "session"
        self.vars = varcache.EMPTY   # shared, read-only until the first set_var
        self._startup = None      # the startup packet (bytes) once accepted; see startup_params
        self.startup_buf = bytearray()
        self.reader = None
        self.pending = b""        # data held until a server is linked: a bytearray while there is some (_hold)
        self.tail = b""
        self.tail_need = 0        # tracked path: bytes the incomplete message in `tail` needs
        self.skip = 0
        self.addr = ""
        self.port = 0
        self.is_unix = False
        self._laddr = None        # local (address, port): read from the socket when SHOW CLIENTS asks
        self.created = time.monotonic()
        self.connect_time = self.request_time = time.time()
        self.wait_start = 0.0
        self.cancel_key = b""
        self.auth = None          # auth.login.Authenticator while authenticating
        self.admin = False        # connected to the admin console
        self.paused_peer = False
        self.paused_reading = False
        self.replication = "none"
        self.prepared = NO_STATEMENTS  # prepared statement name -> prepare.Statement (issue 7): a dict once it has one
        self.ps = 0                   # prepare.PS_OFF / PS_ON / PS_ACTIVE (tracking this link period)
        self.counted_db = None
        self.counted_user = None
        self.login_user = None            # the user name once auth has looked it up (log prefix)
        self.id = next(registry.socket_ids)   # SHOW CLIENTS `id`, the KILL_CLIENT handle
        self.idle_since = self.created    # monotonic: when the client last became unlinked (client_idle_timeout)
        self.wait_notified = False        # query_wait_notify NOTICE sent for the current wait
        self.no_pqexec = False            # disable_pqexec
        self._max_packet = 2147483647

    # --- identification ---
    def prefix(self) -> str:
        """PgBouncer's "C-0x..: db/user@addr:port ": (nodb) until the database is found (an unknown one stays
        (nodb)), (nouser) until authentication has looked the user up."""
        db = self.db
        dbname = db.name if db is not None and not db.fake else "(nodb)"
        user = self.login_user or (self.username if self.user is not None else "(nouser)")
        addr = self.addr
        if not self.is_unix and ":" not in addr:
            # IPv4: format_addr's answer written out (it was called twice per login); hex() costs ~600
            # instructions less than a format spec
            return f"C-{hex(id(self))}: {dbname}/{user}@{addr}:{self.port} "
        return f"C-0x{id(self):x}: {dbname}/{user}@{format_addr(addr, self.port, self.is_unix, self.peer_pid)} "

    @property
    def startup_params(self) -> dict[str, str]:
        """The startup packet's parameters (kept as the packet itself: a dict and its strings per idle client
        cost more than the bytes)."""
        v = self._startup
        if v is None:
            return {}
        if v.__class__ is bytes:
            return parse_startup_packet(v)[1]
        return v

    @startup_params.setter
    def startup_params(self, value: dict[str, str]) -> None:
        self._startup = value

    def set_var(self, name: str, value: str) -> None:
        """Set a tracked parameter of this client. Its vars may be a varcache.Shared held by other clients too:
        that is copied into a Values of its own first (unless the value is already the one it has)."""
        v = self.vars
        if v.__class__ is varcache.Shared:
            if v.get(name) != value:
                # the copy made with the new value in it: one call less than a copy and a __setitem__ (every
                # login that sends client_encoding or another tracked parameter)
                self.vars = varcache.Values({**v, name: value})
            return
        v[name] = value

    @property
    def local_addr(self) -> tuple[str, int]:
        if self._laddr is None:
            if self.transport is None:
                return ("", 0)
            self._laddr = local_addr_of(self.transport)
        return self._laddr

    @local_addr.setter
    def local_addr(self, value: tuple[str, int]) -> None:
        self._laddr = value

    # --- connection events ---
    def connection_made(self, transport) -> None:
        self.transport = transport
        cfg = registry.cfg
        lst = self.listener
        if lst is not None and lst.tuned_for is cfg:
            # TCP, accepted with the options of this config already (inherited from the listening socket)
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                self.addr, self.port = sys.intern(peer[0]), peer[1]      # one string per client host
            else:       # reset before we asked
                self.addr = "::" if lst.sock.family == socket.AF_INET6 else "0.0.0.0"
        else:
            sock = transport.get_extra_info("socket")
            self.addr, self.port, self.is_unix = addr_of(transport, sock)
            if self.is_unix:
                cred = peer_cred(transport, sock)
                if cred:
                    self.peer_pid, self.peer_uid = cred[0], cred[1]
                if lst is not None:
                    self.port = lst.port
            elif lst is not None and not lst.unix and sock is not None:
                listen.retune(lst, cfg, sock)       # the next ones inherit the options from the listener
                if cfg.tcp_socket_buffer:
                    tune_tcp(transport, cfg, sock)
            else:
                tune_tcp(transport, cfg, sock)
        client_arrived(self)
        if registry.suspended:
            hooks.hold_transport(transport)     # SUSPEND: not read until RESUME

    def data_received(self, data: bytes) -> None:
        try:
            if self.phase == PH_WORK and not self.admin:
                if not self.pending:
                    server = self.link
                    if server is None and data[0] in _LINK_FIRST and self.pool.idle_servers:
                        server = link_idle_fast(self)      # (not called when no server is idle: c100)
                    if server is not None and server.internal_done is None:
                        # HOT: the relay (net/sbuf.py), as in link_ready (the server's stats are its pool's)
                        server.stats.bytes_received += len(data)
                        if self.ps == 2:
                            prepare.client_data(self, data, server)
                        elif relay_up(self, data, server.transport, _client_scan, _client_at,
                                      self.ps | (self.no_pqexec << 1)) == SWITCH:
                            prepare.client_data(self, b"", server)
                        return
                self._queue_data(data)
                return
            if self._tls_pending:
                # decrypted bytes that arrive before _start_tls has looked at the new transport
                self.startup_buf += data
            elif self.phase == PH_STARTUP:
                if data[0] == 0x16 and not self.startup_buf and not self.tls and not self.is_unix and \
                        tls.client_tls_enabled():
                    self._direct_tls(data)
                    return
                self._startup_data(data)
            elif self.phase == PH_AUTH:
                self._auth_data(data)
            elif self.phase == PH_WAIT_LOGIN:
                self._hold(data)
                self._pause()
            elif self.phase == PH_WORK:
                self._admin_data(data)
        except ProtocolError as e:
            self.close(str(e), send_error=True)
        except Exception as e:  # one bad connection never takes the process down
            log.error(f"{self.prefix()}internal error in client handler: {e!r}")
            self.close("internal error", send_error=True)

    def connection_lost(self, exc) -> None:
        if self.phase != PH_CLOSED:
            self.close("client unexpected eof")

    def eof_received(self):
        return False

    # --- work phase, the hot path ---
    # Released with data already queued (objects.release): it needs a server again. (objects.py cannot import
    # pooling; the functions themselves as methods, no frame in between: ~550 instructions per transaction when
    # clients wait, bench/run.py --callgrind S-simple-c100)
    activate = pooling.activate_client
    # A server came free for this waiting client (objects.server_available): pooling.link(client, server)
    take_server = pooling.link

    def close_requested(self) -> None:
        """Terminate."""
        self.close("client close request")

    def _queue_data(self, data: bytes) -> None:
        """Data while no server is linked (or one is being prepared): hold it and ask the pool for a server."""
        if data[0] == 88 and len(data) >= 5 and not self.pending and self.link is None and self.state == CL_ACTIVE:
            # a lone Terminate (every -C client's last message): what _pending_has_work decides below, without
            # making a buffer for it and two calls
            self.close("client close request")
            return
        self._hold(data)
        if len(self.pending) >= registry.cfg.pkt_buf:
            self._pause()
        if self.link is None and self.state == CL_ACTIVE:
            if not self._pending_has_work():
                return
            self.request_time = time.time()
            pooling.activate_client(self)

    def _hold(self, data: bytes) -> None:
        """Append to `pending`: an idle client holds the shared b"", a bytearray is made for the first bytes."""
        if self.pending:
            self.pending += data
        else:
            self.pending = bytearray(data)

    def _pending_has_work(self) -> bool:
        """A lone Terminate needs no server; a message type the pooler does not know is refused before one is
        taken for it (as PgBouncer does)."""
        p = self.pending
        if len(p) >= 5 and p[0] == 88:
            self.pending = b""
            self.close("client close request")
            return False
        pos = _client_scan(p, 0, self._max_packet, 0)[0]
        if pos + 5 <= len(p) and p[pos] not in CLIENT_TYPES:
            header = bytes(p[pos:pos + 8])
            self.pending = b""
            self.unknown_packet(header)
            return False
        return True

    def unknown_packet(self, header: bytes) -> None:
        """After login, a frontend message of a type the pooler does not know (`header`: its first bytes):
        PgBouncer's error, never forwarded (PostgreSQL would end the pooled backend for it). Type 0 is what
        PgBouncer reads as a startup packet's length: a bad header."""
        t = header[0]
        if t == 0:
            self.close(f"bad packet header: '{header.hex()}'", send_error=True)
            return
        log.error(f"{self.prefix()}unknown pkt from client: {t}/0x{t:x}")
        self.close("unknown pkt", send_error=True)

    def link_ready(self) -> None:
        """Called by the pool once the linked server is ready for this client's data: HOT when clients wait for a
        server (_resume and _forward written out: two calls, ~900 instructions per transaction)."""
        pending = self.pending
        if self.paused_reading and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()
        if pending:
            data = bytes(pending)
            self.pending = b""  # the shared empty value again: an idle client owns no buffer
            server = self.link
            server.stats.bytes_received += len(data)
            if self.ps == 2:
                prepare.client_data(self, data, server)
            elif relay_up(self, data, server.transport, _client_scan, _client_at,
                          self.ps | (self.no_pqexec << 1)) == SWITCH:
                prepare.client_data(self, b"", server)     # _client_at started tracking: it relays the rest

    def _pause(self) -> None:
        if not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused_reading and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()

    # --- startup ---
    def _startup_data(self, data: bytes) -> None:
        buf = self.startup_buf
        if not buf and len(data) >= 8 and len(data) == _unpack_len(data, 0)[0] and len(data) <= C.MAX_STARTUP_PACKET:
            # the usual case: one whole packet in one read (SSLRequest, then the startup packet)
            if data == _SSL_REQUEST and tls.state.client_ctx is None and not self.tls:
                self.transport.write(b"N")      # (_startup_packet's answer when TLS is off, one frame less)
                return
            hit = _startups.get(data) if data.__class__ is bytes else None
            if hit is not None and hit[0] is registry.cfg and (tls.state.client_ctx is None or self.tls or
                                                               self.is_unix):
                # met before under this config (and no TLS requirement to check): what it gave then
                self.username, self.dbname, self.vars, self._startup = hit[1], hit[2], hit[3], hit[4]
                self._find_database()
                return
            self._startup_packet(bytes(data))
            return
        buf += data
        while self.phase == PH_STARTUP:
            if len(buf) < 4:
                return
            length = _unpack_len(buf, 0)[0]
            if length < 8 or length > C.MAX_STARTUP_PACKET:
                raise ProtocolError("bad packet header")
            if len(buf) < length:
                return
            pkt = bytes(buf[:length])
            del buf[:length]
            self._startup_packet(pkt)
        if buf and self.phase != PH_CLOSED and not self._tls_pending:
            rest = bytes(buf)
            buf.clear()
            self.data_received(rest)

    def _startup_packet(self, pkt: bytes) -> None:
        if pkt == _SSL_REQUEST:
            code, payload = C.SSL_REQUEST_CODE, None     # most clients' first packet, known without a parse
        else:
            code, payload = parse_startup_packet(pkt)
        if code == C.SSL_REQUEST_CODE:
            if self.tls:
                raise ProtocolError("client re-sent startup pkt")
            if tls.state.client_ctx is not None and not self.is_unix:     # (tls.client_tls_enabled() inline)
                if self.startup_buf:
                    # bytes sent after SSLRequest before the handshake would be read as if they came
                    # through TLS (CVE-2021-3935): refuse them
                    self.close("unexpected data after SSL request", send_error=True)
                    return
                self._tls_pending = True
                self.transport.pause_reading()   # the ClientHello must reach the TLS layer, not us
                self.transport.write(b"S")
                registry.loop.create_task(self._start_tls(direct=False))
            else:
                self.transport.write(b"N")
            return
        if code == C.GSSENC_REQUEST_CODE:
            self.transport.write(b"N")
            return
        if code == C.CANCEL_REQUEST_CODE:
            self._cancel_request(pkt[8:16])
            return
        if not self.tls and not self.is_unix and tls.state.client_ctx is not None and tls.client_tls_required():
            self.close("SSL required", send_error=True)
            return
        self._startup_params(payload, code, pkt)

    # --- TLS towards the client ---
    def _direct_tls(self, hello: bytes) -> None:
        """Direct TLS (sslnegotiation=direct): the first bytes are a TLS handshake record. Hand them to the
        TLS layer that start_tls puts on this transport, once that layer has been connected."""
        self._tls_pending = True
        self.transport.pause_reading()
        loop = registry.loop
        loop.create_task(self._start_tls(direct=True))
        # start_tls swaps the protocol in its first step and then schedules the TLS layer's connection_made:
        # two turns later the layer is ready, and reading has not resumed before that
        loop.call_soon(loop.call_soon, self._feed_tls, hello)

    def _feed_tls(self, data: bytes) -> None:
        t = self.transport
        if self.phase == PH_CLOSED or t is None:
            return
        proto = t.get_protocol()
        if proto is self:
            self.close("direct TLS: the TLS layer did not start")
            return
        if not hasattr(proto, "get_buffer"):
            proto.data_received(data)
            return
        view = memoryview(data)
        while view:
            buf = proto.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    async def _start_tls(self, direct: bool) -> None:
        ctx = tls.state.client_ctx
        if ctx is None:
            self.close("TLS is not enabled", send_error=not direct)
            return
        kw = {}
        if registry.cfg.client_login_timeout:
            kw["ssl_handshake_timeout"] = registry.cfg.client_login_timeout
        try:
            new_transport = await registry.loop.start_tls(self.transport, self, ctx, server_side=True, **kw)
        except (OSError, ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
            if self.phase != PH_CLOSED:
                self.transport = None     # the TLS layer has closed it; nothing more may be written there
                self.close(f"TLS handshake failed: {_short_tls_error(e)}")
            return
        if self.phase == PH_CLOSED:
            if new_transport is not None:
                new_transport.abort()
            return
        if new_transport is None:
            self.close("TLS handshake failed")
            return
        self.transport = new_transport
        sslobj = new_transport.get_extra_info("ssl_object")
        if direct and (sslobj is None or sslobj.selected_alpn_protocol() != tls.ALPN):
            # like PostgreSQL, direct TLS needs ALPN "postgresql" (a stray HTTPS client must not get in)
            self.close("direct TLS connection without ALPN postgresql")
            return
        self.tls = tls.connection_info(sslobj)
        self.peer_cert = tls.peer_cert(sslobj)
        self._tls_pending = False
        self.phase = PH_STARTUP
        if self.startup_buf:            # what came through TLS while we were finishing up
            self._startup_data(b"")

    def _startup_params(self, params: dict[str, str], version: int, pkt: bytes | None = None) -> None:
        cfg = registry.cfg
        _, ignore, tracked = _login_settings(cfg)
        user = params.get("user", "")
        if not user:
            raise ProtocolError("no username supplied")
        if len(user.encode()) >= C.MAX_USERNAME:
            raise ProtocolError("username too long")
        self.username = user = sys.intern(user)            # one string per name, not per client
        self.dbname = sys.intern(params.get("database") or user)
        # (zip and map: no comprehension frame per login)
        lowered = list(zip(params, map(str.lower, params), params.values(), strict=True))
        for _key, lk, value in lowered:
            if lk == "replication":
                self._replication_param(value)
        unsupported_minor = []
        plain = self.replication == "none"      # (may its outcome be kept in _startups)
        for key, lk, value in lowered:
            if lk == "user" or lk == "database" or lk == "replication":
                continue
            if lk in CANONICAL:
                self.set_var(CANONICAL[lk], value)
            elif lk == "options":
                plain = False
                if self.replication == "none":
                    self._startup_options(value, ignore)
                # a replication client's options go verbatim to its own server (replication_options)
            elif lk in tracked:
                self.set_var(varcache.canonical_name(key), value)
            elif key.startswith("_pq_."):
                unsupported_minor.append(key)
            elif lk in ignore:
                plain = False
                log.debug(f"{self.prefix()}ignoring startup parameter: {key}={value}")
                continue
            else:
                raise ProtocolError(f"unsupported startup parameter: {key}")
        self._startup = _shared_packet(pkt) if pkt is not None else params
        if (version & 0xFFFF) > 0 or unsupported_minor:
            self.transport.write(build.negotiate_protocol_version(0, unsupported_minor))
        elif plain and pkt is not None and len(pkt) <= SHARED_PACKET_MAX_LEN:
            # the next client that sends these bytes under this config skips all of the above; this one and they
            # hold one read-only copy of the values (Client.set_var copies it on a change)
            self.vars = varcache.share(self.vars)
            if len(_startups) >= STARTUPS_MAX:
                _startups.clear()
            _startups[self._startup] = (cfg, user, self.dbname, self.vars, self._startup)
        self._find_database()

    def _replication_param(self, value: str) -> None:
        low = value.lower()
        if low in ("true", "on", "yes", "1"):
            self.replication = "physical"
        elif low == "database":
            self.replication = "logical"
        elif low not in ("false", "off", "no", "0"):
            raise ProtocolError(f"invalid value for parameter \"replication\": \"{value}\"")

    def replication_options(self) -> str | None:
        """The `options` startup parameter of a replication client, as it sent it."""
        for key, value in self.startup_params.items():
            if key.lower() == "options":
                return value
        return None

    def _startup_options(self, value: str, ignore: set[str]) -> None:
        """`-c name=value` items of the options startup parameter: tracked parameters are taken, ignored ones
        (ignore_startup_parameters; all unknown ones when it lists `options`) skipped, others refused."""
        log.debug(f"{self.prefix()}received options: {value}")
        tracked = _login_settings(registry.cfg)[2]
        for key, val in parse_options(value):
            lk = key.lower()
            if lk in CANONICAL:
                self.set_var(CANONICAL[lk], val)
            elif lk in tracked:
                self.set_var(varcache.canonical_name(key), val)
            elif not key or lk in ignore or "options" in ignore:
                log.debug(f"{self.prefix()}ignoring startup parameter from options: {key}={val}")
                continue
            else:
                log.warning(f"{self.prefix()}unsupported startup parameter in options: {key}={val}")
                raise ProtocolError(f"unsupported startup parameter in options: {key}")
            log.debug(f"{self.prefix()}got var from options: {key}={val}")

    def _find_database(self) -> None:
        cfg = registry.cfg
        name = self.dbname
        if name == "pgbouncer":
            db = registry.admin_db
            self.admin = True
        else:
            db = registry.databases.get(name)
            if db is None:
                fallback = cfg.databases.get("*")
                if fallback is not None and not registry.shutting_down:
                    db = Database(name, fallback, auto=True)
                    registry.databases[name] = db
                    log.info(f"{self.prefix()}registered new auto-database: {name}")
            if db is None:
                # authenticated against a placeholder first, so nobody learns which databases exist
                # (login.Authenticator._ok answers "no such database" after a successful exchange)
                db = Database(name, None, fake=True)
        if not self.admin:
            if len(registry.clients) > cfg.max_client_conn:       # (registry.total_clients without its frame)
                raise ProtocolError("no more connections allowed (max_client_conn)")
            main = registry.main
            if registry.shutting_down and (not main.wait_for_clients or self.is_unix and self.created >= main.shutdown_at):
                # WAIT_FOR_CLIENTS: whoever got in before it is served (and what so_reuseport's accept queue still
                # held); after it the unix socket is open for console logins only
                raise ProtocolError("pooler is shutting down")
        if not db.fake:
            limit = db.setting("max_db_client_connections", cfg.max_db_client_connections)
            if limit and db.client_count >= limit and not self._exempt_from_client_limits():
                raise ProtocolError("client connections exceeded (max_db_client_connections)")
            db.clients[self] = None
            self.counted_db = db
        self.db = db
        self.phase = PH_AUTH
        self.startup_buf = b""        # (_startup_data holds the buffer it works on)
        # self.reader stays None: the usual login reads each auth message whole, without one (_auth_data)
        self.auth = login.Authenticator(self)
        self.auth.start()

    # --- client limits and accounting (from the database and user lookup on; close() gives them back) ---
    def _exempt_from_client_limits(self) -> bool:
        """admin_users on the console are not limited (they are counted)."""
        return self.admin and self.username in registry.cfg.list_setting("admin_users")

    def count_user(self, account) -> bool:
        """Count this client for its user (max_user_client_connections); False when it was refused."""
        limit = account.setting("max_user_client_connections", registry.cfg.max_user_client_connections)
        if limit and account.client_count >= limit and not self._exempt_from_client_limits():
            self.close("client connections exceeded (max_user_client_connections)", send_error=True)
            return False
        account.clients[self] = None
        self.counted_user = account
        return True

    # --- authentication ---
    def _auth_data(self, data: bytes) -> None:
        if self.auth is None:
            raise ProtocolError("unexpected data during login")
        reader = self.reader
        n = len(data)
        max_size = min(registry.cfg.max_packet_size, C.MAX_PASSWORD + 1024)
        if reader is None and n >= 5 and 4 <= _unpack_len(data, 1)[0] == n - 1 <= max_size:
            # the usual read: exactly one whole message (the password, a SCRAM step), handed over without a
            # MessageReader (made only when a message comes in pieces, or several at once)
            self.auth.message(data[0], bytes(data[5:]))
            return
        if reader is None:
            self.reader = reader = MessageReader(max_size=max_size, skip_oversize=True)
        reader.feed(data)
        while self.phase == PH_AUTH and self.auth is not None:
            m = reader.next()
            if m is None:
                return
            self.auth.message(m[0], m[1])
        if self.phase == PH_WAIT_LOGIN or self.phase == PH_WORK:
            rest = self.reader.take_rest()
            if not self.admin:
                self.reader = None        # only the console reads messages one by one after login
            else:
                self.reader.skip_oversize = False
            if rest:
                self.data_received(rest)

    def auth_ok(self, user, pool_user=None, head: bytes = b"") -> None:
        """Authentication succeeded: finish login now or when the pool has a server. `head` (the exchange's last
        message, SASLFinal) goes out first, in the same write as AuthenticationOk."""
        cfg = registry.cfg
        self.auth = None
        self.user = user
        self.db.stats.client_login_count += 1
        if self.admin:
            if self.reader is None:     # the console reads messages one by one (a login's reader, if one was made)
                self.reader = MessageReader(max_size=min(cfg.max_packet_size, C.MAX_PASSWORD + 1024))
            self.transport.write(head + _AUTH_OK)
            self.pool = registry.get_pool(registry.admin_db, registry.admin_user)
            self.console = hooks.new_console(self)
            self.cancel_key = registry.new_cancel_key()
            registry.cancel_keys[self.cancel_key] = self
            self.phase = PH_WORK
            set_client_state(self, CL_ACTIVE)
            self.console.welcome()
            return
        db = self.db
        pool_user = pool_user or db.forced_user or user
        self.pool = registry.get_pool(db, pool_user)
        self.pool_mode = self.pool.pool_mode(cfg)
        if self.replication != "none":
            self.pool_mode = "session"    # a replication client keeps its own server connection to the end
        self.cancel_key = registry.new_cancel_key()
        registry.cancel_keys[self.cancel_key] = self
        pool = self.pool
        if self.replication != "none":
            pool.replication_seen = True     # its server is its own, opened with replication (pooling)
        if pool.welcome_params is not None and not pool.welcome_stale:
            # a refused server login is told at the first query (pooling.fast_fail); a replication client gets
            # its server at its first command. AuthenticationOk goes out with the welcome, in one write.
            self.finish_login(first=head + _AUTH_OK)
            return
        # the first login of the pool (for a replication client: its own server) brings the welcome
        self.transport.write(head + _AUTH_OK)
        self.phase = PH_WAIT_LOGIN
        self.wait_start = time.monotonic()
        set_client_state(self, CL_WAITING_LOGIN)
        pooling.launch_new_connection(pool, force=not pool.login_servers or self.replication != "none")

    def finish_login(self, server=None, first: bytes = b"") -> None:
        """Send the welcome (ParameterStatus, BackendKeyData, ReadyForQuery; after `first`, AuthenticationOk when
        it was not sent yet) and enter the work phase; a replication client whose server brought the welcome is
        linked to that `server` for good."""
        cfg = registry.cfg
        cvars = self.vars
        if cfg.application_name_add_host and "application_name" in cvars:
            self.set_var("application_name", cvars["application_name"] + " - " +
                         format_addr(self.addr, self.port, self.is_unix))
            cvars = self.vars
        welcome = self.pool.welcome_params or {}
        tracked = pooling.tracked_params(cfg)
        own = tuple(map(cvars.get, tracked))        # (a generator here resumed once per tracked name: 8 frames)
        key = (id(welcome), id(cfg), own)
        hit = _welcome_cache.get(key)
        if hit is None or hit[0] is not welcome or hit[1] is not cfg:
            # the server's ParameterStatus with the client's own values of tracked parameters; the client takes
            # the server's value of every tracked parameter it did not set
            params = dict(welcome)
            taken = {}
            after = {}          # the client's vars after login
            for name, value in zip(tracked, own, strict=True):
                if value is not None:
                    params[name] = after[name] = value
                elif name in params:
                    taken[name] = after[name] = params[name]
            head = b"".join([build.parameter_status(k, v) for k, v in params.items()])
            if cfg.login_notify_message:
                head = build.notice_response(cfg.login_notify_message) + head
            if len(_welcome_cache) >= 1024:
                _welcome_cache.clear()
            # the client's vars after login when it set only tracked parameters: the same for every client with
            # this key, so they share one read-only mapping (varcache.Shared) until one of them changes a value
            hit = _welcome_cache[key] = (welcome, cfg, head, taken, varcache.share(after), len(own) - own.count(None))
        if len(cvars) == hit[5]:
            self.vars = hit[4]
        else:       # it also set an untracked one (e.g. IntervalStyle with track_extra_parameters emptied)
            self.vars = varcache.share({**cvars, **hit[3]})
        # (one write: one uvloop write and one send(2) less per login than AuthenticationOk on its own)
        self.transport.write(b"".join((first, hit[2], _KEY_HEAD, self.cancel_key, _RFQ_IDLE)))
        self.phase = PH_WORK
        client_logged_in(self)
        if metrics.recorder is not None:
            metrics.recorder.logged_in(self.pool.db, time.monotonic() - self.created)
        self._max_packet = cfg.max_packet_size
        self.idle_since = time.monotonic()
        self.no_pqexec = bool(cfg.disable_pqexec)
        self.ps = prepare.enabled_for(self)
        if server is not None:
            pooling.link(self, server)      # sends what the client already queued
            return
        if self.pending:
            data = bytes(self.pending)
            self.pending = b""
            self._resume()
            self.data_received(data)

    # --- admin console ---
    def _admin_data(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.phase == PH_WORK:
            m = self.reader.next()
            if m is None:
                return
            self.console.message(m[0], m[1])

    # --- cancel requests ---
    def _cancel_request(self, key: bytes) -> None:
        target = registry.find_client_by_key(key)
        if target is None:
            peer = _peer_for_key(key)
            if peer is not None:
                self._hold_for_cancel(None, _forward_cancel_to_peer(peer, key))
                return
            log.debug(f"{self.prefix()}cancel request with unknown key")
        else:
            server = target.link
            if server is not None and server.backend_key:
                self._hold_for_cancel(target.pool, _send_cancel(server))
                return
            if target.state == CL_WAITING:
                target.cancel_queued()
            else:
                log.debug(f"{self.prefix()}cancel request for a client with no query running: nothing to cancel")
        self.close("cancel request", quiet=True)

    def _hold_for_cancel(self, pool, forward) -> None:
        """Keep the cancel request's connection open until the request has reached PostgreSQL (or the peer)
        and that side closed, as PgBouncer does: a client that sees EOF (libpq waits for it) knows the cancel
        was delivered, so its next query cannot be the one canceled. cancel_wait_timeout bounds the wait."""
        self.phase = PH_WAIT_LOGIN                           # anything more it sends is held, unread
        if pool is not None:
            self.pool = pool
            set_client_state(self, CL_ACTIVE_CANCEL)        # SHOW POOLS cl_active_cancel_req

        async def run():
            limit = registry.cfg.cancel_wait_timeout
            try:
                await asyncio.wait_for(forward, limit or None)
            except TimeoutError:
                self.close("cancel_wait_timeout")
                return
            except Exception as e:  # the cancel connection must be closed whatever happened
                log.error(f"{self.prefix()}internal error forwarding a cancel request: {e!r}")
            self.close("cancel request", quiet=True)

        registry.loop.create_task(run())

    def cancel_queued(self) -> None:
        """Beyond PgBouncer: a cancel for a client still waiting for a server drops its first queued query (a
        Query, or extended-protocol messages up to Sync) and answers it as PostgreSQL answers a canceled
        statement; the client leaves the queue when nothing else is queued."""
        end = first_request_end(self.pending)
        if end < 0:
            log.debug(f"{self.prefix()}cancel request while waiting: no complete query queued, nothing to cancel")
            return
        del self.pending[:end]
        log.info(f"{self.prefix()}query canceled while waiting for a server")
        if self.transport is not None:
            self.transport.write(build.error_response(CANCELED, "57014", "ERROR") + build.ready_for_query(b"I"))
        if first_request_end(self.pending) < 0:
            set_client_state(self, CL_ACTIVE)        # nothing left to run: out of the queue
            self._resume()

    # --- the one exit path ---
    def close(self, reason: str, *, send_error: bool = False, sqlstate: str = "08P01", quiet: bool = False) -> None:
        if self.phase == PH_CLOSED:
            return
        if self.phase < PH_WORK and metrics.recorder is not None and self.username and not self.admin:
            metrics.recorder.login_failed(self.dbname)
        self.phase = PH_CLOSED
        self.closing_reason = reason
        cfg = registry.cfg
        if not quiet and cfg.log_disconnections:      # (log.write: log.info's frame less, once per client)
            age = int(time.monotonic() - self.created)
            log.write("LOG", f"{self.prefix()}closing because: {reason} (age={age}s)")
        if send_error and cfg.log_pooler_errors and not quiet:
            log.warning(f"{self.prefix()}pooler error: {reason}")
        t = self.transport
        if t is not None:
            if send_error:
                try:
                    t.write(build.error_response(reason[:127], sqlstate))
                except Exception:
                    pass
            t.close()
        if self.auth is not None:
            self.auth.cancel()
            self.auth = None
        if self.cancel_key:
            registry.cancel_keys.pop(self.cancel_key, None)
        if self.counted_db is not None:
            self.counted_db.clients.pop(self, None)
            self.counted_db = None
        if self.counted_user is not None:
            self.counted_user.clients.pop(self, None)
            self.counted_user = None
        server = self.link
        if server is not None:
            pooling.client_unlinked_by_close(self, server)
        if self.console is not None:
            self.console.closed()
        client_gone(self)


def _client_at(client, data, pos: int, end: int) -> int:
    """The relay's handler for untracked client bytes, at a message the walk (proto/scan.client_scan, which
    counted the Query/Sync it stepped over) stopped at: Terminate, a bad length, a type the pooler does not
    know, a Query that disable_pqexec refuses or that may be SQL PREPARE/EXECUTE/DEALLOCATE,
    Parse/Bind/Describe/Close that may name a statement."""
    t = data[pos]
    if t == 88:                           # 'X' Terminate
        client.relay_arg = client.close_requested
        return STOP
    if t not in CLIENT_TYPES:
        client.relay_arg = partial(client.unknown_packet, data[pos:pos + 8])
        return STOP
    ln = end - pos - 1
    if t == 81:
        if client.no_pqexec:
            client.relay_arg = partial(client.close, "PQexec disallowed", send_error=True)
            return STOP
        if client.ps and sql.might_start(data, pos + 5, min(end, len(data))):
            prepare.activate(client, client.link)     # SQL-level PREPARE/EXECUTE/DEALLOCATE: tracked from here
            return SWITCH
    if ln < 4 or ln > client._max_packet:
        client.relay_arg = partial(client.close, "bad packet header" if ln < 4 else "max_packet_size exceeded",
                                   send_error=True)
        return STOP
    server = client.link
    if not server.query_start:
        _start_clock(server)
    if t == 81:                           # a Query that is not one of those commands after all
        server.expect_rfq += 1
        return end
    # Parse/Bind/Describe/Close with statements tracked: a complete unnamed batch up to its Sync stays here
    # (lengths checked, one step to its end); anything else is tracked from here on
    batch_end = prepare.unnamed_batch_end(data, pos, client._max_packet)
    if batch_end < 0:
        prepare.activate(client, server)
        return SWITCH
    server.expect_rfq += 1
    return batch_end


def _short_tls_error(e: BaseException) -> str:
    """'certificate verify failed' rather than the whole OpenSSL tuple."""
    reason = getattr(e, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(e) or type(e).__name__


def _peer_for_key(key: bytes):
    cfg = registry.cfg
    peer_id = ((key[0] & 0x3F) << 8) | key[1]
    if peer_id and peer_id != cfg.peer_id and peer_id in cfg.peers:
        if key[0] >> 6 == 0:
            log.debug(f"cancel request for peer {peer_id} dropped: forwarded too many times")
            return None
        return cfg.peers[peer_id]
    return None


async def _forward_cancel_to_peer(peer, key: bytes) -> None:
    next(registry.socket_ids)       # the connection to the peer is a socket of its own: PgBouncer numbers it too
    w = None
    try:
        if peer.host and not peer.host.startswith("/"):
            r, w = await asyncio.wait_for(asyncio.open_connection(peer.host, peer.port), 5)
        else:
            path = os.path.join(peer.host or registry.cfg.unix_socket_dir, f".s.PGSQL.{peer.port}")
            r, w = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
        ttl = (key[0] >> 6) - 1        # one hop less, so a misconfigured ring cannot loop forever
        w.write(struct.pack("!II", 16, C.CANCEL_REQUEST_CODE) + bytes(((ttl << 6) | (key[0] & 0x3F),)) + key[1:])
        await w.drain()
        await r.read()
    except OSError as e:
        log.warning(f"forwarding cancel request to peer {peer.peer_id} failed: {e}")
    finally:
        if w is not None:
            w.close()


def _send_cancel(server):
    """The cancel request for a server's backend, to await. Until it has landed the server is not handed to
    another client (pooling.server_available), so a late cancel never hits the next client's query."""
    server.cancels += 1
    next(registry.socket_ids)       # the cancel connection is a server socket of its own: PgBouncer numbers it too
    return _cancel_connection(server)


async def _cancel_connection(server) -> None:
    """Open a new connection to the server's PostgreSQL, send its backend key, wait until PostgreSQL closes."""
    w = None
    try:
        if server.unix_path:
            r, w = await asyncio.wait_for(asyncio.open_unix_connection(server.unix_path),
                                          registry.cfg.server_connect_timeout or None)
        else:
            r, w = await asyncio.wait_for(asyncio.open_connection(server.host, server.port),
                                          registry.cfg.server_connect_timeout or None)
        w.write(struct.pack("!III", 16, C.CANCEL_REQUEST_CODE, server.backend_pid) + server.backend_key)
        await w.drain()
        await r.read()
    except (TimeoutError, OSError) as e:
        log.warning(f"{server.prefix()}sending cancel request failed: {e}")
    finally:
        if w is not None:
            w.close()
        server.cancels -= 1
        if not server.cancels:
            pooling.cancel_landed(server)
