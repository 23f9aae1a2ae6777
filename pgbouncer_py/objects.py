"""Databases, users and pools, and the one place that moves a client or server between the lists of its pool,
links and unlinks them (link_idle_fast is the hot link of an idle server), and releases a server at the end of a
transaction (release, server_available: an auth_query lookup, a waiting client, or the idle list).

A socket's state is a location (DESIGN.md rule 3): every client/server sits in exactly one list, counts are lengths.
A move the state machine does not know (set_client_state/set_server_state) is an internal error: logged, and that
one connection is closed.
"""

import itertools
import os
import random
import time
from time import monotonic

from pgbouncer_py import varcache
from pgbouncer_py.log import log
from pgbouncer_py.stats import Stats

# client states (names as SHOW SOCKETS prints them, without the cl_ prefix)
CL_LOGIN = "login"
CL_WAITING_LOGIN = "waiting_login"
CL_WAITING = "waiting"
CL_ACTIVE = "active"
CL_ACTIVE_CANCEL = "active_cancel_req"
CL_WAITING_CANCEL = "waiting_cancel_req"
CL_FREE = "free"

# server states
SV_LOGIN = "login"
SV_IDLE = "idle"
SV_ACTIVE = "active"
SV_USED = "used"
SV_TESTED = "tested"
SV_ACTIVE_CANCEL = "active_cancel"
SV_BEING_CANCELED = "being_canceled"
SV_FREE = "free"

CLIENT_LISTS = {CL_WAITING_LOGIN: "waiting_clients", CL_WAITING: "waiting_clients", CL_ACTIVE: "active_clients",
                CL_ACTIVE_CANCEL: "active_cancel_req", CL_WAITING_CANCEL: "waiting_cancel_req"}
SERVER_LISTS = {SV_LOGIN: "login_servers", SV_IDLE: "idle_servers", SV_ACTIVE: "active_servers",
                SV_USED: "used_servers", SV_TESTED: "tested_servers", SV_ACTIVE_CANCEL: "active_cancel_servers",
                SV_BEING_CANCELED: "being_canceled_servers"}


class _Nowhere(dict):
    """The list of sockets in no list: holds nothing."""

    __slots__ = ()

    def __setitem__(self, key, value) -> None:
        pass


NOWHERE = _Nowhere()


class Database:
    """A [databases] entry (or an auto-database made from '*', or the admin database 'pgbouncer')."""

    def __init__(self, name: str, conf=None, *, admin: bool = False, auto: bool = False, fake: bool = False):
        self.name = name
        self.conf = conf
        self.admin = admin
        self.auto = auto
        self.fake = fake            # placeholder for an unknown name: the client is authenticated, then refused
        self.paused = False
        self.disabled = False
        self.dirty = False          # configuration changed: close servers when released
        self.forced_user = None     # User when conf.user is set
        self.stats = Stats()
        self.old_stats = Stats()
        self.avg: dict = {}
        self.inactive_since = time.monotonic()
        self.host_index = 0
        self.clients: dict = {}     # clients of this database, from login on (max_db_client_connections)
        self.dynamic_users: dict[str, DbUser] = {}   # users auth_query found for logins to this database

    @property
    def client_count(self) -> int:
        return len(self.clients)

    @property
    def dbname(self) -> str:
        if self.conf is not None and self.conf.dbname:
            return self.conf.dbname
        return self.name

    def setting(self, attr: str, default):
        v = getattr(self.conf, attr, None) if self.conf is not None else None
        return default if v is None else v


