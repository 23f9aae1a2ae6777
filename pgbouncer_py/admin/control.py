"""Console commands that change the process (PAUSE, RESUME, SUSPEND, KILL, SET, RELOAD, SHUTDOWN, ...) and the
progress of the ones that answer later (janitor_tick, through hooks.admin_tick); SIGUSR1/SIGUSR2 call
pause_all()/resume_all() here too."""

import time

from pgbouncer_py import pooling
from pgbouncer_py.admin import show
from pgbouncer_py.admin.parse import AdminError
from pgbouncer_py.client import Client, _send_cancel
from pgbouncer_py.config import ConfigError
from pgbouncer_py.log import log
from pgbouncer_py.objects import CL_WAITING, registry
from pgbouncer_py.proto import build

FAKE_SET = ("client_encoding", "datestyle", "timezone", "standard_conforming_strings",
            "default_transaction_isolation")


class _State:
    """Consoles waiting for an answer, and what SUSPEND stopped reading."""

    def __init__(self):
        self.waiters: list[tuple] = []     # (console, kind, db or None)
        self.suspender = None              # the console that issued SUSPEND
        self.suspend_start = 0.0
        self.held_transports: list = []    # transports SUSPEND paused
        self.timed_pauses: list[TimedPause] = []   # PAUSE ... TIMEOUT n still waiting for their servers


class TimedPause:
    """A PAUSE [db] TIMEOUT n [FORCE] (pgbouncer-py extension) whose servers are not all released yet; its bound
    holds even if the console that issued it leaves."""

    __slots__ = ("console", "db", "deadline", "seconds", "force")

    def __init__(self, console, db, deadline: float, seconds: float, force: bool):
        self.console = console
        self.db = db
        self.deadline = deadline
        self.seconds = seconds
        self.force = force


state = _State()


def _done(tag: str) -> bytes:
    return build.command_complete(tag)


def _issued(word: str, arg: str | None) -> None:
    log.info(f"{word} '{arg}' command issued" if arg is not None else f"{word} command issued")


def _find_db(name: str):
    if registry.admin_db is not None and name == registry.admin_db.name:
        return registry.admin_db
    db = registry.databases.get(name)
    if db is None:
        raise AdminError(f"no such database: {name}")
    return db


def _pools(db=None):
    """Pools of one database, or of every database but the console."""
    return [p for p in list(registry.pools.values()) if not p.db.admin and (db is None or p.db is db)]


# --- PAUSE / RESUME / SUSPEND ---
def _pause_progress(db=None) -> bool:
    """Close servers a pause does not need; True once no server of the scope is busy any more."""
    busy = False
    for pool in _pools(db):
        for lst in (pool.idle_servers, pool.used_servers, pool.login_servers):
            for s in list(lst):
                s.close("pause mode")
        if pool.active_servers or pool.tested_servers or pool.active_cancel_servers or pool.being_canceled_servers:
            busy = True
    return not busy


def _start_pause(arg):
    """Enter pause mode for one database or all; the database (None for all)."""
    if registry.suspended or registry.paused:
        raise AdminError("already suspended/paused")
    db = None
    if arg is None:
        registry.paused = True
    else:
        db = _find_db(arg)
        if db.admin:
            raise AdminError(f"cannot pause admin db: {arg}")
        db.paused = True
    return db


def cmd_pause(console, arg):
    _issued("PAUSE", arg)
    db = _start_pause(arg)
    if _pause_progress(db):
        return _done("PAUSE")
    state.waiters.append((console, "pause", db))
    return "defer"


def cmd_pause_timeout(console, bounded):
    """PAUSE [db] TIMEOUT n [FORCE]: like PAUSE, but after n seconds either give up (ERROR, and the pause is
    undone) or, with FORCE, cancel and close what still runs and complete the PAUSE."""
    arg, seconds, force = bounded
    text = f"PAUSE{'' if arg is None else ' ' + arg} TIMEOUT {seconds:g}{' FORCE' if force else ''}"
    log.info(f"{text} command issued")
    if seconds <= 0:
        raise AdminError("PAUSE TIMEOUT needs a number of seconds above 0")
    db = _start_pause(arg)
    if _pause_progress(db):
        return _done("PAUSE")
    state.waiters.append((console, "pause", db))
    state.timed_pauses.append(TimedPause(console, db, time.monotonic() + seconds, seconds, force))
    return "defer"


