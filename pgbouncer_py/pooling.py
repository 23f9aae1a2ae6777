"""Pool decisions: give a client a server (or queue it), launch server connections, react to their logins and
exits. Links, releases and state moves themselves are objects.py's."""

import time

from pgbouncer_py import metrics, varcache
from pgbouncer_py.log import log
from pgbouncer_py.objects import (
    CL_WAITING,
    CL_WAITING_LOGIN,
    STALE,
    SV_BEING_CANCELED,
    SV_IDLE,
    SV_LOGIN,
    SV_TESTED,
    SV_USED,
    registry,
    reset_server,
    server_available,
    set_client_state,
    set_server_state,
    unlink,
)
from pgbouncer_py.objects import link as link_objects
from pgbouncer_py.server import Server, server_unix_path
from pgbouncer_py.varcache import TRACKED_PARAMS, tracked_params  # noqa: F401  (stable names for callers)


def server_password(pool) -> str | None:
    db = pool.db
    if db.conf is not None and db.conf.password is not None and (
            db.conf.user is None or db.conf.user == pool.user.name):
        return db.conf.password
    return pool.user.secret


def server_address(pool) -> tuple[str, int, str | None]:
    """(host, port, unix socket path or None) for a new server connection, honouring host lists."""
    db = pool.db
    conf = db.conf
    host = conf.host if conf is not None else None
    port = conf.port if conf is not None else 5432
    if host and "," in host:
        hosts = [h.strip() for h in host.split(",")]
        if conf.load_balance_hosts == "disable":
            idx = db.host_index % len(hosts)
        else:
            idx = db.host_index % len(hosts)
            db.host_index += 1
        host = hosts[idx]
    path = server_unix_path(host, port)
    if path is not None:
        return (host or (path.rsplit("/", 1)[0] if not path.startswith("\0") else host)), port, path
    return host, port, None


def can_launch(pool, cfg, now: float) -> bool:
    """Whether the limits allow one more server connection for this pool (logs reserve use).

    When max_db_connections / max_user_connections is what stops us, an idle server of another pool of the
    same database / user is closed ("evicted") to make room, as PgBouncer does."""
    total = pool.server_count()
    size = pool.pool_size(cfg)
    reserve_taker = None
    if total >= size:
        reserve = pool.reserve_pool_size(cfg)
        if reserve <= 0 or total >= size + reserve:
            return False
        # the reserve is used only when a client has waited longer than reserve_pool_timeout
        oldest = next(iter(pool.waiting_clients), None)
        if oldest is None or now - oldest.wait_start < cfg.reserve_pool_timeout:
            return False
        reserve_taker = oldest
    db = pool.db
    max_db = db.setting("max_db_connections", cfg.max_db_connections)
    if max_db:
        pools = [p for p in registry.pools.values() if p.db is db]
        if sum(p.server_count() for p in pools) >= max_db and not _evict(pools, pool):
            return False
    max_user = pool.user.setting("max_user_connections", cfg.max_user_connections)
    if max_user:
        pools = [p for p in registry.pools.values() if p.user.account is pool.user.account]
        if sum(p.server_count() for p in pools) >= max_user and not _evict(pools, pool):
            return False
    if reserve_taker is not None:
        log.info(f"{reserve_taker.prefix()}taking connection from reserve_pool")
    return True


def usable_servers(pool) -> int:
    """Logged-in servers of the pool that an ordinary client can have now or once released (not the login
    ones, nor the dedicated servers of replication clients). Counted only when a login failed."""
    return sum(1 for s in pool.all_servers() if s.state != SV_LOGIN and s.replication is None)


def fast_fail(client) -> bool:
    """A client that needs a server of a pool whose last login was refused, with no server left: closed at once
    with the cached error (and, once server_login_retry has passed, a new login is tried for the next ones).
    True when the client was closed."""
    pool = client.pool
    if pool.last_login_error is None or usable_servers(pool):
        return False
    if time.monotonic() - pool.last_failed_time >= registry.cfg.server_login_retry:
        launch_new_connection(pool, force=True)
    client.close(f"server login has been failing, cached error: {pool.last_login_error} (server_login_retry)",
                 send_error=True)
    return True


def _evict(pools, wanting) -> bool:
    """Close the longest-idle server of another pool among `pools` so `wanting` can connect."""
    victim = None
    for p in pools:
        if p is wanting:
            continue
        for s in p.idle_servers:
            if victim is None or s.idle_since < victim.idle_since:
                victim = s
            break
    if victim is None:
        return False
    victim.close("evicted")
    return True