class User:
    """A user of the global table (Registry.users): auth_file secret, [users] settings, the client count of
    max_user_client_connections, SHOW USERS. Pass-through SCRAM keys for its secret live here."""

    dynamic = False                   # True for DbUser: a secret auth_query returned for one database

    def __init__(self, name: str, secret: str | None = None, conf=None):
        self.name = name
        self.secret = secret          # plain password, md5 secret, SCRAM secret or None (no auth_file entry)
        self.conf = conf
        self.scram_client_key: bytes | None = None
        self.scram_server_key: bytes | None = None
        self.clients: dict = {}       # clients of this user, from authentication on (max_user_client_connections)

    @property
    def client_count(self) -> int:
        return len(self.clients)

    @property
    def account(self) -> "User":
        """The global user whose settings and counts apply (itself)."""
        return self

    def setting(self, attr: str, default):
        v = getattr(self.conf, attr, None) if self.conf is not None else None
        return default if v is None else v


class DbUser(User):
    """A user auth_query found for logins to one database (Database.dynamic_users): the secret and SCRAM keys are
    that database's only, so another database or the console never sees them; settings and counts are those of
    the global user of the same name (`account`)."""

    dynamic = True

    def __init__(self, account: User, secret: str | None):
        self._account = account
        self.name = account.name
        self.secret = secret
        self.scram_client_key = None
        self.scram_server_key = None

    @property
    def account(self) -> User:
        return self._account

    @property
    def conf(self):
        return self._account.conf

    @property
    def clients(self) -> dict:
        return self._account.clients

    @property
    def client_count(self) -> int:
        return len(self._account.clients)


class Pool:
    """Clients and servers of one (database, user) pair."""

    def __init__(self, db: Database, user: User):
        self.db = db
        self.user = user
        self.waiting_clients: dict = {}
        self.active_clients: dict = {}
        self.active_cancel_req: dict = {}
        self.waiting_cancel_req: dict = {}
        self.login_servers: dict = {}
        self.idle_servers: dict = {}
        self.active_servers: dict = {}
        self.used_servers: dict = {}
        self.tested_servers: dict = {}
        self.active_cancel_servers: dict = {}
        self.being_canceled_servers: dict = {}
        self.welcome_params: dict[str, str] | None = None   # ParameterStatus of the first server login
        self.welcome_stale = False       # RECONNECT / changed database: new clients wait for a new login
        self.last_login_error: str | None = None   # the last server login was refused (cached error)
        self.last_failed_time = 0.0      # monotonic time of the last failed connect or login; 0 after a login
        self.replication_seen = False    # a replication client used this pool (pooling serves them first)
        self.last_connect_time = 0.0
        self.last_lifetime_disconnect = 0.0
        self.reserve_used = 0
        self.auth_waiters: list = []     # auth_query lookups waiting for a server (auth/auth_query.py)
        self.created = time.monotonic()
        self.last_active = time.monotonic()
        # state -> the list (dict used as an ordered set) holding sockets in that state; not yet in a state (None)
        # and free ones are in no list (NOWHERE), so a move is two subscripts
        self.client_lists = {state: getattr(self, name) for state, name in CLIENT_LISTS.items()}
        self.server_lists = {state: getattr(self, name) for state, name in SERVER_LISTS.items()}
        self.server_lists[None] = self.server_lists[SV_FREE] = NOWHERE
        self._lifetime_cfg = None
        self._lifetime_db_conf = None
        self._lifetime = 0.0
        self._cap_key = None
        self._cap = 0
        self._mode_key = None
        self._mode = ""

    def server_lifetime(self, cfg) -> float:
        """Effective server_lifetime (database setting over the global one), cached per config object."""
        if self._lifetime_cfg is not cfg or self._lifetime_db_conf is not self.db.conf:
            self._lifetime = self.db.setting("server_lifetime", cfg.server_lifetime)
            self._lifetime_cfg = cfg
            self._lifetime_db_conf = self.db.conf
        return self._lifetime

    def server_count(self) -> int:
        return (len(self.login_servers) + len(self.idle_servers) + len(self.active_servers) + len(self.used_servers)
                + len(self.tested_servers) + len(self.active_cancel_servers) + len(self.being_canceled_servers))

    def client_count(self) -> int:
        return (len(self.waiting_clients) + len(self.active_clients) + len(self.active_cancel_req)
                + len(self.waiting_cancel_req))

    def all_servers(self):
        for name in SERVER_LISTS.values():
            yield from list(getattr(self, name))

    def all_clients(self):
        for name in ("active_clients", "waiting_clients", "active_cancel_req", "waiting_cancel_req"):
            yield from list(getattr(self, name))

    # settings with per-user, per-database and global precedence
    def pool_mode(self, cfg) -> str:
        """Cached per config object and database/user entry, as launch_cap (asked at every login: the two
        setting() calls cost ~1,500 instructions per login, bench/run.py --callgrind S-C-c10)."""
        key = self._mode_key
        if key is None or key[0] is not cfg or key[1] is not self.db.conf or key[2] is not self.user.conf:
            m = self.user.setting("pool_mode", None)
            if m is None:
                m = self.db.setting("pool_mode", None)
            self._mode = m or cfg.pool_mode
            self._mode_key = (cfg, self.db.conf, self.user.conf)
        return self._mode

    def launch_cap(self, cfg) -> int:
        """pool_size + reserve_pool_size: no server connection can be launched at or beyond it. Cached per
        config object (RELOAD and SET make a new one) and database/user entry."""
        key = self._cap_key
        if key is None or key[0] is not cfg or key[1] is not self.db.conf or key[2] is not self.user.conf:
            self._cap = self.pool_size(cfg) + max(self.reserve_pool_size(cfg), 0)
            self._cap_key = (cfg, self.db.conf, self.user.conf)
        return self._cap

    def pool_size(self, cfg) -> int:
        v = self.user.setting("pool_size", None)
        if v is None:
            v = self.db.setting("pool_size", None)
        return cfg.default_pool_size if v is None else v

    def min_pool_size(self, cfg) -> int:
        return self.db.setting("min_pool_size", cfg.min_pool_size)

    def reserve_pool_size(self, cfg) -> int:
        v = self.user.setting("reserve_pool_size", None)
        if v is None:
            v = self.db.setting("reserve_pool_size", None)
        return cfg.reserve_pool_size if v is None else v


