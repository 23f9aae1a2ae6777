"""auth_user + auth_query: fetch the secret of a user missing from auth_file with a query on a pooled server
connection of the (auth_dbname or the client's database, auth_user) pool; extended protocol, with a timeout."""

from __future__ import annotations

import struct
import time

from pgbouncer_py import pooling
from pgbouncer_py.log import log
from pgbouncer_py.objects import (
    SV_ACTIVE,
    Database,
    DbUser,
    User,
    registry,
    server_available,
    set_server_state,
)
from pgbouncer_py.proto import build

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
CONFIG_ERROR = "bouncer config error"


def settings_for(db, cfg) -> tuple[str | None, str, str | None]:
    """(auth_user, auth_query, auth_dbname) for a database: its own entry first, then [pgbouncer]."""
    conf = db.conf
    user = (conf.auth_user if conf is not None else None) or cfg.auth_user or None
    query = (conf.auth_query if conf is not None else None) or cfg.auth_query
    dbname = (conf.auth_dbname if conf is not None else None) or cfg.auth_dbname or None
    return user, query, dbname


def lookup_messages(query: str, username: str) -> bytes:
    """Parse/Bind/Execute/Sync for `query` with $1 = username (text), unnamed statement and portal."""
    name = username.encode()
    parse = build.msg(b"P", b"\0" + build.cstr(query) + _I16.pack(0))
    bind = build.msg(b"B", b"\0\0" + _I16.pack(0) + _I16.pack(1) + _I32.pack(len(name)) + name + _I16.pack(0))
    execute = build.msg(b"E", b"\0" + _I32.pack(0))
    return parse + bind + execute + build.sync()


def parse_data_row(body: bytes) -> list[bytes | None]:
    """Column values of a DataRow body (None for NULL)."""
    n = _I16.unpack_from(body, 0)[0]
    pos = 2
    out: list[bytes | None] = []
    for _ in range(n):
        ln = _I32.unpack_from(body, pos)[0]
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(bytes(body[pos:pos + ln]))
            pos += ln
    return out


def dynamic_user(db: Database, name: str, secret: str | None) -> DbUser:
    """The user an auth_query answer describes, for logins to `db` only (one object per database and name, so
    its pools and SCRAM keys stay). NULL as the secret (no password, or rolvaliduntil passed): the user exists
    but no password matches; trust, peer and cert logins still succeed. The global table gets an entry without
    a secret for the name (settings, client counts, SHOW USERS)."""
    account = registry.users.get(name)
    if account is None:
        account = registry.users[name] = User(name)
    if secret is None:
        secret = ""
    u = db.dynamic_users.get(name)
    if u is None or u.account is not account:
        u = db.dynamic_users[name] = DbUser(account, secret)
    elif u.secret != secret:
        u.scram_client_key = u.scram_server_key = None
        u.secret = secret
    return u


class Lookup:
    """One client's auth_query. Reports to the Authenticator: found(user_or_None) or failed(text, sqlstate)."""

    def __init__(self, auth, client, username: str):
        self.auth = auth
        self.client = client
        self.username = username
        self.pool = None
        self.server = None
        self.timer = None
        self.query = ""
        self.rows: list = []
        self.finished = False

    # --- start ---
    def start(self) -> None:
        cfg = registry.cfg
        client = self.client
        auth_user, self.query, auth_dbname = settings_for(client.db, cfg)
        db = client.db
        if auth_dbname:
            db = registry.admin_db if auth_dbname == "pgbouncer" else registry.databases.get(auth_dbname)
            if db is None:
                fallback = cfg.databases.get("*")
                if fallback is not None:
                    db = registry.databases[auth_dbname] = Database(auth_dbname, fallback, auto=True)
                    log.info(f"{client.prefix()}registered new auto-database: {auth_dbname}")
            if db is None:
                log.error(f'{client.prefix()}authentication database "{auth_dbname}" is not configured.')
                self.fail(CONFIG_ERROR)
                return
        if db.admin:
            # the console itself (auth_dbname = pgbouncer, or a console login without a global auth_dbname)
            log.error(f'{client.prefix()}cannot use the reserved "pgbouncer" database as an auth_dbname')
            self.fail(CONFIG_ERROR)
            return
        if db.disabled:
            self.fail(f'authentication database "{db.name}" is disabled')
            return
        user = registry.users.get(auth_user)
        if user is None:
            user = registry.users[auth_user] = User(auth_user, registry.auth_users.get(auth_user))
        pool = self.pool = registry.get_pool(db, user)
        timeout = db.setting("query_wait_timeout", cfg.query_wait_timeout)
        if timeout:
            self.timer = registry.loop.call_later(timeout, self._timeout)
        log.debug(f"{client.prefix()}running auth_query for user {self.username} on {db.name}/{auth_user}")
        server = next(reversed(pool.idle_servers), None) if pool.idle_servers else None
        if server is not None:
            self.run_on(server)
            return
        if pool.last_login_error is not None and \
                time.monotonic() - pool.last_failed_time < cfg.server_login_retry:
            self.fail(f"server login has been failing, cached error: {pool.last_login_error} "
                       f"(server_login_retry)")
            return
        pool.auth_waiters.append(self)
        pooling.launch_new_connection(pool, force=not pool.login_servers)

    # --- the query ---
    def run_on(self, server) -> None:
        """Called with an idle, ready server of our pool: send the query."""
        self.server = server
        set_server_state(server, SV_ACTIVE)
        server.request_time = time.time()
        server.internal_rows = self.rows
        server.internal_error = None
        server.internal_done = self._query_done
        server.transport.write(lookup_messages(self.query, self.username))

    def _query_done(self, server, error) -> None:
        server.internal_rows = None
        self.server = None
        if error is not None:
            # the server's message is for the log; the client learns only that the setup is wrong
            log.error(f"S: error in auth_query: ERROR: {error}")
            server.close("error response from auth_query")
        else:
            server_available(server)
        if self.finished:
            return
        if error is not None:
            self.fail(CONFIG_ERROR)
            return
        self._finish()
        if not self.rows:
            self.auth.query_result(None)
            return
        values = parse_data_row(self.rows[0])
        if len(values) < 2 or values[0] is None:
            log.warning(f"{self.client.prefix()}auth_query returned an unusable row")
            self.auth.query_failed(CONFIG_ERROR)
            return
        name = values[0].decode("utf-8", "replace")
        secret = values[1].decode("utf-8", "replace") if values[1] is not None else None
        self.auth.query_result(dynamic_user(self.client.db, name, secret))

    # --- endings ---
    def _finish(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pool = self.pool
        if pool is not None and self in pool.auth_waiters:
            pool.auth_waiters.remove(self)

    def fail(self, text: str, sqlstate: str = "08P01") -> None:
        """End the lookup with an error for the client (also pooling: its pool's server login failed)."""
        self._finish()
        self.auth.query_failed(text, sqlstate)

    def _timeout(self) -> None:
        self.timer = None
        if self.finished:
            return
        server = self.server
        if server is not None:
            self.fail("query_timeout")
            server.close("auth_query timeout")
        else:
            self.fail("query_wait_timeout")

    def server_lost(self) -> None:
        """pooling: the server running the query closed."""
        if not self.finished:
            self.server = None
            self.fail("server conn crashed?")

    def cancel(self) -> None:
        """The client went away: forget the request (a running query still finishes on its server)."""
        self._finish()