def launch_new_connection(pool, *, force: bool = False) -> bool:
    """Start one server connection for the pool if limits and server_login_retry allow it."""
    cfg = registry.cfg
    if pool.db.admin or registry.suspended or pool.db.paused or registry.paused:
        return False
    now = time.monotonic()
    if pool.last_failed_time and now - pool.last_failed_time < cfg.server_login_retry:
        return False                 # the last connect or login failed: not again before server_login_retry
    if pool.replication_seen and _serve_replication(pool, cfg, now):
        return True
    if pool.login_servers and not force:
        # one login at a time is enough until it finishes, unless more clients wait than logins run
        if len(pool.login_servers) >= len(pool.waiting_clients):
            return False
    if not can_launch(pool, cfg, now):
        return False
    host, port, path = server_address(pool)
    server = Server(pool, host or "", port, path, PoolSide)
    server.db_conf = pool.db.conf     # a RELOAD that changes the database makes this server stale
    pool.last_connect_time = now
    set_server_state(server, "login")
    server.start_connect()
    return True


def activate_client(client) -> None:
    """The client has a query to run and no server: link an idle one or queue the client."""
    pool = client.pool
    if registry.shutting_down and registry.main.shutdown_mode == "wait_for_servers":
        client.close("server shutting down", send_error=True)     # SHUTDOWN WAIT_FOR_SERVERS gives out no server
        return
    if pool.db.paused or registry.paused or registry.suspended:
        _queue(client)
        return
    if client.replication != "none":
        _queue(client)                          # for a server of its own (launch_new_connection)
        launch_new_connection(pool, force=True)
        return
    idle = pool.idle_servers
    if idle:
        server = next(iter(idle)) if registry.cfg.server_round_robin else next(reversed(idle))
        if _needs_check(server):
            # the server sat idle longer than server_check_delay: check it, the client waits its turn
            _queue(client)
            start_check(server)
            return
        link(client, server)
        return
    if pool.last_login_error is not None and fast_fail(client):
        return
    _queue(client)
    if pool.server_count() < pool.launch_cap(registry.cfg):   # else no launch can succeed (the janitor retries)
        launch_new_connection(pool)


def _serve_replication(pool, cfg, now: float) -> bool:
    """Replication connections are never pooled: the oldest replication client waiting without a server (for
    its first command, or for its login in a pool that has none yet) gets one logged in with replication, just
    for it. It counts against the pool's size; at a full pool an idle ordinary server is closed ("evicted") to
    make room, else the client stays queued. True when a server was launched or evicted."""
    launching = {s.replication_client for s in pool.login_servers if s.replication is not None}
    for client in pool.waiting_clients:
        if client.replication != "none" and client not in launching:
            break
    else:
        return False
    if not can_launch(pool, cfg, now):
        victim = next(iter(pool.idle_servers), None)
        if victim is None:
            return False
        victim.close("evicted")           # its exit serves the waiting clients again, this one first
        if client.state not in (CL_WAITING, CL_WAITING_LOGIN) or \
                any(s.replication_client is client for s in pool.login_servers):
            return True
        if not can_launch(pool, cfg, now):
            return True
    host, port, path = server_address(pool)
    server = Server(pool, host or "", port, path, PoolSide)
    server.db_conf = pool.db.conf
    server.replication = client.replication
    server.replication_client = client
    pool.last_connect_time = now
    set_server_state(server, "login")
    server.start_connect()
    return True


def _needs_check(server) -> bool:
    cfg = registry.cfg
    delay = cfg.server_check_delay
    return delay is not None and delay >= 0 and time.monotonic() - server.idle_since >= delay


def start_check(server) -> None:
    """Run server_check_query (an empty query when unset) on an idle server before it is used again."""
    set_server_state(server, SV_USED)
    server.run_internal(registry.cfg.server_check_query or "", _check_done)


def _check_done(server, error) -> None:
    if error is not None:
        server.close(f"server check query failed: {error}")
        return
    server_available(server)


def _queue(client) -> None:
    if client.state != CL_WAITING:
        client.wait_start = time.monotonic()
        client.wait_notified = False
        set_client_state(client, CL_WAITING)


def link(client, server) -> None:
    """Link client and server, apply the client's tracked parameters, then let the client's data flow."""
    now = time.monotonic()
    pool = client.pool
    stats = pool.db.stats
    if client.state == CL_WAITING:
        stats.wait_time += int((now - client.wait_start) * 1e6)
        if metrics.recorder is not None:
            metrics.recorder.waited(pool.db, now - client.wait_start)
    stats.server_assignment_count += 1
    link_objects(client, server)        # (the client active too)
    server.request_time = now + registry.wall_offset
    pool.last_active = now
    # walsenders accept no SET; else the usual case: every value the client set is already what the server
    # has (remembered per server)
    if server.replication is not None or varcache.covered(client.vars, server):
        client.link_ready()
        return
    sql = varcache.set_statements(tracked_params(registry.cfg), client.vars, server.params)
    if sql:
        log.debug(f"{server.prefix()}varcache_apply: {sql}")
        server.setting_vars = True
        server.run_internal(sql, _vars_applied)
    else:
        client.link_ready()


