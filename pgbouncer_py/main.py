"""Process lifecycle: event loop, listeners, pidfile, signals, reload and the shutdown modes."""

import asyncio
import os
import resource
import signal
import ssl
import sys
import time

from pgbouncer_py import VERSION_STRING, pooling, prepare
from pgbouncer_py.auth import login
from pgbouncer_py.client import Client
from pgbouncer_py.config import ConfigError, load_config
from pgbouncer_py.config.userlist import load_auth_file
from pgbouncer_py.janitor import Janitor
from pgbouncer_py.log import log
from pgbouncer_py.net import listen, tls
from pgbouncer_py.objects import Database, User, registry

# database settings whose change makes existing server connections stale
# a change of one of these in a [databases] entry replaces its server connections (PgBouncer's list: a new
# password, application_name, client_encoding, ... apply to new connections only)
_DIRTY_KEYS = ("dbname", "host", "port", "user", "connect_query", "auth_dbname", "auth_query", "load_balance_hosts")


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
        return f"uvloop {uvloop.__version__}"
    except ImportError:
        return "asyncio"


def scan_name() -> str:
    from pgbouncer_py.proto import scan
    return "compiled" if scan.COMPILED else "python"


def new_event_loop():
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def _warn_without_tcp_migrate_req() -> None:
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            if f.read().strip() != "0":
                return
    except OSError:
        return
    log.warning("so_reuseport: net.ipv4.tcp_migrate_req is 0, connections still being accepted when this process "
                "stops may be reset; set it to 1 for rolling restarts that lose nothing")


def preload_modules() -> None:
    """Import every module of the package now: a lazy import later would need a file descriptor and fail
    exactly when they have run out (max open files), turning a refused connection into an internal error."""
    import importlib
    import pkgutil

    import pgbouncer_py
    for mod in pkgutil.walk_packages(pgbouncer_py.__path__, "pgbouncer_py."):
        if mod.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(mod.name)
        except ImportError as e:          # optional dependency missing (e.g. PAM): used only when configured
            log.debug(f"module {mod.name} not loaded: {e}")


