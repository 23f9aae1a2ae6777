"""Every SHOW command of the console: PgBouncer 1.25's column names, order and wire types, real values."""

import sys
import time

from pgbouncer_py import VERSION_STRING
from pgbouncer_py.admin import fds
from pgbouncer_py.log import format_time
from pgbouncer_py.objects import registry
from pgbouncer_py.stats import COUNTERS

TEXT, INT4, INT8, NUMERIC, BYTEA = 25, 23, 20, 1700, 17
_TYPE_CODES = {"s": TEXT, "i": INT4, "q": INT8, "N": NUMERIC, "T": TEXT, "b": BYTEA}


class Result:
    """A row set: columns (name, type oid), rows (lists of values, None = NULL) and the command tag."""

    __slots__ = ("columns", "rows", "tag")

    def __init__(self, columns: list[tuple[str, int]], rows: list[list], tag: str = "SHOW"):
        self.columns = columns
        self.rows = rows
        self.tag = tag


def cols(names: str, types: str) -> list[tuple[str, int]]:
    """Column list from space-separated names and PgBouncer's one-letter type string."""
    n = names.split()
    if len(n) != len(types):
        raise ValueError(f"{len(n)} names for {len(types)} types")
    return [(name, _TYPE_CODES[t]) for name, t in zip(n, types, strict=True)]


# --- column tables (1.25) ---
STATS_COLS = cols(
    "database total_server_assignment_count total_xact_count total_query_count total_received total_sent "
    "total_xact_time total_query_time total_wait_time total_client_parse_count total_server_parse_count "
    "total_bind_count total_client_login_count avg_server_assignment_count avg_xact_count avg_query_count "
    "avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time avg_client_parse_count "
    "avg_server_parse_count avg_bind_count avg_client_login_count", "s" + "N" * 24)
STATS_TOTALS_COLS = cols(
    "database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time "
    "wait_time client_parse_count server_parse_count bind_count client_login_count", "s" + "N" * 12)
STATS_AVERAGES_COLS = cols(
    "database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time "
    "wait_time avg_client_parse_count avg_server_parse_count avg_bind_count avg_client_login_count", "s" + "N" * 12)
TOTALS_COLS = cols("name value", "sN")
TOTALS_NAMES = ("server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes",
                "xact_time", "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count",
                "ps_bind_count", "client_login_count")
SOCKET_COLS = cols(
    "type user database replication state addr port local_addr local_port connect_time request_time wait "
    "wait_us close_needed ptr link remote_pid tls application_name prepared_statements id",
    "ssssssisiTTiiississiq")
SOCKETS_EXTRA_COLS = cols("recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail send_avail", "iiiiiii")
POOLS_COLS = cols(
    "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel "
    "sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode load_balance_hosts",
    "ss" + "i" * 13 + "ss")
PEER_POOLS_COLS = cols("peer_id cl_active_cancel_req cl_waiting_cancel_req sv_active_cancel sv_login", "iiiii")
LISTS_COLS = cols("list items", "si")
USERS_COLS = cols(
    "name pool_size reserve_pool_size pool_mode max_user_connections current_connections "
    "max_user_client_connections current_client_connections", "ssssiiii")
DATABASES_COLS = cols(
    "name host port database force_user pool_size min_pool_size reserve_pool_size server_lifetime pool_mode "
    "load_balance_hosts max_connections current_connections max_client_connections current_client_connections "
    "paused disabled", "ssissiiiissiiiiii")
PEERS_COLS = cols("peer_id host port pool_size", "isii")
CONFIG_COLS = cols("key value default changeable", "ssss")
MEM_COLS = cols("name size used free memtotal", "siiii")
DNS_HOSTS_COLS = cols("hostname ttl addrs", "sqs")
DNS_ZONES_COLS = cols("zonename serial count", "sqi")
VERSION_COLS = cols("version", "s")
STATE_COLS = cols("key value", "ss")

# server states as SHOW SERVERS prints them
_SV_STATE_NAMES = {"login": "new", "idle": "idle", "active": "active", "used": "used", "tested": "tested",
                   "active_cancel": "active_cancel", "being_canceled": "being_canceled"}
_CL_STATE_NAMES = {"active": "active", "waiting": "waiting", "waiting_login": "waiting", "login": "login",
                   "active_cancel_req": "active_cancel_req", "waiting_cancel_req": "waiting_cancel_req"}
