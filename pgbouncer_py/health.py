"""The operator endpoints (pgbouncer-py extension, on when http_listen_addr is set): /health, /ready and /metrics on
one HTTP listener of the pooler's own loop (metrics.py records, exporter.py answers /metrics); started and stopped
by main.py."""

import json
import os

from pgbouncer_py import exporter, metrics
from pgbouncer_py.log import log
from pgbouncer_py.net import http, listen
from pgbouncer_py.objects import registry

JSON = "application/json"
RETRY = 5.0        # seconds between attempts to bind the HTTP port while it is taken


def _json(status: int, body: dict) -> tuple[int, str, bytes]:
    return status, JSON, json.dumps(body, separators=(",", ":")).encode() + b"\n"


def health() -> tuple[int, str, bytes]:
    """200 while the process serves its clients (a graceful shutdown still drains them), 503 once it is leaving."""
    main = registry.main
    mode = getattr(main, "shutdown_mode", None)
    if main is None or mode == "immediate" or getattr(main, "taken_over", False) or \
            (main.done is not None and main.done.done()):
        return _json(503, {"status": "stopping", "pid": os.getpid()})
    return _json(200, {"status": "draining" if mode else "ok", "pid": os.getpid()})


def failing_databases() -> list[str]:
    """Databases whose most recent server connect or login failed and that have no live server connection."""
    failing = set()
    ok = set()
    for pool in list(registry.pools.values()):
        db = pool.db
        if db.admin:
            continue
        if pool.idle_servers or pool.active_servers or pool.used_servers or pool.tested_servers:
            ok.add(db.name)
        elif pool.last_failed_time:         # set by a failed connect or login, cleared by a successful login
            failing.add(db.name)
    return sorted(failing - ok)


def ready() -> tuple[int, str, bytes]:
    """200 when a load balancer may send new clients here: not shutting down, paused or suspended, and (with
    http_ready_check_servers) no database whose server logins fail."""
    main = registry.main
    if registry.shutting_down or getattr(main, "shutdown_mode", None) or getattr(main, "taken_over", False):
        return _json(503, {"ready": False, "reason": "shutting down"})
    if registry.suspended:
        return _json(503, {"ready": False, "reason": "suspended"})
    if registry.paused:
        return _json(503, {"ready": False, "reason": "paused"})
    cfg = registry.cfg
    if cfg is not None and cfg.http_ready_check_servers:
        failing = failing_databases()
        if failing:
            return _json(503, {"ready": False, "reason": "server login failing", "databases": failing})
    return _json(200, {"ready": True})


class Endpoints:
    """The HTTP listener of one process: binds at start (retrying while the port is taken) and closes at exit."""

    def __init__(self, cfg):
        self.addr = cfg.http_listen_addr
        self.port = cfg.http_listen_port
        self.reuseport = bool(cfg.so_reuseport)
        self.backlog = cfg.listen_backlog
        self.server = http.HttpServer({"/metrics": exporter.exposition, "/health": health, "/ready": ready})
        self.retry_handle = None
        self.last_error = None
        self.closed = False

    async def start(self) -> None:
        problem = metrics.enable()
        if problem:
            log.warning(f"http_listen_addr is set but {problem}: /metrics answers 503, /health and /ready work")
        await self._bind()

    async def _bind(self) -> None:
        self.retry_handle = None
        if self.closed:
            return
        try:
            await self.server.start(self.addr, self.port, self.reuseport, self.backlog)
        except (OSError, listen.ListenError) as e:
            text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if text != self.last_error:
                log.error(f"HTTP listener (http_listen_addr): {text}; retrying every {RETRY:g}s")
                self.last_error = text
            loop = registry.loop
            self.retry_handle = loop.call_later(RETRY, lambda: loop.create_task(self._bind()))
            return
        for desc in self.server.descs:
            log.info(f"listening on http://{desc} (/metrics, /health, /ready)")

    def close(self) -> None:
        self.closed = True
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        self.server.close()
        metrics.disable()
