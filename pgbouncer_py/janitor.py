"""Periodic maintenance with one cached `now`: every client and server timeout, pool sizing, idle pools and
auto-databases, suspend progress and the stats period. Nothing here runs per message."""

import time

from pgbouncer_py import hooks, pooling
from pgbouncer_py.log import log
from pgbouncer_py.objects import CL_WAITING, CL_WAITING_LOGIN, is_stale, registry
from pgbouncer_py.proto import build
from pgbouncer_py.stats import Stats, averages, stats_log_line

INTERVAL = 1.0 / 3
QUEUED_NOTICE = "No server connection available in postgres backend, client being queued"


def user_setting(client, pool, attr: str, cfg):
    """A per-user timeout: the client's login user, then the pool's user, then the global value."""
    user = client.user if client.user is not None else pool.user
    v = user.setting(attr, None)
    if v is None and user is not pool.user:
        v = pool.user.setting(attr, None)
    return getattr(cfg, attr) if v is None else v


class Janitor:
    def __init__(self):
        self.handle = None
        self.last_stats = time.monotonic()
        self.old_totals = Stats()
        self.user_overrides = False     # some [users] entry exists (per-user timeouts to look up)

    def start(self) -> None:
        self.handle = registry.loop.call_later(INTERVAL, self.run)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def run(self) -> None:
        self.handle = registry.loop.call_later(INTERVAL, self.run)
        now = time.monotonic()
        registry.wall_offset = time.time() - now      # follows wall-clock changes (request_time in SHOW)
        try:
            self.visit(now)
        except Exception as e:  # the janitor must never stop
            log.error(f"internal error in janitor: {e!r}")

    def visit(self, now: float) -> None:
        cfg = registry.cfg
        if cfg.client_login_timeout:
            for c in list(registry.login_clients):
                if now - c.created > cfg.client_login_timeout:
                    c.close("client_login_timeout", send_error=True)
        self.user_overrides = any(u.conf is not None for u in registry.users.values())
        self.forced_user_pools(cfg)
        for pool in list(registry.pools.values()):
            self.visit_pool(pool, now, cfg)
        self.idle_pools(now, cfg)
        self.auto_databases(now, cfg)
        if now - self.last_stats >= cfg.stats_period:
            self.stats_period(now - self.last_stats)
            self.last_stats = now
        hooks.admin_tick(now)
        if registry.main is not None:
            registry.main.janitor_tick(now)

    def forced_user_pools(self, cfg) -> None:
        """A database with a forced user and a min_pool_size has its pool without waiting for a client: it is
        created here and filled below (idle_servers), as PgBouncer does."""
        for db in list(registry.databases.values()):
            user = db.forced_user
            if user is not None and not db.admin and (db.name, user.name) not in registry.pools and \
                    db.setting("min_pool_size", cfg.min_pool_size) > 0:
                registry.get_pool(db, user)

    # --- one pool ---
    def visit_pool(self, pool, now: float, cfg) -> None:
        db = pool.db
        if db.admin:
            return
        if pool.client_count():
            pool.last_active = now
            db.inactive_since = now
        elif pool.server_count():
            pool.last_active = now
        self.waiting_clients(pool, now, cfg)
        self.active_clients(pool, now, cfg)
        self.login_servers(pool, now, cfg)
        self.active_servers(pool, now, cfg)
        self.idle_servers(pool, now, cfg)

    def waiting_clients(self, pool, now: float, cfg) -> None:
        db = pool.db
        notify = cfg.query_wait_notify
        for c in list(pool.waiting_clients):
            qwt = c.user.setting("query_wait_timeout", None) if c.user is not None else None
            if qwt is None:
                qwt = db.setting("query_wait_timeout", cfg.query_wait_timeout)
            age = now - c.wait_start
            if c.state == CL_WAITING_LOGIN:
                if pool.last_login_error is None and cfg.client_login_timeout and \
                        now - c.created > cfg.client_login_timeout:
                    c.close("client_login_timeout (server down)", send_error=True)
                elif qwt and age > qwt:
                    c.close("query_wait_timeout", send_error=True)
                continue
            if c.state != CL_WAITING:
                continue
            qt = user_setting(c, pool, "query_timeout", cfg)
            if qt and age > qt:
                c.close("query_timeout", send_error=True)
            elif qwt and age > qwt:
                c.close("query_wait_timeout", send_error=True)
            elif notify and age > notify and not c.wait_notified:
                c.wait_notified = True
                c.transport.write(build.notice_response(QUEUED_NOTICE))
        if pool.waiting_clients and not db.paused and not registry.paused:
            pooling.launch_new_connection(pool)

    _CLIENT_TIMEOUTS = ("client_idle_timeout", "query_timeout", "transaction_timeout", "idle_transaction_timeout")

    def active_clients(self, pool, now: float, cfg) -> None:
        pool_user = pool.user
        base = tuple(pool_user.setting(a, getattr(cfg, a)) for a in self._CLIENT_TIMEOUTS)
        if not any(base) and not self.user_overrides:
            return      # no client timeout configured anywhere: nothing to scan
        for c in list(pool.active_clients):
            u = c.user
            if u is None or u is pool_user or u.conf is None:
                cit, qt, tt, itt = base
            else:
                cit, qt, tt, itt = (user_setting(c, pool, a, cfg) for a in self._CLIENT_TIMEOUTS)
            s = c.link
            if s is None:
                if cit and not c.pending and now - c.idle_since > cit:
                    c.close("client_idle_timeout", send_error=True)
                continue
            if s.internal_done is not None:
                continue
            if qt and s.query_start and now - s.query_start > qt:
                s.close("query timeout")
            elif tt and s.xact_start and now - s.xact_start > tt:
                s.close("transaction timeout")
            elif itt and not s.ready and s.expect_rfq == 0 and s.last_rfq and now - s.last_rfq > itt:
                s.close("idle transaction timeout")

    def login_servers(self, pool, now: float, cfg) -> None:
        sct = cfg.server_connect_timeout
        if not sct:
            return
        for s in list(pool.login_servers):
            if now - s.created > sct:
                s.close("connect timeout", connect_failed=True)

    def active_servers(self, pool, now: float, cfg) -> None:
        if not cfg.server_fast_close:
            return
        for s in list(pool.active_servers):
            # session pooling: a server that must be replaced goes as soon as its transaction is over
            if s.ready and s.expect_rfq == 0 and s.internal_done is None and is_stale(s):
                s.close(pooling.STALE)

    def idle_servers(self, pool, now: float, cfg) -> None:
        db = pool.db
        min_size = pool.min_pool_size(cfg)
        lifetime = db.setting("server_lifetime", cfg.server_lifetime)
        too_many = pool.server_count() - (pool.pool_size(cfg) + pool.reserve_pool_size(cfg))
        for s in list(pool.idle_servers):
            if is_stale(s):
                s.close(pooling.STALE)
            elif too_many > 0:
                too_many -= 1
                s.close("too many servers in the pool")
            elif pool.server_count() <= min_size:
                continue
            elif cfg.server_idle_timeout and now - s.idle_since > cfg.server_idle_timeout:
                s.close("server idle timeout")
            elif lifetime and now - s.created > lifetime:
                s.close("server lifetime over")
        if min_size and pool.server_count() < min_size and (pool.welcome_params is not None or
                                                             pool.user is db.forced_user) \
                and not db.paused and not registry.paused:
            if pooling.launch_new_connection(pool, force=True):
                log.debug(f"launching new connection to satisfy min_pool_size for {db.name}/{pool.user.name}")

    # --- process-wide ---
    def idle_pools(self, now: float, cfg) -> None:
        pit = cfg.pool_idle_timeout
        if not pit:
            return
        for key, pool in list(registry.pools.items()):
            if pool.db.admin or pool.server_count() or pool.client_count():
                continue
            age = now - pool.last_active
            if age > pit:
                log.info(f"cleaning up idle pool for user {pool.user.name} on db {pool.db.name} because: "
                         f"pool idle timeout (age= {int(age)}s)")
                del registry.pools[key]

    def auto_databases(self, now: float, cfg) -> None:
        t = cfg.autodb_idle_timeout
        if not t:
            return
        for name, db in list(registry.databases.items()):
            if not db.auto or now - db.inactive_since <= t:
                continue
            if any(p.db is db and p.client_count() for p in registry.pools.values()):
                continue
            log.info(f"dropping database '{name}' as it does not exist anymore or inactive auto-database")
            for key, p in list(registry.pools.items()):
                if p.db is db:
                    for s in p.all_servers():
                        s.close("database removed")
                    del registry.pools[key]
            del registry.databases[name]

    def stats_period(self, period: float) -> None:
        cfg = registry.cfg
        totals = Stats()
        seen = set()
        for db in registry.databases.values():
            if id(db) in seen:
                continue
            seen.add(id(db))
            db.avg = averages(db.stats, db.old_stats, period)
            db.old_stats = db.stats.copy()
            totals.add(db.stats)
        if registry.admin_db is not None:
            adb = registry.admin_db
            adb.avg = averages(adb.stats, adb.old_stats, period)
            adb.old_stats = adb.stats.copy()
        avg = averages(totals, self.old_totals, period)
        self.old_totals = totals
        registry.total_avg = avg
        if cfg.log_stats:
            log.info(stats_log_line(avg))