# SHOW SOCKETS uses the internal list names
_CL_SOCKET_STATE = {"active": "cl_active", "waiting": "cl_waiting", "waiting_login": "cl_waiting",
                    "login": "cl_login", "active_cancel_req": "cl_active_cancel_req",
                    "waiting_cancel_req": "cl_waiting_cancel_req"}
_SV_SOCKET_STATE = {"login": "sv_login", "idle": "sv_idle", "active": "sv_active", "used": "sv_used",
                    "tested": "sv_tested", "active_cancel": "sv_active_cancel",
                    "being_canceled": "sv_being_canceled"}


# --- helpers ---
def databases() -> list:
    """Configured databases plus the admin database, sorted by name like PgBouncer's list."""
    out = {}
    for db in registry.databases.values():
        out[db.name] = db
    if registry.admin_db is not None:
        out[registry.admin_db.name] = registry.admin_db
    return [out[k] for k in sorted(out)]


def users() -> list:
    out = dict(registry.users)
    if registry.admin_user is not None:
        out.setdefault(registry.admin_user.name, registry.admin_user)
    return [out[k] for k in sorted(out)]


def pools() -> list:
    return [registry.pools[k] for k in sorted(registry.pools)]


def all_clients():
    """Every client the console knows: logged in (per pool) then still logging in."""
    for pool in pools():
        yield from pool.all_clients()
    yield from list(registry.login_clients)


def all_servers():
    for pool in pools():
        yield from pool.all_servers()


def socket_id(obj) -> int:
    """The small integer shown in the `id` column: clients and servers take it from one counter when their
    socket is created (registry.socket_ids), so ids show creation order, as PgBouncer's do."""
    return obj.id


def ptr(obj) -> str:
    return f"0x{id(obj):x}"


def _time_text(t: float) -> str:
    return format_time(t, with_ms=False)


def _split_us(seconds: float) -> tuple[int, int]:
    us = max(0, int(seconds * 1_000_000))
    return us // 1_000_000, us % 1_000_000


def _lbh(db) -> str | None:
    conf = db.conf
    if conf is not None and conf.host and "," in conf.host:
        return conf.load_balance_hosts
    return None


# --- stats ---
def _avg(db) -> dict:
    return db.avg or dict.fromkeys(COUNTERS, 0)


def show_stats(console, arg):
    rows = []
    for db in databases():
        s = db.stats.as_tuple()
        a = _avg(db)
        rows.append([db.name, *s, *(a[c] for c in COUNTERS)])
    return Result(STATS_COLS, rows)


def show_stats_totals(console, arg):
    return Result(STATS_TOTALS_COLS, [[db.name, *db.stats.as_tuple()] for db in databases()])


def show_stats_averages(console, arg):
    rows = []
    for db in databases():
        a = _avg(db)
        rows.append([db.name, *(a[c] for c in COUNTERS)])
    return Result(STATS_AVERAGES_COLS, rows)


def show_totals(console, arg):
    totals = dict.fromkeys(COUNTERS, 0)
    seen = set()
    for db in databases():
        if id(db) in seen:
            continue
        seen.add(id(db))
        for c, v in zip(COUNTERS, db.stats.as_tuple(), strict=True):
            totals[c] += v
    avg = getattr(registry, "total_avg", None) or dict.fromkeys(COUNTERS, 0)
    rows = [[f"total_{n}", totals[c]] for n, c in zip(TOTALS_NAMES, COUNTERS, strict=True)]
    rows += [[f"avg_{n}", avg[c]] for n, c in zip(TOTALS_NAMES, COUNTERS, strict=True)]
    return Result(TOTALS_COLS, rows)


# --- sockets ---
def client_row(c, now: float, sockets: bool = False) -> list:
    pool = c.pool
    if pool is not None:
        user = c.username if c.admin else (c.user.name if c.user is not None else c.username)   # console: login name
        dbname = pool.db.name
    else:
        user, dbname = c.username or None, c.dbname or None
    if sockets:
        state = _CL_SOCKET_STATE.get(c.state, c.state)
    else:
        state = _CL_STATE_NAMES.get(c.state, c.state)
        if c.state == "active" and c.link is None:
            state = "idle"
    if c.is_unix:
        addr, laddr, lport = "unix", "unix", c.port
    else:
        addr, (laddr, lport) = c.addr, c.local_addr
    wait, wait_us = 0, 0
    if c.state in ("waiting", "waiting_login") and c.wait_start:
        wait, wait_us = _split_us(now - c.wait_start)
    link = ptr(c.link) if c.link is not None else ""
    row = [
        "C", user, dbname, getattr(c, "replication", "none") or "none", state, addr, c.port, laddr, lport,
        _time_text(c.connect_time), _time_text(c.request_time), wait, wait_us, 0, ptr(c), link,
        c.peer_pid or 0, c.tls or "", c.vars.get("application_name", ""), len(getattr(c, "prepared", ()) or ()),
        socket_id(c),
    ]
    if sockets:
        row += _buffer_cols(c, len(c.pending))
    return row