class Registry:
    """Everything the process knows: config, databases, users, pools, clients in login, cancel keys."""

    def __init__(self):
        self.cfg = None
        self.databases: dict[str, Database] = {}
        self.users: dict[str, User] = {}
        self.auth_users: dict[str, str] = {}     # from auth_file
        self.pools: dict[tuple[str, str], Pool] = {}
        self.login_clients: dict = {}
        self.cancel_keys: dict[bytes, object] = {}
        self.clients: dict = {}                   # every client connection, from accept to close
        self.paused = False
        self.suspended = False
        self.shutting_down = False
        self.admin_db: Database | None = None
        self.admin_user: User | None = None
        self.start_time = time.time()
        self.wall_offset = time.time() - time.monotonic()   # monotonic -> wall clock; the janitor refreshes it
        self.loop = None
        self.main = None                          # pgbouncer_py.main.Pooler
        self.socket_ids = itertools.count(1)      # SHOW CLIENTS/SERVERS `id` (the KILL_CLIENT handle)
        self.total_avg: dict = {}                 # stats_period averages over all databases (SHOW TOTALS)

    @property
    def total_clients(self) -> int:
        return len(self.clients)

    def get_pool(self, db: Database, user: User) -> Pool:
        key = (db.name, user.name)
        pool = self.pools.get(key)
        if pool is None:
            pool = Pool(db, user)
            self.pools[key] = pool
        elif pool.user is not user:
            pool.user = user        # the name's credentials changed (auth_file <-> auth_query): the latest log in
        return pool

    def find_client_by_key(self, key: bytes):
        if len(key) == 8 and getattr(self.cfg, "peer_id", 0):
            key = bytes((key[0] | 0xC0,)) + key[1:]     # a forwarded key has a lower TTL than the one we issued
        return self.cancel_keys.get(key)

    def new_cancel_key(self) -> bytes:
        """8 random bytes; with peer_id set, the first two bytes carry a forwarding TTL (top 2 bits, 3 = fresh)
        and our 14-bit peer id, so any process of a so_reuseport group can route a cancel request to us."""
        peer_id = int(getattr(self.cfg, "peer_id", 0) or 0)
        while True:
            key = os.urandom(8)
            if peer_id:
                key = bytes((0xC0 | ((peer_id >> 8) & 0x3F), peer_id & 0xFF)) + key[2:]
            if key not in self.cancel_keys:
                return key