def _busy_servers(db) -> list:
    return [s for pool in _pools(db) for lst in (pool.active_servers, pool.tested_servers,
                                                 pool.active_cancel_servers, pool.being_canceled_servers)
            for s in list(lst)]


def _take_waiter(console, db) -> bool:
    """Remove the pause wait of `console` for scope `db`; whether it was still waiting."""
    for i, w in enumerate(state.waiters):
        if w[0] is console and w[1] == "pause" and w[2] is db:
            del state.waiters[i]
            return True
    return False


def _fail(console, message: str, sqlstate: str) -> None:
    """The late ERROR answer of a deferred command, logged like any console error."""
    log.error(message)
    if registry.cfg.log_pooler_errors:
        log.warning(f"{console.client.prefix()}pooler error: {message}")
    console.finish_deferred(build.error_response(message, sqlstate, "ERROR"))


def _undo_pause(db) -> None:
    if db is None:
        registry.paused = False
    else:
        db.paused = False
    kick_pools()


def _force_release(db) -> int:
    """Cancel the queries still running in scope `db` and close their server connections (and clients)."""
    busy = _busy_servers(db)
    for s in busy:
        if s.backend_key:
            registry.loop.create_task(_send_cancel(s))
        s.close("server connection closed by PAUSE TIMEOUT FORCE")     # its client is told and disconnected
    return len(busy)


def _timed_pause_tick(now: float) -> None:
    """Give up or force each PAUSE ... TIMEOUT whose time is up; forget the ones that completed or were resumed."""
    current, state.timed_pauses = state.timed_pauses, []
    keep = []
    for tp in current:
        paused = registry.paused if tp.db is None else tp.db.paused
        if not paused or _pause_progress(tp.db):
            continue            # resumed (RESUME answered it) or complete (janitor_tick answers PAUSE)
        if now < tp.deadline:
            keep.append(tp)
            continue
        waiting = _take_waiter(tp.console, tp.db)
        scope = "" if tp.db is None else f" {tp.db.name}"
        if tp.force:
            n = _force_release(tp.db)
            log.info(f"PAUSE{scope} TIMEOUT {tp.seconds:g} FORCE: closed {n} server connection(s) still in use")
            if waiting:
                tp.console.finish_deferred(build.notice_response(
                    f"PAUSE TIMEOUT FORCE closed {n} server connection(s) still in use") + _done("PAUSE"))
        else:
            n = len(_busy_servers(tp.db))
            _undo_pause(tp.db)
            message = (f"PAUSE{scope} timed out after {tp.seconds:g} s with {n} server connection(s) still in use; "
                       f"pause undone")
            if waiting:
                _fail(tp.console, message, "57014")
            else:
                log.warning(message)
    state.timed_pauses = keep + state.timed_pauses     # plus pauses that the answered consoles started meanwhile


def cmd_resume(console, arg):
    _issued("RESUME", arg)
    if arg is None:
        if registry.shutting_down:
            raise AdminError("pooler is shutting down")
        if registry.suspended:
            _resume_sockets()
        elif not registry.paused:
            raise AdminError("pooler is not paused/suspended")
        registry.paused = False
        registry.suspended = False
        _resumed_while_pausing(None)
    else:
        db = _find_db(arg)
        if not db.paused:
            raise AdminError(f"database {arg} is not paused")
        db.paused = False
        _resumed_while_pausing(db)
    kick_pools()
    return _done("RESUME")


def _resumed_while_pausing(db) -> None:
    """A RESUME came while a PAUSE of the same scope still waited for its servers: that PAUSE can never complete,
    so it is answered with an error now (PgBouncer leaves it waiting forever, its issue #715)."""
    current, state.waiters = state.waiters, []
    keep = []
    for w in current:
        if w[1] == "pause" and w[2] is db:
            _fail(w[0], "PAUSE canceled: RESUME was issued while it waited for server connections", "57014")
        else:
            keep.append(w)
    state.waiters = keep + state.waiters
    state.timed_pauses = [tp for tp in state.timed_pauses if tp.db is not db]