def server_row(s, now: float, sockets: bool = False) -> list:
    pool = s.pool
    state = (_SV_SOCKET_STATE if sockets else _SV_STATE_NAMES).get(s.state, s.state)
    if s.unix_path is not None:
        addr, laddr, lport = "unix", "unix", s.port
    else:
        addr, (laddr, lport) = s.host, s.local_addr
    link = ptr(s.link) if s.link is not None else ""
    app = s.params.get("application_name", "")
    row = [
        "S", pool.user.name, pool.db.name, s.replication or "none", state, addr, s.port, laddr, lport,
        _time_text(s.connect_time), _time_text(s.request_time), 0, 0, 1 if s.close_needed else 0, ptr(s), link,
        s.backend_pid or 0, s.tls or "", app, len(getattr(s, "prepared", ()) or ()), socket_id(s),
    ]
    if sockets:
        row += _buffer_cols(s, len(s.tail))
    return row


def _buffer_cols(obj, pending: int) -> list[int]:
    t = obj.transport
    send = 0
    if t is not None and not t.is_closing():
        try:
            send = t.get_write_buffer_size()
        except (AttributeError, RuntimeError):
            send = 0
    return [pending, 0, 0, 0, send, pending, send]


def show_clients(console, arg):
    now = time.monotonic()
    return Result(SOCKET_COLS, [client_row(c, now) for c in all_clients()])


def show_servers(console, arg):
    now = time.monotonic()
    return Result(SOCKET_COLS, [server_row(s, now) for s in all_servers()])


def show_sockets(console, arg, active_only: bool = False):
    now = time.monotonic()
    rows = [client_row(c, now, True) for c in all_clients()] + [server_row(s, now, True) for s in all_servers()]
    if active_only:
        rows = [r for r in rows if r[-7] or r[-3]]   # recv_pos or send_remain: data in a buffer
    return Result(SOCKET_COLS + SOCKETS_EXTRA_COLS, rows)


def show_active_sockets(console, arg):
    return show_sockets(console, arg, active_only=True)


# --- pools, lists, users, databases, peers ---
def show_pools(console, arg):
    now = time.monotonic()
    cfg = registry.cfg
    rows = []
    for p in pools():
        oldest = next(iter(p.waiting_clients), None)
        maxwait, maxwait_us = _split_us(now - oldest.wait_start) if oldest is not None and oldest.wait_start \
            else (0, 0)
        mode = "statement" if p.db.admin else p.pool_mode(cfg)
        rows.append([p.db.name, p.user.name, len(p.active_clients), len(p.waiting_clients), len(p.active_cancel_req),
                     len(p.waiting_cancel_req), len(p.active_servers), len(p.active_cancel_servers),
                     len(p.being_canceled_servers), len(p.idle_servers), len(p.used_servers), len(p.tested_servers),
                     len(p.login_servers), maxwait, maxwait_us, mode, _lbh(p.db)])
    return Result(POOLS_COLS, rows)


def show_peer_pools(console, arg):
    # cancel requests to peers are forwarded on their own short connections, so no peer pool holds sockets
    return Result(PEER_POOLS_COLS, [])


def show_lists(console, arg):
    used_clients = sum(p.client_count() for p in registry.pools.values()) + len(registry.login_clients)
    used_servers = sum(p.server_count() for p in registry.pools.values())
    rows = [["databases", len(databases())], ["users", len(users())], ["peers", len(registry.cfg.peers)],
            ["pools", len(registry.pools)], ["peer_pools", 0], ["free_clients", 0],
            ["used_clients", used_clients], ["login_clients", len(registry.login_clients)],
            ["free_servers", 0], ["used_servers", used_servers], ["dns_names", 0], ["dns_zones", 0],
            ["dns_queries", 0], ["dns_pending", 0]]
    return Result(LISTS_COLS, rows)


def _pad(v) -> str:
    return "" if v is None else f"{v:9d}"


