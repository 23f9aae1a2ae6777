"""Online restart (-R): the old process freezes and hands its sockets over its unix socket (SHOW FDS + SCM_RIGHTS)
with their state; the new process adopts them as ordinary Client/Server objects and carries on."""

import array
import asyncio
import base64
import json
import os
import select
import socket
import struct
import time

from pgbouncer_py import client, pooling, prepare, server, varcache
from pgbouncer_py.log import log
from pgbouncer_py.netutil import addr_of, local_addr_of, peer_cred
from pgbouncer_py.objects import (
    CL_ACTIVE,
    CL_WAITING,
    SV_ACTIVE,
    SV_IDLE,
    SV_USED,
    Database,
    DbUser,
    User,
    registry,
    restore_link,
    set_client_state,
    set_server_state,
    unlink,
)
from pgbouncer_py.proto import build

# SHOW FDS columns, as PgBouncer prints them
FDS_COLUMNS = ("fd", "task", "user", "database", "addr", "port", "cancel", "link", "client_encoding", "std_strings",
               "datestyle", "timezone", "password", "scram_client_key", "scram_server_key")
STATE_COLUMNS = ("fd", "state")


class TakeoverError(Exception):
    """The online restart could not be done; the message says why."""


# ============================================================================================================
# old process side
# ============================================================================================================
def _sock_fd(transport) -> int:
    if transport is None or transport.is_closing():
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1           # TLS state cannot be handed over: such connections are dropped, like PgBouncer
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


def _is_transferable_server(s) -> bool:
    return (s.phase == server.PH_WORK and not s.tls and s.internal_done is None
            and s.state in (SV_IDLE, SV_ACTIVE, SV_USED) and _sock_fd(s.transport) >= 0)


def _is_transferable_client(c) -> bool:
    if c.admin or c.tls or c.phase != client.PH_WORK or c.state not in (CL_ACTIVE, CL_WAITING):
        return False
    if _sock_fd(c.transport) < 0:
        return False
    return c.link is None or _is_transferable_server(c.link)


def _listen_sock(lst):
    return lst.handover if lst.handover is not None else lst.sock


def _sockets():
    """(listeners, clients, servers) that an online restart hands over."""
    pooler = registry.main
    listeners = [lst for lst in (pooler.listeners if pooler else []) if _listen_sock(lst).fileno() >= 0]
    clients, servers = [], []
    for pool in registry.pools.values():
        if pool.db.admin:
            continue
        clients.extend(c for c in pool.all_clients() if _is_transferable_client(c))
        servers.extend(s for s in pool.all_servers() if _is_transferable_server(s))
    return listeners, clients, servers


def freeze(console_client) -> None:
    """Stop all activity for the handover: no accepting, no reading, no janitor, no new server connections."""
    pooler = registry.main
    registry.suspended = True
    if pooler is not None:
        pooler.freeze_for_takeover()
    for pool in registry.pools.values():
        for obj in list(pool.all_clients()) + list(pool.all_servers()):
            t = obj.transport
            if t is not None and obj is not console_client and not t.is_closing():
                try:
                    t.pause_reading()
                except RuntimeError:
                    pass
    for c in list(registry.login_clients):
        if c.transport is not None and not c.transport.is_closing():
            try:
                c.transport.pause_reading()
            except RuntimeError:
                pass


def flushed() -> bool:
    """Whether every socket that will be handed over has written out what it had buffered."""
    _listeners, clients, servers = _sockets()
    return all(o.transport.get_write_buffer_size() == 0 for o in clients + servers)


def _key_int(key: bytes) -> int:
    # SHOW FDS `cancel`: the 8 key bytes (a server's: BackendKeyData pid + key) read as a big-endian int8, as
    # PgBouncer 1.24 prints them
    return struct.unpack(">q", key[:8].ljust(8, b"\0"))[0] if key else 0


