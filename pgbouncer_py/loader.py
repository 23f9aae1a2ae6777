"""Applying a configuration to the running objects, apart from the process lifecycle: at start, on RELOAD / SIGHUP
and on a console SET. The auth_file, users, databases (changed connection settings replace their servers) and TLS."""

import os

from pgbouncer_py import pooling, prepare
from pgbouncer_py.auth import login
from pgbouncer_py.config import ConfigError, load_config
from pgbouncer_py.config.userlist import load_auth_file
from pgbouncer_py.log import log
from pgbouncer_py.net import tls
from pgbouncer_py.objects import Database, User, registry

# database settings whose change makes existing server connections stale
# a change of one of these in a [databases] entry replaces its server connections (PgBouncer's list: a new
# password, application_name, client_encoding, ... apply to new connections only)
DIRTY_KEYS = ("dbname", "host", "port", "user", "connect_query", "auth_dbname", "auth_query", "load_balance_hosts")


class Loader:
    """The configuration in force and what applying it needs to remember (the auth_file seen last, TLS errors)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.startup_cfg = cfg          # settings that need a restart keep their start-up values
        self.auth_file_stat = None
        self.tls_error = None           # why the last TLS (re)configuration failed

    def apply(self, cfg) -> None:
        old = registry.cfg
        registry.cfg = cfg
        self.cfg = cfg
        log.configure(cfg)
        self._load_auth_file(cfg, force=old is None or old.auth_file != cfg.auth_file)
        login.load_auth_files(cfg, startup=old is None)
        self._apply_users(cfg)
        self._apply_databases(cfg)
        if old is not None:
            prepare.config_changed(old, cfg)
        self.tls_error = None
        try:
            if tls.configure(cfg) and old is not None:
                tls_recycle_servers()
        except tls.TlsConfigError as e:
            self.tls_error = str(e)
            log.error(str(e) if isinstance(e, tls.TlsSettingError) else f"TLS setup failed: {e}")

    def reload(self) -> bool:
        """Read the configuration file again and apply it; False (logged) when it cannot be loaded."""
        try:
            new = load_config(self.cfg.path, startup=self.startup_cfg)
        except (ConfigError, OSError) as e:
            for text in getattr(e, "messages", None) or [str(e)]:
                log.error(text)
            log.warning("config file loading failed")
            return False
        log.reopen()
        self.apply(new)
        if self.tls_error:
            log.error("TLS configuration could not be reloaded, keeping old configuration")
        return True

    def _load_auth_file(self, cfg, force: bool) -> None:
        if not cfg.auth_file:
            registry.auth_users = {}
            return
        try:
            st = os.stat(cfg.auth_file)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as e:
            log.warning(f"could not open auth_file {cfg.auth_file}: {e.strerror}")
            return
        if not force and key == self.auth_file_stat:
            return
        try:
            problems: list[str] = []
            registry.auth_users = load_auth_file(cfg.auth_file, problems)
            self.auth_file_stat = key
            for text in problems:
                log.error(f"{text} ({cfg.auth_file})")
        except (OSError, ConfigError) as e:
            log.warning(f"could not load auth_file {cfg.auth_file}: {e}")

    def _apply_users(self, cfg) -> None:
        names = set(registry.auth_users) | set(cfg.users)
        for name in names:
            u = registry.users.get(name)
            if u is None:
                u = registry.users[name] = User(name)
            new_secret = registry.auth_users.get(name)
            if new_secret != u.secret:
                u.scram_client_key = u.scram_server_key = None
            u.secret = new_secret
            u.conf = cfg.users.get(name)
        for name, u in list(registry.users.items()):
            if name not in names and not u.dynamic and u.client_count == 0 and \
                    not any(p.user.account is u for p in registry.pools.values()):
                del registry.users[name]
            elif name not in names and not u.dynamic:
                u.secret = None
                u.conf = None
        if registry.admin_db is None:
            registry.admin_db = Database("pgbouncer", None, admin=True)
            registry.admin_user = User("pgbouncer")

    @staticmethod
    def _forced_user(conf):
        """The global user named by a [databases] user= (its password= is that database's server login only:
        pooling.server_password; the auth_file secret clients are checked against stays as it is)."""
        if conf.user is None:
            return None
        u = registry.users.get(conf.user)
        if u is None:
            u = registry.users[conf.user] = User(conf.user, registry.auth_users.get(conf.user))
        return u

    def _apply_databases(self, cfg) -> None:
        for name, conf in cfg.databases.items():
            if name == "*":
                continue
            db = registry.databases.get(name)
            if db is None or db.auto:
                if db is None:
                    db = registry.databases[name] = Database(name, conf)
                else:
                    db.auto = False
                    db.conf = conf
            elif db.conf != conf:
                dirty = any(getattr(db.conf, k) != getattr(conf, k) for k in DIRTY_KEYS)
                db.conf = conf
                if dirty:
                    db.dirty = True
                    for pool in list(registry.pools.values()):
                        if pool.db is db:
                            pooling.reconnect_pool(pool)
            db.forced_user = self._forced_user(conf)
        for name, db in list(registry.databases.items()):
            if name not in cfg.databases and not db.auto:
                remove_database(db)
            elif db.auto:
                fallback = cfg.databases.get("*")
                if fallback is None:
                    remove_database(db)
                elif db.conf != fallback:
                    db.conf = fallback
                    db.dirty = True


def remove_database(db) -> None:
    """A database left the configuration: its clients are told, its servers closed, its pools forgotten."""
    for pool in list(registry.pools.values()):
        if pool.db is db:
            for c in pool.all_clients():
                c.close("database removed", send_error=True)
            for s in pool.all_servers():
                s.close("database removed")
            del registry.pools[(db.name, pool.user.name)]
    registry.databases.pop(db.name, None)


def tls_recycle_servers() -> None:
    """The server-side TLS configuration changed: TCP server connections made with the old one are closed
    when they are next released (unix-socket servers never use TLS and stay)."""
    for pool in registry.pools.values():
        for s in pool.all_servers():
            if s.unix_path is None and s.tls_generation != tls.state.generation:
                pooling.mark_stale(s)