def show_users(console, arg):
    cfg = registry.cfg
    rows = []
    for u in users():
        conf = u.conf
        servers = sum(p.server_count() for p in registry.pools.values() if p.user.account is u and not p.db.admin)
        rows.append([u.name, _pad(getattr(conf, "pool_size", None)), _pad(getattr(conf, "reserve_pool_size", None)),
                     getattr(conf, "pool_mode", None), u.setting("max_user_connections", cfg.max_user_connections),
                     servers, u.setting("max_user_client_connections", cfg.max_user_client_connections),
                     u.client_count])
    return Result(USERS_COLS, rows)


def show_databases(console, arg):
    cfg = registry.cfg
    rows = []
    for db in databases():
        if db.admin:
            # the console's own row: the global limits, its logged-in clients
            rows.append([db.name, None, cfg.listen_port, db.name, registry.admin_user.name, 2, 0, 0,
                         int(cfg.server_lifetime), "statement", None, cfg.max_db_connections, 0,
                         cfg.max_db_client_connections, db.client_count, int(db.paused), int(db.disabled)])
            continue
        conf = db.conf
        servers = sum(p.server_count() for p in registry.pools.values() if p.db is db)
        rows.append([
            db.name, conf.host, conf.port, db.dbname, conf.user,
            db.setting("pool_size", cfg.default_pool_size), db.setting("min_pool_size", cfg.min_pool_size),
            db.setting("reserve_pool_size", cfg.reserve_pool_size),
            int(db.setting("server_lifetime", cfg.server_lifetime)), conf.pool_mode, _lbh(db),
            db.setting("max_db_connections", cfg.max_db_connections), servers,
            db.setting("max_db_client_connections", cfg.max_db_client_connections), db.client_count,
            int(db.paused), int(db.disabled)])
    return Result(DATABASES_COLS, rows)


def show_peers(console, arg):
    cfg = registry.cfg
    rows = [[p.peer_id, p.host, p.port, p.pool_size if p.pool_size is not None else cfg.default_pool_size]
            for _, p in sorted(cfg.peers.items())]
    return Result(PEERS_COLS, rows)


# --- process-level (SHOW FDS lives in admin/fds.py: it passes the descriptors for online restart) ---
def show_config(console, arg):
    return Result(CONFIG_COLS, [list(r) for r in registry.cfg.show_rows()])


def _mem_row(name: str, objs: list) -> list:
    if objs:
        o = objs[0]
        size = sys.getsizeof(o) + (sys.getsizeof(o.__dict__) if hasattr(o, "__dict__") else 0)
    else:
        size = 0
    return [name, size, len(objs), 0, size * len(objs)]


def show_mem(console, arg):
    clients = list(all_clients())
    servers = list(all_servers())
    rows = [_mem_row("user_cache", users()), _mem_row("db_cache", databases()),
            _mem_row("pool_cache", pools()), _mem_row("server_cache", servers),
            _mem_row("client_cache", clients)]
    return Result(MEM_COLS, rows)


def show_dns_hosts(console, arg):
    # host names are resolved by the event loop per connection; there is no DNS cache to list
    return Result(DNS_HOSTS_COLS, [])


def show_dns_zones(console, arg):
    return Result(DNS_ZONES_COLS, [])


def show_version(console, arg):
    return Result(VERSION_COLS, [[VERSION_STRING]])


def show_state(console, arg):
    def yn(b: bool) -> str:
        return "yes" if b else "no"
    paused = registry.paused and not registry.suspended
    active = not (registry.paused or registry.suspended)
    return Result(STATE_COLS, [["active", yn(active)], ["paused", yn(paused)], ["suspended", yn(registry.suspended)]])


SHOW_COMMANDS = {
    "stats": show_stats, "stats_totals": show_stats_totals, "stats_averages": show_stats_averages,
    "totals": show_totals, "servers": show_servers, "clients": show_clients, "pools": show_pools,
    "peer_pools": show_peer_pools, "lists": show_lists, "users": show_users, "databases": show_databases,
    "peers": show_peers, "sockets": show_sockets, "active_sockets": show_active_sockets,
    "config": show_config, "mem": show_mem, "dns_hosts": show_dns_hosts, "dns_zones": show_dns_zones,
    "version": show_version, "state": show_state,
    "fds": fds.show_fds, "takeover_state": fds.show_takeover_state,    # admin only: commands.SHOW_ONLY_FOR_ADMIN
}