def _vars_applied(server, error) -> None:
    server.setting_vars = False
    client = server.link
    if client is None:
        server_available(server)
        return
    if error is not None:
        log.warning(f"{server.prefix()}varcache_apply failed: {error}")
    else:
        client.vars = varcache.adopt_canonical(tracked_params(registry.cfg), client.vars, server.params)
    client.link_ready()


def cancel_landed(server) -> None:
    """The last cancel request for the server's backend has been delivered: if the server waited for it
    (being_canceled), it can now go to the next client."""
    if server.state == SV_BEING_CANCELED and not server.closed:
        server_available(server)


def mark_stale(server) -> None:
    """The configuration the server was made with changed: it goes now if idle, else when released."""
    server.close_needed = True
    if server.state == SV_IDLE:
        server.close(STALE)


def reconnect_pool(pool) -> None:
    """RECONNECT or a changed database entry: every server is replaced, and clients that log in from now on
    wait for the welcome of a new server login (a refused one is what they are told)."""
    pool.welcome_stale = True
    for server in pool.all_servers():
        mark_stale(server)


def server_login_done(server) -> None:
    pool = server.pool
    pool.last_login_error = None
    pool.last_failed_time = 0.0
    if pool.welcome_params is None or pool.welcome_stale:
        pool.welcome_params = dict(server.params)
        pool.welcome_stale = False
    if server.replication is not None:
        client = server.replication_client
        server.replication_client = None
        if client is not None and client.state == CL_WAITING_LOGIN:
            client.finish_login(server)
        elif client is not None and client.state == CL_WAITING:
            link(client, server)
        else:
            server.close("replication client was closed")
    for client in list(pool.waiting_clients):
        if client.state == CL_WAITING_LOGIN and client.replication == "none":
            client.finish_login()
    if server.replication is not None:
        return
    conf = pool.db.conf
    if conf is not None and conf.connect_query:
        set_server_state(server, SV_TESTED)
        server.run_internal(conf.connect_query, _connect_query_done)
        return
    server_available(server)


def _connect_query_done(server, error) -> None:
    if error is not None:
        log.warning(f"{server.prefix()}connect_query failed: {error}")
    server_available(server)


def client_unlinked_by_close(client, server) -> None:
    """A client left while linked: keep the server if it is clean, else close it."""
    unlink(client, server)
    if server.closed:
        return
    if server.replication is not None:
        server.close("replication client was closed")
        return
    # query_start: the client sent work (say an extended-protocol batch without its Sync) that no ReadyForQuery
    # has closed yet; PostgreSQL may be skipping to a Sync after an error, so the next client would hang
    if server.ready and server.expect_rfq == 0 and not server.query_start and server.internal_done is None \
            and not server.tail and server.skip == 0 and not server.psq:
        server.psq = None
        reset_server(server, client.pool_mode)
    else:
        server.close("client disconnect while server was not ready")


def server_closed(server, client, reason, login_error, sqlstate, connect_failed, notify) -> None:
    """After a server's exit: tell whom it concerns, remember a failed connect or login, serve the queue."""
    pool = server.pool
    waiter = server.replication_client
    if waiter is not None:
        # a replication server that never reached its client: a refused login ends the client ("login failed",
        # the reason is in the log); after a connect failure it stays queued for the next try
        server.replication_client = None
        if not connect_failed:
            waiter.close(login_error or reason, send_error=True)
    if login_error is not None:
        for lookup in list(pool.auth_waiters):       # auth_query lookups waiting for this pool's login
            lookup.fail(login_error, sqlstate)
    done = server.internal_done
    if server.internal_rows is not None and done is not None:
        server.internal_done = None
        lost = getattr(getattr(done, "__self__", None), "server_lost", None)
        if lost is not None:
            lost()                                    # the auth_query lookup that ran on it
    if client is not None and notify:
        client.close(reason, send_error=True)
    if connect_failed:
        pool.last_failed_time = time.monotonic()     # the janitor tries again after server_login_retry
        conf = pool.db.conf
        if conf is not None and conf.load_balance_hosts == "disable":
            pool.db.host_index += 1                  # a host list is tried in order: the next one
        return
    if login_error is not None:
        pool.last_failed_time = time.monotonic()
        if server.replication is not None:
            return                                   # the refusal concerns that replication client alone
        pool.last_login_error = login_error
        if not usable_servers(pool):
            # no server can come free for them: every client waiting in the pool is told why
            for c in list(pool.waiting_clients):
                c.close(login_error, send_error=True, sqlstate=sqlstate)
        return
    if pool.waiting_clients and not registry.shutting_down:
        launch_new_connection(pool)


def statement_mode_violation(server) -> None:
    server.close("transaction blocks not allowed in statement pooling mode")


class PoolSide:
    """What a server connection tells its pool: its password, its login, its exit. server.py does not import
    pooling (pooling creates the servers and hands them this)."""

    password = staticmethod(server_password)
    login_done = staticmethod(server_login_done)
    closed = staticmethod(server_closed)