def _key_bytes(value) -> bytes:
    """The 8 key bytes back from a `cancel` column (signed or unsigned text)."""
    return (int(value or 0) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


def _b64(v) -> str | None:
    return base64.b64encode(v).decode() if v else None


def _bytea(v: bytes | None) -> str | None:
    """SHOW FDS scram_client_key / scram_server_key: bytea in PostgreSQL's hex text form, as PgBouncer sends."""
    return "\\x" + v.hex() if v else None


def _from_bytea(text) -> bytes | None:
    if not text:
        return None
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else base64.b64decode(text)


def fds_rows() -> list[tuple[int, list]]:
    """(fd, SHOW FDS row) for every socket an online restart hands over: listeners, clients, servers."""
    listeners, clients, servers = _sockets()
    rows = []
    for lst in listeners:
        sock = _listen_sock(lst)
        fd = sock.fileno()
        if lst.unix:
            addr, port = "unix", lst.port
        else:
            name = sock.getsockname()
            addr, port = name[0], name[1]
        rows.append((fd, [fd, "pooler", None, None, addr, port, 0, 0, None, None, None, None, None, None, None]))
    for c in clients:
        fd = _sock_fd(c.transport)
        link = _sock_fd(c.link.transport) if c.link is not None else 0
        user = c.pool.user
        rows.append((fd, [fd, "client", c.username, c.dbname, c.addr, c.port, _key_int(c.cancel_key), link,
                          c.vars.get("client_encoding"), c.vars.get("standard_conforming_strings"),
                          c.vars.get("DateStyle"), c.vars.get("TimeZone"),
                          user.secret if user.dynamic else None, _bytea(user.scram_client_key),
                          _bytea(user.scram_server_key)]))
    for s in servers:
        fd = _sock_fd(s.transport)
        link = _sock_fd(s.link.transport) if s.link is not None else 0
        user = s.pool.user
        rows.append((fd, [fd, "server", user.name, s.pool.db.name, s.host, s.port,
                          _key_int(struct.pack("!I", s.backend_pid) + s.backend_key), link,
                          s.params.get("client_encoding"), s.params.get("standard_conforming_strings"),
                          s.params.get("DateStyle"), s.params.get("TimeZone"),
                          user.secret if user.dynamic else None, _bytea(user.scram_client_key),
                          _bytea(user.scram_server_key)]))
    return rows


def state_rows() -> list[list]:
    """(fd, JSON) rows with what pgbouncer-py needs beyond SHOW FDS to adopt a socket mid-stream."""
    listeners, clients, servers = _sockets()
    rows = []
    for c in clients:
        st = {"kind": "client", "username": c.username, "dbname": c.dbname, "auth_user": c.user.name,
              "pool_user": c.pool.user.name, "pool_mode": c.pool_mode, "state": c.state, "vars": c.vars,
              "startup_params": c.startup_params, "cancel_key": c.cancel_key.hex(), "pending": bytes(c.pending).hex(),
              "tail": c.tail.hex(), "skip": c.skip, "created": c.created, "connect_time": c.connect_time,
              "request_time": c.request_time, "wait_start": c.wait_start, "paused_reading": c.paused_reading,
              "link": _sock_fd(c.link.transport) if c.link is not None else 0,
              "prepared": prepare.export_client(c)}
        rows.append([_sock_fd(c.transport), json.dumps(st)])
    for s in servers:
        st = {"kind": "server", "db": s.pool.db.name, "user": s.pool.user.name, "host": s.host, "port": s.port,
              "unix_path": s.unix_path, "params": s.params, "backend_pid": s.backend_pid,
              "backend_key": s.backend_key.hex(), "state": s.state, "ready": s.ready, "expect_rfq": s.expect_rfq,
              "tail": s.tail.hex(), "skip": s.skip, "pending": s.reader.take_rest().hex(),
              "query_start": s.query_start, "xact_start": s.xact_start, "created": s.created,
              "connect_time": s.connect_time, "request_time": s.request_time, "idle_since": s.idle_since,
              "close_needed": s.close_needed, "link": _sock_fd(s.link.transport) if s.link is not None else 0,
              "prepared": prepare.export_server(s)}
        rows.append([_sock_fd(s.transport), json.dumps(st)])
    pools = [{"db": p.db.name, "user": p.user.name, "welcome_params": p.welcome_params}
             for p in registry.pools.values() if not p.db.admin and p.welcome_params is not None]
    users = [{"name": u.name, "dynamic": u.dynamic, "secret": u.secret if u.dynamic else None,
              "scram_client_key": _b64(u.scram_client_key), "scram_server_key": _b64(u.scram_server_key)}
             for u in registry.users.values()]
    users += [{"name": u.name, "db": db.name, "dynamic": True, "secret": u.secret,       # auth_query users
               "scram_client_key": _b64(u.scram_client_key), "scram_server_key": _b64(u.scram_server_key)}
              for db in registry.databases.values() for u in db.dynamic_users.values()]
    rows.append([0, json.dumps({"kind": "global", "pools": pools, "users": users})])
    del listeners
    return rows


def send_with_fds(sock_fd: int, chunks: list[tuple[bytes, int | None]], timeout: float) -> None:
    """Write chunks to a (non-blocking) unix socket, each with its fd attached as SCM_RIGHTS when not None."""
    s = socket.socket(fileno=os.dup(sock_fd))
    deadline = time.monotonic() + timeout
    try:
        for data, fd in chunks:
            view = memoryview(data)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
            while view:
                try:
                    n = s.sendmsg([view], anc)
                except (BlockingIOError, InterruptedError):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TakeoverError("timeout sending file descriptors") from None
                    select.select([], [s], [], left)
                    continue
                view = view[n:]
                anc = []
    finally:
        s.close()


# ============================================================================================================
# new process side: the conversation with the old process (blocking, before the event loop exists)
# ============================================================================================================
class Inherited:
    """What the old process handed over: fds in this process with their SHOW FDS row and state."""

    def __init__(self):
        self.listeners: list[int] = []
        self.clients: list[tuple[int, dict, dict | None]] = []     # (fd, fds row, state or None)
        self.servers: list[tuple[int, dict, dict | None]] = []
        self.globals: dict = {}
        self.old_pid = 0


class _Conn:
    """A minimal blocking protocol-3 client that also collects received SCM_RIGHTS fds."""

    def __init__(self, path: str, timeout: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()
        self.fds: list[int] = []

    def _fill(self) -> None:
        data, anc, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                self.fds.extend(a)
        if not data:
            raise EOFError
        self.buf += data

    def message(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 5:
                ln = struct.unpack_from("!I", self.buf, 1)[0]
                if len(self.buf) >= ln + 1:
                    t, body = self.buf[0], bytes(self.buf[5:ln + 1])
                    del self.buf[:ln + 1]
                    return t, body
            self._fill()

    def query(self, sql: str) -> tuple[list[str], list[list], str | None]:
        """(columns, rows, error message or None); rows hold str or None values."""
        self.sock.sendall(build.query(sql))
        cols, rows, err = [], [], None
        while True:
            t, body = self.message()
            if t == ord("T"):
                n = struct.unpack_from("!H", body)[0]
                pos = 2
                for _ in range(n):
                    end = body.index(b"\0", pos)
                    cols.append(body[pos:end].decode())
                    pos = end + 19
            elif t == ord("D"):
                n = struct.unpack_from("!H", body)[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack_from("!i", body, pos)[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif t == ord("E"):
                err = _error_message(body)
            elif t == ord("Z"):
                return cols, rows, err

    def close(self) -> None:
        self.sock.close()


def _error_message(body: bytes) -> str:
    for part in body.split(b"\0"):
        if part[:1] == b"M":
            return part[1:].decode(errors="replace")
    return "error"


def socket_path(cfg) -> str:
    d = cfg.unix_socket_dir
    if not d or d.startswith("@"):
        raise TakeoverError("online restart needs unix_socket_dir set to a directory")
    return os.path.join(d, f".s.PGSQL.{cfg.listen_port}")


def take_over(cfg) -> Inherited | None:
    """Run the takeover conversation; None when no old process answers (boot normally)."""
    if os.environ.get("LISTEN_FDS"):
        log.fatal("online restart is not possible under a service manager's socket activation")
        raise SystemExit(1)
    try:
        return _take_over(cfg)
    except TakeoverError as e:
        log.fatal(f"online restart failed: {e}")
        raise SystemExit(1) from None


def _take_over(cfg) -> Inherited | None:
    path = socket_path(cfg)
    timeout = max(float(cfg.suspend_timeout or 10), 5.0) + 20.0
    try:
        conn = _Conn(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        log.info("old process not found, try to continue normally")
        return None
    except OSError as e:
        raise TakeoverError(f"cannot connect to {path}: {e.strerror or e}") from None
    try:
        return _conversation(conn, cfg)
    except (EOFError, OSError) as e:
        raise TakeoverError(f"old process went away during the takeover: {e or 'EOF'}") from None
    finally:
        conn.close()


def _conversation(conn: _Conn, cfg) -> Inherited:
    inh = Inherited()
    cred = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    inh.old_pid = struct.unpack("3i", cred)[0]
    log.info(f"takeover: connected to old process (pid {inh.old_pid})")
    conn.sock.sendall(build.startup_message({"user": "pgbouncer", "database": "pgbouncer"}))
    while True:
        t, body = conn.message()
        if t == ord("R") and struct.unpack_from("!I", body)[0] != 0:
            raise TakeoverError("old process asks for a password; the console must admit user pgbouncer over "
                                "the unix socket for the same OS user")
        if t == ord("E"):
            raise TakeoverError(f"login to old process failed: {_error_message(body)}")
        if t == ord("Z"):
            break
    _cols, _rows, err = conn.query("SUSPEND;")
    if err is not None and "invalid command" not in err:
        raise TakeoverError(f"SUSPEND failed: {err}")
    _cols, srows, err = conn.query("SHOW TAKEOVER_STATE;")
    states: dict[int, dict] = {}
    if err is None:
        for fd, text in srows:
            st = json.loads(text)
            if st.get("kind") == "global":
                inh.globals = st
            else:
                states[int(fd)] = st
    else:
        log.warning("takeover: old process is not pgbouncer-py; adopting sockets from SHOW FDS rows only")
    first_fd = len(conn.fds)
    cols, rows, err = conn.query("SHOW FDS;")
    if err is not None:
        raise TakeoverError(f"SHOW FDS failed: {err}")
    fds = conn.fds[first_fd:]
    if len(fds) != len(rows):
        for fd in fds:
            os.close(fd)
        raise TakeoverError(f"got {len(fds)} file descriptors for {len(rows)} SHOW FDS rows")
    for fd, row in zip(fds, rows, strict=True):
        r = dict(zip(cols, row, strict=False))
        os.set_inheritable(fd, False)
        task = r.get("task")
        if task == "pooler":
            inh.listeners.append(fd)
        elif task == "client":
            inh.clients.append((fd, r, states.get(int(r["fd"]))))
        elif task == "server":
            inh.servers.append((fd, r, states.get(int(r["fd"]))))
        else:
            os.close(fd)
    log.info(f"takeover: got {len(inh.listeners)} listening, {len(inh.clients)} client and {len(inh.servers)} "
             f"server sockets")
    conn.sock.sendall(build.query("SHUTDOWN;"))
    try:
        while True:
            conn.message()
    except (EOFError, OSError):
        pass
    _wait_gone(inh.old_pid, cfg.pidfile, 10.0)
    return inh


def _wait_gone(pid: int, pidfile: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pidfile and os.path.exists(pidfile):
            time.sleep(0.02)
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (OSError, IndexError):
            return
        time.sleep(0.02)
    raise TakeoverError(f"old process (pid {pid}) did not exit")


# ============================================================================================================
# new process side: adopting the sockets inside the event loop
# ============================================================================================================
class _Hold(asyncio.Protocol):
    """Placeholder protocol while a socket is attached: holds what arrives until its owner is ready
    (uvloop 0.17 starts reading even when connection_made pauses it)."""

    def __init__(self):
        self.buf = bytearray()
        self.lost = False
        self.exc = None

    def connection_made(self, transport) -> None:
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.buf += data

    def eof_received(self):
        self.lost = True
        return True

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.exc = exc


async def _attach(sock: socket.socket, obj, accepted: bool):
    loop = registry.loop
    if accepted:
        transport, hold = await loop.connect_accepted_socket(_Hold, sock=sock)
    elif sock.family == socket.AF_UNIX:
        transport, hold = await loop.create_unix_connection(_Hold, sock=sock)
    else:
        transport, hold = await loop.create_connection(_Hold, sock=sock)
    transport.pause_reading()
    transport.set_protocol(obj)
    obj.transport = transport
    obj._hold = hold
    return transport


def _release(obj, pending: bytes, resume: bool) -> None:
    """Hand the held bytes (state from the old process first) to the adopted object and let it read."""
    hold = obj._hold
    del obj._hold
    data = pending + bytes(hold.buf)
    if resume:
        obj.transport.resume_reading()
    if data:
        obj.data_received(data)
    if hold.lost:
        obj.connection_lost(hold.exc)


def _user(name: str, db=None) -> User:
    """The global user of that name; for a socket of database `db`, a name without an auth_file secret is that
    database's auth_query user."""
    u = registry.users.get(name)
    if db is not None and (u is None or u.secret is None):
        du = db.dynamic_users.get(name)
        if du is None:
            account = u if u is not None else registry.users.setdefault(name, User(name))
            du = db.dynamic_users[name] = DbUser(account, None)
        return du
    if u is None:
        u = registry.users[name] = User(name, registry.auth_users.get(name))
        u.dynamic = True
    return u


def _database(name: str):
    db = registry.databases.get(name)
    if db is None:
        fallback = registry.cfg.databases.get("*")
        if fallback is None:
            return None
        db = registry.databases[name] = Database(name, fallback, auto=True)
    return db


def _unhex(v) -> bytes:
    return bytes.fromhex(v) if v else b""


def _apply_globals(g: dict) -> None:
    for u in g.get("users", []):
        if u.get("db"):
            db = _database(u["db"])
            if db is None:
                continue
            user = _user(u["name"], db)
        else:
            user = registry.users.get(u["name"])
        if user is None and not u.get("dynamic"):
            continue
        if user is None:
            user = _user(u["name"])
        if u.get("dynamic"):
            user.dynamic = True
            user.secret = u.get("secret")
        if u.get("scram_client_key"):
            user.scram_client_key = base64.b64decode(u["scram_client_key"])
            user.scram_server_key = base64.b64decode(u["scram_server_key"])
    for p in g.get("pools", []):
        db = _database(p["db"])
        if db is not None and p.get("welcome_params") is not None:
            registry.get_pool(db, _user(p["user"], db)).welcome_params = p["welcome_params"]


def _row_credentials(r: dict, name: str, db) -> None:
    """What a SHOW FDS row says about its user: the SCRAM keys a pass-through login derived (needed for new
    server logins) and an auth_query user's password (that database's)."""
    user = _user(name, db)
    if r.get("password") and user.dynamic:
        user.secret = r["password"]
    ck, sk = _from_bytea(r.get("scram_client_key")), _from_bytea(r.get("scram_server_key"))
    if ck and sk and user.scram_client_key is None:
        user.scram_client_key, user.scram_server_key = ck, sk


def _server_from_row(fd: int, r: dict, st: dict | None, sock: socket.socket):
    if st is None:       # from a C PgBouncer: only what SHOW FDS tells
        key = _key_bytes(r["cancel"])
        st = {"db": r["database"], "user": r["user"], "host": r["addr"], "port": int(r["port"] or 5432),
              "unix_path": None, "backend_pid": struct.unpack("!I", key[:4])[0], "backend_key": key[4:].hex(),
              "params": {k: v for k, v in (("client_encoding", r["client_encoding"]),
                                           ("standard_conforming_strings", r["std_strings"]),
                                           ("DateStyle", r["datestyle"]), ("TimeZone", r["timezone"])) if v},
              "state": SV_ACTIVE if int(r["link"] or 0) else SV_IDLE, "ready": True, "link": int(r["link"] or 0)}
        if sock.family == socket.AF_UNIX:
            st["unix_path"] = server.server_unix_path(r["addr"] if r["addr"] != "unix" else None, st["port"])
    db = _database(st["db"])
    if db is None:
        return None
    _row_credentials(r, st["user"], db)
    pool = registry.get_pool(db, _user(st["user"], db))
    s = server.Server(pool, st["host"], st["port"], st.get("unix_path"), pooling.PoolSide)
    s.phase = server.PH_WORK
    s.params = varcache.Values(st.get("params") or {})
    s.backend_pid = st.get("backend_pid", 0)
    s.backend_key = _unhex(st.get("backend_key"))
    s.ready = st.get("ready", True)
    s.expect_rfq = st.get("expect_rfq", 0)
    s.tail = _unhex(st.get("tail"))
    s.skip = st.get("skip", 0)
    s.query_start = st.get("query_start", 0.0)
    s.xact_start = st.get("xact_start", 0.0)
    for attr in ("created", "connect_time", "request_time", "idle_since", "close_needed"):
        if attr in st:
            setattr(s, attr, st[attr])
    prepare.import_server(s, st.get("prepared"))
    s._takeover = st
    return s


def _client_from_row(fd: int, r: dict, st: dict | None, listeners):
    if st is None:
        _row_credentials(r, r["user"], _database(r["database"]))
        st = {"username": r["user"], "dbname": r["database"], "auth_user": r["user"], "pool_user": r["user"],
              "state": CL_ACTIVE, "cancel_key": _key_bytes(r["cancel"]).hex(),
              "vars": {k: v for k, v in (("client_encoding", r["client_encoding"]),
                                         ("standard_conforming_strings", r["std_strings"]),
                                         ("DateStyle", r["datestyle"]), ("TimeZone", r["timezone"])) if v},
              "link": int(r["link"] or 0)}
    db = _database(st["dbname"])
    if db is None:
        return None
    unix = [lst for lst in listeners if lst.unix]
    c = client.Client(unix[0] if unix else None)
    c.username, c.dbname, c.db = st["username"], st["dbname"], db
    c.user = _user(st.get("auth_user") or st["username"], db)
    pool_user = _user(st.get("pool_user") or st["username"], db)
    c.pool = registry.get_pool(db, pool_user)
    c.pool_mode = st.get("pool_mode") or c.pool.pool_mode(registry.cfg)
    c.vars = varcache.share(st.get("vars") or {})
    c.startup_params = dict(st.get("startup_params") or {})
    c.cancel_key = _unhex(st.get("cancel_key"))
    pending = _unhex(st.get("pending"))
    c.pending = bytearray(pending) if pending else b""
    c.tail = _unhex(st.get("tail"))
    c.skip = st.get("skip", 0)
    c.phase = client.PH_WORK
    c._max_packet = registry.cfg.max_packet_size
    for attr in ("created", "connect_time", "request_time", "wait_start"):
        if attr in st:
            setattr(c, attr, st[attr])
    prepare.import_client(c, st.get("prepared"))
    c._takeover = st
    return c


async def adopt(inh: Inherited, listeners) -> None:
    """Turn the handed-over client and server sockets into live Client/Server objects."""
    if inh.globals:
        _apply_globals(inh.globals)
    by_old_fd: dict[int, object] = {}
    servers, clients = [], []
    for fd, r, st in inh.servers:
        sock = socket.socket(fileno=fd)
        s = _server_from_row(fd, r, st, sock)
        if s is None:
            log.warning(f"takeover: dropping server socket of unknown database {r.get('database')}")
            sock.close()
            continue
        try:
            await _attach(sock, s, accepted=False)
        except OSError as e:
            log.warning(f"takeover: could not adopt server socket: {e}")
            sock.close()
            continue
        s.local_addr = local_addr_of(s.transport)
        by_old_fd[int(r["fd"])] = s
        servers.append(s)
    for fd, r, st in inh.clients:
        sock = socket.socket(fileno=fd)
        c = _client_from_row(fd, r, st, listeners)
        if c is None:
            log.warning(f"takeover: dropping client socket of unknown database {r.get('database')}")
            sock.close()
            continue
        try:
            await _attach(sock, c, accepted=True)
        except OSError as e:
            log.warning(f"takeover: could not adopt client socket: {e}")
            sock.close()
            continue
        c.addr, c.port, c.is_unix = addr_of(c.transport)
        if c.is_unix:
            cred = peer_cred(c.transport)
            if cred:
                c.peer_pid, c.peer_uid = cred[0], cred[1]
            if c.listener is not None:
                c.port = c.listener.port
        c.local_addr = local_addr_of(c.transport)
        by_old_fd[int(r["fd"])] = c
        clients.append(c)
    # place everything in its lists, re-link the pairs
    for s in servers:
        link = by_old_fd.get(s._takeover.get("link") or -1)
        if link is not None:
            restore_link(s, link)
        set_server_state(s, s._takeover.get("state") if s.link is not None else SV_IDLE)
        if s.link is None and s._takeover.get("state") in (SV_ACTIVE,):
            set_server_state(s, SV_IDLE if s.ready else SV_USED)
    for c in clients:
        peer = by_old_fd.get(c._takeover.get("link") or -1)
        if peer is not None and peer.link is c:
            restore_link(c, peer)
        c.db.clients[c] = None
        c.user.account.clients[c] = None
        c.counted_db, c.counted_user = c.db, c.user.account
        if c.cancel_key:
            registry.cancel_keys[c.cancel_key] = c
        state = c._takeover.get("state", CL_ACTIVE)
        if c.link is None and state == CL_ACTIVE or c.link is not None:
            state = CL_ACTIVE
        set_client_state(c, state)
    for s in servers:
        if s.link is not None and s.link.link is not s:
            unlink(None, s)
            set_server_state(s, SV_IDLE if s.ready else SV_USED)
    # let the data flow again
    for s in servers:
        pending = _unhex(s._takeover.get("pending"))
        del s._takeover
        _release(s, pending, True)
    for c in clients:
        paused = c._takeover.get("paused_reading", False) and c.link is None
        del c._takeover
        c.paused_reading = paused
        _release(c, b"", not paused)
    for s in servers:
        if s.state == SV_USED and s.link is None and not s.closed:
            pooling.server_available(s)
    for c in clients:
        if c.phase != 4 and c.link is None and (c.state == CL_WAITING or c.pending):
            if c.state == CL_WAITING:
                set_client_state(c, CL_ACTIVE)
            pooling.activate_client(c)
    for pool in registry.pools.values():
        for s in list(pool.idle_servers):
            if pool.waiting_clients:
                pooling.server_available(s)
    log.info(f"takeover: adopted {len(clients)} clients and {len(servers)} servers from pid {inh.old_pid}")