registry = Registry()


# the moves set_client_state/set_server_state accept: a connection starts (None) anywhere (a login, or restored by
# an online restart), leaves (FREE) from anywhere; FREE is final; only the startup enters login; a client waits
# for its login only from login; a cancel request is one from login. Anything else is an internal error.
_CLIENT_STATES = frozenset((CL_LOGIN, CL_WAITING_LOGIN, CL_WAITING, CL_ACTIVE, CL_ACTIVE_CANCEL, CL_WAITING_CANCEL,
                            CL_FREE))
_SERVER_STATES = frozenset((SV_LOGIN, SV_IDLE, SV_ACTIVE, SV_USED, SV_TESTED, SV_ACTIVE_CANCEL, SV_BEING_CANCELED,
                            SV_FREE))
_CLIENT_MOVES = {
    None: _CLIENT_STATES,
    CL_LOGIN: frozenset((CL_LOGIN, CL_WAITING_LOGIN, CL_ACTIVE, CL_ACTIVE_CANCEL, CL_FREE)),
    CL_WAITING_LOGIN: frozenset((CL_WAITING_LOGIN, CL_ACTIVE, CL_WAITING, CL_FREE)),
    CL_WAITING: frozenset((CL_WAITING, CL_ACTIVE, CL_FREE)),
    CL_ACTIVE: frozenset((CL_ACTIVE, CL_WAITING, CL_FREE)),
    CL_ACTIVE_CANCEL: frozenset((CL_ACTIVE_CANCEL, CL_FREE)),
    CL_WAITING_CANCEL: frozenset((CL_WAITING_CANCEL, CL_ACTIVE_CANCEL, CL_FREE)),
    CL_FREE: frozenset((CL_FREE,)),
}
_LIVE_SERVER = _SERVER_STATES - {SV_LOGIN}
_SERVER_MOVES = {state: _LIVE_SERVER for state in _SERVER_STATES}
_SERVER_MOVES[None] = _SERVER_STATES
_SERVER_MOVES[SV_FREE] = frozenset((SV_FREE,))


def set_client_state(client, new_state: str) -> None:
    """Move a client to the list of new_state (the only code that does it, but for the hot waiting -> active
    move that link writes out). An illegal move is not made: it is logged as an internal error and that client
    is closed."""
    old = client.state
    if new_state not in _CLIENT_MOVES[old]:
        _illegal_move(client, old, new_state)
        return
    pool = client.pool
    if old is None:
        registry.clients[client] = None
    elif new_state == CL_FREE:
        registry.clients.pop(client, None)
    if old == CL_LOGIN:
        registry.login_clients.pop(client, None)
    elif pool is not None:
        lst = pool.client_lists.get(old)
        if lst is not None:
            lst.pop(client, None)
    client.state = new_state
    if new_state == CL_LOGIN:
        registry.login_clients[client] = None
    elif pool is not None:
        lst = pool.client_lists.get(new_state)
        if lst is not None:
            lst[client] = None


def client_arrived(client) -> None:
    """A new connection enters login: set_client_state(client, CL_LOGIN) written out (None -> login is always
    legal; ~700 instructions less per login)."""
    if client.state is not None:
        set_client_state(client, CL_LOGIN)      # not new: the general move (and its check)
        return
    registry.clients[client] = None
    registry.login_clients[client] = None
    client.state = CL_LOGIN