class Pooler:
    """The running process: owns the listeners and applies config changes."""

    def __init__(self, cfg, *, inherited_fds: list[int] | None = None, listeners: list | None = None,
                 takeover=None):
        self.cfg = cfg
        self.startup_cfg = cfg
        self.listeners: list[listen.Listener] = listeners or []
        self.inherited_fds = inherited_fds or []
        self.takeover = takeover        # takeover.Inherited after an online restart (-R)
        self.taken_over = False         # this (old) process handed its sockets to a new one
        self._last_status = None
        self.janitor = Janitor()
        self.done: asyncio.Future | None = None
        self.shutdown_mode = None
        self.shutdown_at = 0.0          # monotonic time of SHUTDOWN WAIT_FOR_* (or its signal)
        self.wait_for_clients = False
        self.auth_file_stat = None
        self.exit_code = 0
        self.tls_error = None           # why the last TLS (re)configuration failed
        self.endpoints = None           # health.Endpoints when http_listen_addr is set (pgbouncer-py extension)

    # --- configuration into objects ---
    def apply_config(self, cfg) -> None:
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

    def _forced_user(self, conf):
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
                dirty = any(getattr(db.conf, k) != getattr(conf, k) for k in _DIRTY_KEYS)
                db.conf = conf
                if dirty:
                    db.dirty = True
                    for pool in list(registry.pools.values()):
                        if pool.db is db:
                            pooling.reconnect_pool(pool)
            db.forced_user = self._forced_user(conf)
        for name, db in list(registry.databases.items()):
            if name not in cfg.databases and not db.auto:
                self.remove_database(db)
            elif db.auto:
                fallback = cfg.databases.get("*")
                if fallback is None:
                    self.remove_database(db)
                elif db.conf != fallback:
                    db.conf = fallback
                    db.dirty = True

    def remove_database(self, db) -> None:
        for pool in list(registry.pools.values()):
            if pool.db is db:
                for c in pool.all_clients():
                    c.close("database removed", send_error=True)
                for s in pool.all_servers():
                    s.close("database removed")
                del registry.pools[(db.name, pool.user.name)]
        registry.databases.pop(db.name, None)

    # --- reload ---
    def reload(self) -> bool:
        try:
            new = load_config(self.cfg.path, startup=self.startup_cfg)
        except (ConfigError, OSError) as e:
            for text in getattr(e, "messages", None) or [str(e)]:
                log.error(text)
            log.warning("config file loading failed")
            return False
        log.reopen()
        self.apply_config(new)
        if self.tls_error:
            log.error("TLS configuration could not be reloaded, keeping old configuration")
        return True

    # --- lifecycle ---
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        registry.loop = loop
        registry.main = self
        self.done = loop.create_future()
        preload_modules()
        self.apply_config(self.cfg)
        auth_problem = login.config_error(self.cfg)
        if auth_problem:
            log.error(auth_problem)
            log.fatal("TLS setup failed")
            return 1
        if self.tls_error:
            log.fatal("TLS setup failed")       # the reason is on the ERROR line before, as PgBouncer logs it
            return 1
        self._log_fd_limit()
        if self.cfg.so_reuseport:
            _warn_without_tcp_migrate_req()
        if not self.listeners:
            try:
                self.listeners = open_listeners(self.cfg, self.inherited_fds)
            except listen.ListenError as e:
                log.fatal(str(e))
                return 1
        for lst in self.listeners:
            # asyncio and uvloop listen() again on a served socket, with backlog=100 unless told: keep listen_backlog
            lst.server = await loop.create_server(lambda lst=lst: Client(lst), sock=lst.sock,
                                                  backlog=self.cfg.listen_backlog)
            log.info(f"listening on {lst.desc}")
        if self.takeover is not None:
            from pgbouncer_py import takeover
            await takeover.adopt(self.takeover, self.listeners)
            self.takeover = None
        if self.cfg.http_listen_addr:
            from pgbouncer_py import health
            self.endpoints = health.Endpoints(self.cfg)
            await self.endpoints.start()
        self._install_signals(loop)
        self.janitor.start()
        self._sd_notify("READY=1")
        log.info(f"process up: {VERSION_STRING}, {loop_name()}, scanner: {scan_name()}, "
                 f"tls: {ssl.OPENSSL_VERSION}")
        await self.done
        self._sd_notify("STOPPING=1")
        if self.taken_over:
            self._exit_handed_over()
        self.janitor.stop()
        await self._close_everything()
        return self.exit_code

    def _log_fd_limit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        cfg = self.cfg
        n_db = max(len(cfg.databases), 1)
        expected = cfg.max_client_conn + cfg.default_pool_size * n_db
        log.info(f"kernel file descriptor limit: {soft} (hard: {hard}); max_client_conn: {cfg.max_client_conn}, "
                 f"max expected fd use: {expected}")
        if expected > soft and hard > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(expected + 100, soft)), hard))
            except (ValueError, OSError):
                pass

    def _install_signals(self, loop) -> None:
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGQUIT, self._on_sigquit)
        loop.add_signal_handler(signal.SIGUSR1, self._on_sigusr1)
        loop.add_signal_handler(signal.SIGUSR2, self._on_sigusr2)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _on_sighup(self) -> None:
        log.reopen()        # first, so that logrotate's new file gets this line
        log.info("got SIGHUP, re-reading config")
        self._sd_notify("RELOADING=1")
        self.reload()
        self._sd_notify("READY=1")

    def _on_sigint(self) -> None:
        if self.shutdown_mode is not None:
            log.info("got SIGINT while shutting down, fast exit")
            self.shutdown("immediate")
            return
        log.info("got SIGINT, shutting down, waiting for servers")
        self.shutdown("wait_for_servers")

    def _on_sigterm(self) -> None:
        if self.shutdown_mode is not None:
            log.info("got SIGTERM while shutting down, fast exit")
            self.shutdown("immediate")
            return
        log.info("got SIGTERM, shutting down, waiting for clients")
        self.shutdown("wait_for_clients")

    def _on_sigquit(self) -> None:
        log.info("got SIGQUIT, fast exit")
        self.shutdown("immediate")

    def _on_sigusr1(self) -> None:
        log.info("got SIGUSR1, pausing all activity")
        from pgbouncer_py.admin import control
        if hasattr(control, "pause_all"):
            control.pause_all()
        else:
            registry.paused = True

    def _on_sigusr2(self) -> None:
        if self.shutdown_mode is not None:
            log.info("got SIGUSR2 while shutting down, ignoring")
            return
        log.info("got SIGUSR2, continuing")
        from pgbouncer_py.admin import control
        if hasattr(control, "resume_all"):
            control.resume_all()
        else:
            registry.paused = False
            registry.suspended = False

    def shutdown(self, mode: str) -> None:
        """mode: immediate | wait_for_servers | wait_for_clients."""
        if mode == "immediate":
            self.shutdown_mode = mode
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
            return
        self.shutdown_mode = mode
        self.shutdown_at = time.monotonic()
        registry.shutting_down = True
        self.wait_for_clients = mode == "wait_for_clients"
        for lst in self.listeners:
            # the unix socket stays open, for console logins only (client._find_database refuses the others)
            if not lst.unix:
                if lst.server is not None:
                    if self.cfg.so_reuseport and not lst.unix:
                        # connections already queued on our socket would be reset by close(): take them
                        self._drain_accept_queue(lst)
                    lst.server.close()
                    lst.server = None
        if mode == "wait_for_servers":
            registry.paused = True
            for pool in registry.pools.values():
                for c in list(pool.waiting_clients):
                    c.close("server shutting down", send_error=True)
        self.janitor_tick(0)

    def janitor_tick(self, now: float) -> None:
        """Progress of a waiting shutdown; systemd STATUS= with each new stats period."""
        avg = getattr(registry, "total_avg", None)
        if avg is not None and avg is not self._last_status:
            self._last_status = avg
            if os.environ.get("NOTIFY_SOCKET"):
                from pgbouncer_py.stats import stats_log_line
                self._sd_notify("STATUS=" + stats_log_line(avg).removeprefix("stats: "))
        mode = self.shutdown_mode
        if mode is None or self.done is None or self.done.done():
            return
        if mode == "wait_for_servers":
            for pool in registry.pools.values():
                for s in list(pool.idle_servers):
                    s.close("pooler is shutting down")
            busy = any(p.active_servers or p.tested_servers or p.login_servers for p in registry.pools.values())
            if not busy:
                log.info("server connections dropped, exiting")
                self.done.set_result(None)
        elif mode == "wait_for_clients":
            clients = sum(p.client_count() for p in registry.pools.values() if not p.db.admin)
            clients += sum(1 for c in registry.login_clients if not c.admin)
            if clients == 0:
                log.info("client connections dropped, exiting")
                self.done.set_result(None)

    def _drain_accept_queue(self, lst) -> None:
        loop = registry.loop
        while True:
            try:
                conn, _addr = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning(f"accept() while closing {lst.desc}: {e.strerror}")
                return
            conn.setblocking(False)
            loop.create_task(loop.connect_accepted_socket(lambda lst=lst: Client(lst), sock=conn))

    # --- online restart, old process side ---
    def freeze_for_takeover(self) -> None:
        """Stop accepting and stop the janitor; listening sockets stay open (dups) for SHOW FDS."""
        self.janitor.stop()
        self._close_endpoints()     # the new process binds the HTTP port itself
        for lst in self.listeners:
            if lst.server is not None and lst.handover is None:
                lst.handover = lst.sock.dup()
                lst.server.close()
                lst.server = None

    def handed_over(self) -> None:
        self.taken_over = True

    def _exit_handed_over(self) -> None:
        """The new process owns every socket now: leave without touching them (no Terminate, no unlink)."""
        from pgbouncer_py.cli import remove_pidfile
        log.info("process handed over to new process, exiting")
        remove_pidfile(self.cfg.pidfile)
        log.close_logfile()
        sys.stderr.flush()
        os._exit(0)

    def _close_endpoints(self) -> None:
        if self.endpoints is not None:
            self.endpoints.close()
            self.endpoints = None

    async def _close_everything(self) -> None:
        self._close_endpoints()
        for lst in self.listeners:
            if lst.server is not None:
                lst.server.close()
            if lst.unix and lst.path and not lst.path.startswith("\0"):
                listen.unlink_if_ours(lst)
        for pool in list(registry.pools.values()):
            for c in pool.all_clients():
                c.close("pooler is shutting down", quiet=True)
            for s in pool.all_servers():
                s.close("pooler is shutting down", notify_client=False)
        for c in list(registry.login_clients):
            c.close("pooler is shutting down", quiet=True)
        await asyncio.sleep(0)

    @staticmethod
    def _sd_notify(state: str) -> None:
        path = os.environ.get("NOTIFY_SOCKET")
        if not path:
            return
        import socket
        if path.startswith("@"):
            path = "\0" + path[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(path)
                s.sendall(state.encode())
        except OSError:
            pass


def tls_recycle_servers() -> None:
    """The server-side TLS configuration changed: TCP server connections made with the old one are closed
    when they are next released (unix-socket servers never use TLS and stay)."""
    for pool in registry.pools.values():
        for s in pool.all_servers():
            if s.unix_path is None and s.tls_generation != tls.state.generation:
                pooling.mark_stale(s)


def open_listeners(cfg, inherited_fds: list[int] | None = None) -> list:
    """Bind the listeners (before switching user), or adopt systemd's LISTEN_FDS sockets; ListenError on failure."""
    fds = list(inherited_fds or [])
    listen_fds = int(os.environ.get("LISTEN_FDS", "0") or 0)
    if listen_fds and os.environ.get("LISTEN_PID") == str(os.getpid()):
        fds += list(range(3, 3 + listen_fds))
        for fd in range(3, 3 + listen_fds):
            log.info(f"socket passed from service manager (fd {fd})")
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if fds:
        return [listen.adopt_socket(fd, cfg) for fd in fds]
    listeners = listen.tcp_listeners(cfg)
    try:
        u = listen.unix_listener(cfg)
    except listen.ListenError:
        for lst in listeners:
            lst.sock.close()
        raise
    if u is not None:
        listeners.append(u)
    return listeners


def run(cfg, *, inherited_fds=None, listeners=None, takeover=None) -> int:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    pooler = Pooler(cfg, inherited_fds=inherited_fds, listeners=listeners, takeover=takeover)
    try:
        return loop.run_until_complete(pooler.run())
    finally:
        try:
            loop.close()
        except Exception:
            pass
        sys.stderr.flush()
