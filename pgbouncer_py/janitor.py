"""Periodic maintenance with one cached `now`: timeouts, pool sizing, stats period."""

import time

from pgbouncer_py import pooling
from pgbouncer_py.log import log
from pgbouncer_py.objects import CL_WAITING, CL_WAITING_LOGIN, registry
from pgbouncer_py.stats import Stats, averages, stats_log_line

INTERVAL = 1.0 / 3


class Janitor:
    def __init__(self):
        self.handle = None
        self.last_stats = time.monotonic()
        self.old_totals = Stats()

    def start(self) -> None:
        self.handle = registry.loop.call_later(INTERVAL, self.run)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def run(self) -> None:
        self.handle = registry.loop.call_later(INTERVAL, self.run)
        now = time.monotonic()
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
        for pool in list(registry.pools.values()):
            self.visit_pool(pool, now, cfg)
        if now - self.last_stats >= cfg.stats_period:
            self.stats_period(now - self.last_stats)
            self.last_stats = now
        if registry.main is not None:
            registry.main.janitor_tick(now)

    def visit_pool(self, pool, now: float, cfg) -> None:
        db = pool.db
        if db.admin:
            return
        # waiting clients: timeouts, and new servers when logins failed or the reserve opens
        qwt = pool.user.setting("query_wait_timeout", None)
        if qwt is None:
            qwt = db.setting("query_wait_timeout", cfg.query_wait_timeout)
        for c in list(pool.waiting_clients):
            if c.state == CL_WAITING_LOGIN:
                if pool.last_login_error is None and cfg.client_login_timeout and \
                        now - c.created > cfg.client_login_timeout:
                    c.close("client_login_timeout (server down)", send_error=True)
                elif qwt and now - c.wait_start > qwt:
                    c.close("query_wait_timeout", send_error=True)
            elif c.state == CL_WAITING and qwt and now - c.wait_start > qwt:
                c.close("query_wait_timeout", send_error=True)
        if pool.waiting_clients and not db.paused and not registry.paused:
            pooling.launch_new_connection(pool)
        # idle servers: idle timeout and lifetime, keeping min_pool_size
        min_size = pool.min_pool_size(cfg)
        lifetime = db.setting("server_lifetime", cfg.server_lifetime)
        for s in list(pool.idle_servers):
            if pool.server_count() <= min_size and not s.close_needed and not db.dirty:
                break
            if s.close_needed or db.dirty:
                s.close("database configuration changed" if db.dirty else "close_needed")
            elif cfg.server_idle_timeout and now - s.idle_since > cfg.server_idle_timeout:
                s.close("server idle timeout")
            elif lifetime and now - s.created > lifetime:
                s.close("server lifetime over")
        if min_size and pool.server_count() < min_size and pool.welcome_params is not None \
                and not db.paused and not registry.paused:
            pooling.launch_new_connection(pool, force=True)

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