def cmd_suspend(console, arg):
    if arg is not None:
        raise AdminError(f"invalid command 'SUSPEND {arg}', use SHOW HELP;")
    if registry.suspended or registry.paused:
        raise AdminError("already suspended/paused")
    if any(db.paused for db in registry.databases.values()):
        raise AdminError("cannot suspend with paused databases")
    _issued("SUSPEND", None)
    registry.suspended = True
    state.suspender = console
    state.suspend_start = time.monotonic()       # janitor_tick -> _suspend_timeout enforces suspend_timeout
    _suspend_sockets()
    if _flushed():
        return _done("SUSPEND")
    state.waiters.append((console, "suspend", None))
    return "defer"


def _all_socket_objects():
    for pool in list(registry.pools.values()):
        if pool.db.admin:
            continue
        yield from pool.all_clients()
        yield from pool.all_servers()
    for c in list(registry.login_clients):
        if not c.admin:
            yield c


def hold_transport(transport) -> None:
    """Stop reading a socket while suspended (also used for connections accepted during SUSPEND)."""
    try:
        if transport is not None and not transport.is_closing() and transport.is_reading():
            transport.pause_reading()
            state.held_transports.append(transport)
    except (AttributeError, RuntimeError):
        pass


def _suspend_sockets() -> None:
    for obj in _all_socket_objects():
        hold_transport(obj.transport)


def _resume_sockets() -> None:
    held, state.held_transports = state.held_transports, []
    for t in held:
        try:
            if not t.is_closing():
                t.resume_reading()
        except (AttributeError, RuntimeError):
            pass
    state.suspender = None
    state.suspend_start = 0.0


def _pending_out(obj) -> int:
    t = obj.transport
    if t is None or t.is_closing():
        return 0
    try:
        return t.get_write_buffer_size()
    except (AttributeError, RuntimeError):
        return 0


def _flushed() -> bool:
    return all(_pending_out(o) == 0 for o in _all_socket_objects())


def pause_all() -> None:
    """SIGUSR1: like PAUSE without waiting for an answer."""
    if registry.suspended or registry.paused:
        log.info("already suspended/paused")
        return
    registry.paused = True
    _pause_progress(None)


def resume_all() -> None:
    """SIGUSR2: undo PAUSE or SUSPEND."""
    if registry.suspended:
        _resume_sockets()
    registry.paused = False
    registry.suspended = False
    _resumed_while_pausing(None)
    kick_pools()


def kick_pools() -> None:
    """After a resume: give waiting clients idle servers and start new connections for the rest."""
    if registry.paused or registry.suspended:
        return
    for pool in _pools():
        if pool.db.paused:
            continue
        while pool.idle_servers:
            client = next((c for c in pool.waiting_clients if c.state == CL_WAITING), None)
            if client is None:
                break
            pooling.link(client, next(reversed(pool.idle_servers)))
        if pool.waiting_clients:
            pooling.launch_new_connection(pool)


# --- databases ---
def _need_db(arg):
    if arg is None:
        raise AdminError("a database is required")
    return arg


def cmd_disable(console, arg):
    _need_db(arg)
    _issued("DISABLE", arg)
    db = _find_db(arg)
    if db.admin:
        raise AdminError(f"cannot disable admin db: {arg}")
    db.disabled = True
    return _done("DISABLE")


def cmd_enable(console, arg):
    _need_db(arg)
    _issued("ENABLE", arg)
    db = _find_db(arg)
    db.disabled = False
    return _done("ENABLE")


def cmd_reconnect(console, arg):
    _issued("RECONNECT", arg)
    db = _find_db(arg) if arg is not None else None
    for pool in _pools(db):
        pooling.reconnect_pool(pool)
    return _done("RECONNECT")


def cmd_kill(console, arg):
    if registry.suspended or registry.paused:
        raise AdminError("already suspended/paused")
    _issued("KILL", arg)
    db = None
    if arg is not None:
        db = _find_db(arg)
        if db.admin:
            raise AdminError(f"cannot kill admin db: {arg}")
        db.paused = True
    else:
        registry.paused = True
    for pool in _pools(db):
        for c in pool.all_clients():
            c.close("database removed", send_error=True)
        for s in pool.all_servers():
            s.close("database removed")
    return _done("KILL")