def client_logged_in(client) -> None:
    """Login over, the client becomes active in its pool: set_client_state(client, CL_ACTIVE) written out for
    the usual move from login (~700 instructions less per login)."""
    pool = client.pool
    if client.state != CL_LOGIN or pool is None:
        set_client_state(client, CL_ACTIVE)     # from waiting-for-login, or illegal: the general move
        return
    registry.login_clients.pop(client, None)
    client.state = CL_ACTIVE
    pool.active_clients[client] = None


def client_gone(client) -> None:
    """The client closed: set_client_state(client, CL_FREE) written out (any state may end; ~700 instructions
    less per connection)."""
    old = client.state
    if old == CL_FREE:
        return
    registry.clients.pop(client, None)
    if old == CL_LOGIN:
        registry.login_clients.pop(client, None)
    elif client.pool is not None:
        lst = client.pool.client_lists.get(old)
        if lst is not None:
            lst.pop(client, None)
    client.state = CL_FREE


def set_server_state(server, new_state: str, now: float = 0.0) -> None:
    """Move a server to the list of new_state (the only code that does it, but for the hot moves that link,
    link_idle_fast and server_available write out); `now`: monotonic, if known. An illegal move is not made: it
    is logged as an internal error and that server is closed."""
    old = server.state
    if new_state not in _SERVER_MOVES[old]:
        _illegal_move(server, old, new_state)
        return
    lists = server.pool.server_lists
    lists[old].pop(server, None)
    server.state = new_state
    lists[new_state][server] = None
    if new_state == SV_IDLE:
        server.idle_since = now or time.monotonic()


def _illegal_move(conn, old, new) -> None:
    log_internal_error(conn, f"illegal state change {old} -> {new}")
    if new != CL_FREE and old != CL_FREE:      # (CL_FREE == SV_FREE) closing moves it to free, a legal move
        conn.close("internal error")


# --- links: a client and the server it uses, set and cleared only here ---

def link(client, server) -> None:
    """Give `server` to `client`: the client active (if it was not), the server active, each the other's link.
    HOT when clients wait for servers: the usual moves (waiting -> active; any server state but free ->
    active, all legal) are written out rather than made by set_client_state/set_server_state (two calls, about
    2,700 instructions per transaction, bench/run.py --callgrind S-simple-c100)."""
    state = client.state
    pool = client.pool
    if state == CL_WAITING and pool is not None:
        pool.waiting_clients.pop(client, None)
        client.state = CL_ACTIVE
        pool.active_clients[client] = None
    elif state != CL_ACTIVE:
        set_client_state(client, CL_ACTIVE)
    old = server.state
    if old == SV_FREE:
        set_server_state(server, SV_ACTIVE)     # illegal: logged as an internal error
    else:
        lists = server.pool.server_lists
        lists[old].pop(server, None)
        server.state = SV_ACTIVE
        lists[SV_ACTIVE][server] = None
    client.link = server
    server.link = client


def link_idle_fast(client):
    """HOT: the common start of a transaction — an idle server that needs no check and no SET (a pool decision
    kept here to link it at once). Links it and returns it, or returns None and leaves everything as it was (the
    caller then takes pooling's general path, activate_client)."""
    pool = client.pool
    idle = pool.idle_servers
    if not idle or client.state != CL_ACTIVE or client.replication != "none":
        return None
    if pool.db.paused or registry.paused or registry.suspended:
        return None
    cfg = registry.cfg
    server = next(iter(idle)) if cfg.server_round_robin else next(reversed(idle))
    now = monotonic()
    delay = cfg.server_check_delay
    if delay is not None and delay >= 0 and now - server.idle_since >= delay:
        return None
    if not varcache.covered(client.vars, server):
        return None
    pool.db.stats.server_assignment_count += 1
    # set_server_state(server, SV_ACTIVE) written out: idle -> active is a legal move, and the call cost ~1,200
    # instructions per transaction (bench/run.py --callgrind S-simple-c10)
    del idle[server]
    server.state = SV_ACTIVE
    pool.active_servers[server] = None
    client.link = server
    server.link = client
    server.request_time = client.request_time = now + registry.wall_offset
    server.query_start = server.xact_start = now    # the client's data goes out right away
    pool.last_active = now
    return server


