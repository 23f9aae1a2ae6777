"""The running pooler: listeners, serving until a shutdown mode completes, acting on the signals recorded by
signals.py, the shutdown progress in the janitor tick, and both sides of an online restart (-R). Applying a
configuration is loader.py's; the OS process around it (pidfile, user, systemd) is process.py's."""

import asyncio
import functools
import importlib
import os
import pkgutil
import signal
import ssl
import sys
import time

import pgbouncer_py
from pgbouncer_py import VERSION_STRING, health, hooks, process, takeover
from pgbouncer_py.admin import console, control
from pgbouncer_py.auth import login
from pgbouncer_py.client import Client
from pgbouncer_py.janitor import Janitor
from pgbouncer_py.loader import Loader
from pgbouncer_py.log import log
from pgbouncer_py.net import listen
from pgbouncer_py.objects import registry
from pgbouncer_py.signals import Signals
from pgbouncer_py.stats import stats_log_line


def preload_modules() -> None:
    """Import every module of the package now: a lazy import later would need a file descriptor and fail
    exactly when they have run out (max open files), turning a refused connection into an internal error."""
    for mod in pkgutil.walk_packages(pgbouncer_py.__path__, "pgbouncer_py."):
        if mod.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(mod.name)
        except ImportError as e:          # optional dependency missing (e.g. PAM): used only when configured
            log.debug(f"module {mod.name} not loaded: {e}")


def wire_hooks() -> None:
    """Connect the core's calls up (hooks.py) to the admin console, so that the core never imports admin/."""
    hooks.new_console = console.Console
    hooks.hold_transport = control.hold_transport
    hooks.admin_tick = control.janitor_tick


class Pooler:
    """The running process: owns the listeners, the janitor and the shutdown modes."""

    def __init__(self, cfg, *, inherited_fds: list[int] | None = None, listeners: list | None = None,
                 takeover=None):
        self.loader = Loader(cfg)
        self.listeners: list[listen.Listener] = listeners or []
        self.inherited_fds = inherited_fds or []
        self.takeover = takeover        # takeover.Inherited after an online restart (-R)
        self.taken_over = False         # this (old) process handed its sockets to a new one
        self._last_status = None
        self.janitor = Janitor()
        self.signals = Signals()
        self.done: asyncio.Future | None = None
        self.shutdown_mode = None
        self.shutdown_at = 0.0          # monotonic time of SHUTDOWN WAIT_FOR_* (or its signal)
        self.wait_for_clients = False
        self.exit_code = 0
        self.endpoints = None           # health.Endpoints when http_listen_addr is set (pgbouncer-py extension)
        self.draining: set = set()      # connections taken from a closing listener's queue, not yet clients

    @property
    def cfg(self):
        return self.loader.cfg

    # --- lifecycle ---
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        registry.loop = loop
        registry.main = self
        self.done = loop.create_future()
        preload_modules()
        wire_hooks()
        self.loader.apply(self.cfg)
        auth_problem = login.config_error(self.cfg)
        if auth_problem:
            log.error(auth_problem)
            log.fatal("TLS setup failed")
            return 1
        if self.loader.tls_error:
            log.fatal("TLS setup failed")       # the reason is on the ERROR line before, as PgBouncer logs it
            return 1
        process.log_fd_limit(self.cfg)
        if self.cfg.so_reuseport:
            process.warn_without_tcp_migrate_req()
        if not self.listeners:
            try:
                self.listeners = open_listeners(self.cfg, self.inherited_fds)
            except listen.ListenError as e:
                log.fatal(str(e))
                return 1
        for lst in self.listeners:
            # asyncio and uvloop listen() again on a served socket, with backlog=100 unless told: keep listen_backlog
            # (a partial, not a lambda: no Python frame around Client() per accepted connection)
            lst.server = await loop.create_server(functools.partial(Client, lst), sock=lst.sock,
                                                  backlog=self.cfg.listen_backlog)
            log.info(f"listening on {lst.desc}")
        if self.takeover is not None:
            await takeover.adopt(self.takeover, self.listeners)
            self.takeover = None
        if self.cfg.http_listen_addr:
            self.endpoints = health.Endpoints(self.cfg)
            await self.endpoints.start()
        self.signals.install(loop)
        acting = loop.create_task(self._act_on_signals())
        self.janitor.start()
        process.sd_notify("READY=1")
        log.info(f"process up: {VERSION_STRING}, {process.loop_name()}, scanner: {process.scan_name()}, "
                 f"tls: {ssl.OPENSSL_VERSION}")
        await self.done
        acting.cancel()
        process.sd_notify("STOPPING=1")
        if self.taken_over:
            self._exit_handed_over()
        self.janitor.stop()
        await self._close_everything()
        return self.exit_code

    # --- signals: signals.py records them, this loop acts ---
    async def _act_on_signals(self) -> None:
        while True:
            sig = await self.signals.next()
            self.on_signal(sig)

    def on_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            log.reopen()        # first, so that logrotate's new file gets this line
            log.info("got SIGHUP, re-reading config")
            process.sd_notify("RELOADING=1")
            self.loader.reload()
            process.sd_notify("READY=1")
        elif sig in (signal.SIGINT, signal.SIGTERM):
            name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
            if self.shutdown_mode is not None:
                log.info(f"got {name} while shutting down, fast exit")
                self.shutdown("immediate")
            elif sig == signal.SIGINT:
                log.info("got SIGINT, shutting down, waiting for servers")
                self.shutdown("wait_for_servers")
            else:
                log.info("got SIGTERM, shutting down, waiting for clients")
                self.shutdown("wait_for_clients")
        elif sig == signal.SIGQUIT:
            log.info("got SIGQUIT, fast exit")
            self.shutdown("immediate")
        elif sig == signal.SIGUSR1:
            log.info("got SIGUSR1, pausing all activity")
            control.pause_all()
        elif sig == signal.SIGUSR2:
            if self.shutdown_mode is not None:
                log.info("got SIGUSR2 while shutting down, ignoring")
                return
            log.info("got SIGUSR2, continuing")
            control.resume_all()

    # --- shutdown ---
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
                process.sd_notify("STATUS=" + stats_log_line(avg).removeprefix("stats: "))
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
            # a connection drained from the accept queue becomes a client a loop turn later: not gone yet
            clients += len(self.draining)
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
            task = loop.create_task(loop.connect_accepted_socket(lambda lst=lst: Client(lst), sock=conn))
            self.draining.add(task)
            task.add_done_callback(self.draining.discard)

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
        log.info("process handed over to new process, exiting")
        process.remove_pidfile(self.cfg.pidfile)
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
    loop = process.new_event_loop()
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