def cmd_kill_client(console, arg):
    try:
        wanted = int(arg or "", 10)
    except ValueError:
        raise AdminError("invalid client pointer supplied") from None
    _issued("KILL_CLIENT", arg)
    for c in show.all_clients():
        if getattr(c, "id", None) == wanted:
            c.close("admin forced disconnect", send_error=True)
            return _done("KILL_CLIENT")
    raise AdminError("client not found")


def cmd_wait_close(console, arg):
    _issued("WAIT_CLOSE", arg)
    db = _find_db(arg) if arg is not None else None
    if _close_done(db):
        return _done("WAIT_CLOSE")
    state.waiters.append((console, "wait_close", db))
    return "defer"


def _close_done(db) -> bool:
    return not any(s.close_needed for pool in _pools(db) for s in pool.all_servers())


# --- SET, RELOAD, SHUTDOWN ---
def set_setting(console, key: str, value: str):
    if key in FAKE_SET:
        return build.notice_response("SET ignored") + build.command_complete("SET")
    try:
        new = registry.cfg.with_setting(key, value)
    except ConfigError as e:
        for m in e.messages[:-1]:
            log.error(m)
        raise AdminError(e.messages[-1] if e.messages else "SET failed") from None
    loader = registry.main.loader
    loader.apply(new)
    if "tls" in key and loader.tls_error:
        return build.notice_response("TLS settings could not be applied, still using old configuration") + \
            build.command_complete(f"SET {key}={value}")
    return build.command_complete(f"SET {key}={value}")


def cmd_set(console, kv):
    return set_setting(console, kv[0], kv[1])


def reload(console, arg):
    if arg is not None:
        raise AdminError(f"invalid command 'RELOAD {arg}', use SHOW HELP;")
    _issued("RELOAD", None)
    if not registry.main.loader.reload():
        raise AdminError("RELOAD failed, see logs for additional details", "F0000")
    return _done("RELOAD")


def shutdown(console, mode: str):
    if mode:
        log.info(f"SHUTDOWN {mode.upper()} command issued")
        registry.main.shutdown(mode)
        return _done("SHUTDOWN")
    log.info("SHUTDOWN command issued")
    registry.main.shutdown("immediate")
    return "defer"       # the process exits; the console sees EOF


# --- progress of deferred answers, from the janitor ---
def janitor_tick(now: float) -> None:
    """Called by the janitor: pauses close released servers, deferred answers go out when due."""
    if registry.paused and not registry.suspended:
        _pause_progress(None)
    for db in list(registry.databases.values()):
        if db.paused:
            _pause_progress(db)
    if state.timed_pauses:
        _timed_pause_tick(now)
    if not state.waiters:
        return
    current, state.waiters = state.waiters, []
    keep = []
    for console, kind, db in current:
        if kind == "pause":
            paused = registry.paused if db is None else db.paused
            if not paused:      # undone without answering it (cannot happen today): never wait forever
                _fail(console, "PAUSE canceled: the pause was undone while it waited", "57014")
                continue
            done = _pause_progress(db)
            tag = "PAUSE"
        elif kind == "suspend":
            done = _flushed() or _suspend_timeout(now)
            tag = "SUSPEND"
        else:
            done = _close_done(db)
            tag = "WAIT_CLOSE"
        if done:
            console.finish_deferred(_done(tag))
        else:
            keep.append((console, kind, db))
    state.waiters = keep + state.waiters     # plus waits that the answered consoles started meanwhile


def _suspend_timeout(now: float) -> bool:
    """SUSPEND waits for every buffer to flush; after suspend_timeout the stragglers are dropped (clients are
    told why)."""
    limit = registry.cfg.suspend_timeout
    if not limit or now - state.suspend_start < limit:
        return False
    for obj in list(_all_socket_objects()):
        if _pending_out(obj):
            if isinstance(obj, Client):
                obj.close("suspend_timeout", send_error=True)
            else:
                obj.close("suspend_timeout")
    return True


def console_closed(console) -> None:
    """A console left: forget its waits; if it had suspended the pooler, resume."""
    state.waiters = [w for w in state.waiters if w[0] is not console]
    if state.suspender is console and registry.suspended:
        log.info("admin disappeared when suspended, doing RESUME")
        resume_all()