def restore_link(conn, peer) -> None:
    """Online restart (takeover.py): one side of a pair as the old process had it, set before the states are
    placed; a side whose peer does not point back is ended with unlink() afterwards."""
    conn.link = peer


def unlink(client, server) -> None:
    """End a link (a release, or one side closing)."""
    if client is not None:
        client.link = None
    if server is not None:
        server.link = None


def release(server) -> None:
    """The linked client's transaction is over (decided in one place, Server.relay_at, at ReadyForQuery):
    unlink; a client that already sent more asks for a server again (Client.activate); the server is reset
    (server_reset_query_always) or becomes available."""
    client = server.link
    if client is not None:
        client.link = None
        server.link = None
        client.idle_since = server.last_rfq
        if client.pending:
            client.activate()
        cfg = registry.cfg
        if cfg.server_reset_query_always and cfg.server_reset_query:
            reset_server(server, client.pool_mode)
            return
    server_available(server, server.last_rfq)


def reset_server(server, pool_mode: str) -> None:
    """Session mode (or server_reset_query_always): run server_reset_query before reuse."""
    cfg = registry.cfg
    q = cfg.server_reset_query
    if q and (pool_mode == "session" or cfg.server_reset_query_always):
        set_server_state(server, SV_TESTED)
        server.run_internal(q, _reset_done)
    else:
        server_available(server)


def _reset_done(server, error) -> None:
    if error is not None:
        server.close(f"reset query failed: {error}")
        return
    server_available(server)


STALE = "database configuration changed"     # why a server of a changed configuration goes


def is_stale(server) -> bool:
    """Whether a server must not be reused (RECONNECT, TLS change, database changed on RELOAD): it is closed
    with STALE, one reason for all of them in PgBouncer's words, never the name of an internal flag."""
    db = server.pool.db
    return server.close_needed or (db.dirty and getattr(server, "db_conf", db.conf) is not db.conf)


def server_available(server, now: float = 0.0) -> None:
    """A server that is ready and unlinked: close it if it must go, give it to an auth_query lookup or a waiting
    client, or idle it. `now`: monotonic, if known."""
    state = server.state
    if state == SV_FREE:                # closed
        return
    if not server.ready:
        server.close("server not ready at release")
        return
    if server.cancels:
        set_server_state(server, SV_BEING_CANCELED)    # a cancel request is still on its way to this backend
        return
    pool = server.pool
    db = pool.db
    if server.close_needed or db.dirty:
        if is_stale(server):
            server.close(STALE)
            return
    if not now:
        now = time.monotonic()
    cfg = registry.cfg
    lifetime = pool._lifetime if pool._lifetime_cfg is cfg and pool._lifetime_db_conf is db.conf \
        else pool.server_lifetime(cfg)
    if lifetime and now - server.created > lifetime:
        server.close("server lifetime over")
        return
    if db.paused or registry.paused:
        set_server_state(server, SV_IDLE, now)
        return
    waiters = pool.auth_waiters
    while waiters:                       # auth_query lookups (auth/auth_query.py Lookup) come first
        lookup = waiters.pop(0)
        if not lookup.finished:
            lookup.run_on(server)
            return
    if pool.waiting_clients:
        for client in pool.waiting_clients:
            if client.state == CL_WAITING and client.replication == "none":
                client.take_server(server)     # pooling.link: the client's parameters, then its data
                return
    # set_server_state(server, SV_IDLE, now) written out: from any state but free (returned above) a legal
    # move, and the call cost ~1,200 instructions per transaction (bench/run.py --callgrind S-simple-c10)
    pool.server_lists[state].pop(server, None)
    server.state = SV_IDLE
    pool.idle_servers[server] = None
    server.idle_since = now


def random_choice(seq):
    return random.choice(seq)


def log_internal_error(obj, msg: str) -> None:
    log.error(f"{obj.prefix()}internal error: {msg}")
