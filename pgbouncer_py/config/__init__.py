"""Configuration: load pgbouncer.ini (with %include) into an immutable Config, validate it, support SET and RELOAD.

Everything about individual settings lives in params.PARAMS; this module adds the sections and the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .connstr import SYNTAX_DB, SYNTAX_USER, atoi, parse_connstr
from .ini import ConfigError, IniLine, iter_ini, read_ini
from .params import ALIASES, ALL_PARAMS, EXTENSIONS, HIDDEN, PARAMS, POOL_MODES, Param

__all__ = [
    "ALIASES", "PARAMS", "Config", "ConfigError", "DatabaseConf", "IniLine", "Param", "PeerConf",
    "UserConf", "load_config", "read_ini",
]

LOAD_BALANCE_HOSTS = ("round-robin", "disable")
LIST_SETTINGS = frozenset(
    {"admin_users", "stats_users", "listen_addr", "ignore_startup_parameters", "track_extra_parameters"}
)
# [databases] keys that are spelled two ways
DB_KEY_ALIASES = {"reserve_pool": "reserve_pool_size"}
RESERVED_DB = "pgbouncer"


@dataclass(frozen=True)
class DatabaseConf:
    name: str
    dbname: str | None = None
    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: str | None = None
    auth_user: str | None = None
    auth_query: str | None = None
    auth_dbname: str | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None
    connect_query: str | None = None
    pool_mode: str | None = None
    query_wait_timeout: float | None = None
    max_db_connections: int | None = None
    max_db_client_connections: int | None = None
    server_lifetime: float | None = None
    load_balance_hosts: str = "round-robin"
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None
    application_name: str | None = None
    connstr: str = ""


@dataclass(frozen=True)
class UserConf:
    name: str
    pool_mode: str | None = None
    pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_user_connections: int | None = None
    max_user_client_connections: int | None = None
    query_timeout: float | None = None
    query_wait_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    transaction_timeout: float | None = None
    client_idle_timeout: float | None = None


@dataclass(frozen=True)
class PeerConf:
    peer_id: int
    host: str | None = None
    port: int = 6432
    pool_size: int | None = None


_DB_STR = {"dbname", "host", "user", "password", "auth_user", "auth_query", "auth_dbname", "connect_query",
           "client_encoding", "datestyle", "timezone", "application_name"}
_DB_INT = {"pool_size", "min_pool_size", "reserve_pool_size", "max_db_connections", "max_db_client_connections"}
_DB_TIME = {"query_wait_timeout", "server_lifetime"}
_USER_INT = {"pool_size", "reserve_pool_size", "max_user_connections", "max_user_client_connections"}
_USER_TIME = {"query_timeout", "query_wait_timeout", "idle_transaction_timeout", "transaction_timeout",
              "client_idle_timeout"}
_PEER_MAX = 65535


def _pool_mode(value: str) -> str:
    low = value.lower()
    if low not in POOL_MODES:
        raise ConfigError(f"invalid pool mode: {value}")
    return low


def parse_database(name: str, connstr: str) -> DatabaseConf:
    """One [databases] entry -> DatabaseConf; ConfigError with PgBouncer's specific message."""
    if name == RESERVED_DB:
        raise ConfigError(f'database name "{RESERVED_DB}" is reserved')
    kw: dict = {}
    for key, value in parse_connstr(connstr, syntax_message=SYNTAX_DB).items():
        key = DB_KEY_ALIASES.get(key, key)
        if key in _DB_STR:
            kw[key] = value
        elif key == "port":
            port = atoi(value)
            if port == 0:
                raise ConfigError(f"invalid port: {value}")
            kw[key] = port
        elif key in _DB_INT:
            kw[key] = atoi(value)
        elif key in _DB_TIME:
            kw[key] = float(atoi(value))
        elif key == "pool_mode":
            kw[key] = _pool_mode(value)
        elif key == "load_balance_hosts":
            low = value.lower()
            if low not in LOAD_BALANCE_HOSTS:
                raise ConfigError(f"invalid load_balance_hosts: {value}")
            kw[key] = low
        else:
            raise ConfigError(f"unrecognized connection parameter: {key}")
    return DatabaseConf(name=name, connstr=connstr, **kw)


def parse_user(name: str, connstr: str) -> UserConf:
    """One [users] entry -> UserConf."""
    kw: dict = {}
    for key, value in parse_connstr(connstr, syntax_message=SYNTAX_USER).items():
        if key == "pool_mode":
            kw[key] = _pool_mode(value)
        elif key in _USER_INT:
            kw[key] = atoi(value)
        elif key in _USER_TIME:
            kw[key] = float(atoi(value))
        else:
            raise ConfigError(f"unrecognized user parameter: {key}")
    return UserConf(name=name, **kw)


def parse_peer(name: str, connstr: str) -> PeerConf:
    """One [peers] entry (key = peer id 1..65535) -> PeerConf."""
    if not name.isdigit() or not 1 <= int(name) <= _PEER_MAX:
        raise ConfigError(f"invalid peer id: {name}")
    kw: dict = {}
    for key, value in parse_connstr(connstr, syntax_message=SYNTAX_DB).items():
        if key == "host":
            kw[key] = value
        elif key == "port":
            port = atoi(value)
            if port == 0:
                raise ConfigError(f"invalid port: {value}")
            kw[key] = port
        elif key == "pool_size":
            kw[key] = atoi(value)
        else:
            raise ConfigError(f"unrecognized peer parameter: {key}")
    return PeerConf(peer_id=int(name), **kw)


def _lookup(name: str) -> Param | None:
    """The setting called `name` (case-sensitive), or None. Windows-only keys are unknown on Linux."""
    name = ALIASES.get(name, name)
    return None if name in HIDDEN else ALL_PARAMS.get(name)


def _invalid(line: IniLine) -> str:
    return f'invalid value "{line.value}" for parameter {line.key} in configuration ({line.file}:{line.lineno})'


class Config:
    """An immutable loaded configuration. Every [pgbouncer] setting is an attribute of the same name."""

    def __init__(self, path: str, values: dict, databases: dict[str, DatabaseConf] | None = None,
                 users: dict[str, UserConf] | None = None, peers: dict[int, PeerConf] | None = None):
        d = self.__dict__
        # settings live in the instance dict, so `cfg.pool_mode` is a plain (fast) attribute read
        d.update(values)
        d["path"] = path
        d["_values"] = dict(values)
        d["databases"] = dict(databases or {})
        d["users"] = dict(users or {})
        d["peers"] = dict(peers or {})

    def __setattr__(self, name, value):
        raise AttributeError("Config is immutable; use with_setting()")

    def __repr__(self) -> str:
        return f"<Config {self.path!r}: {len(self.databases)} databases, {len(self.users)} users>"

    def get(self, name: str):
        """Value of a [pgbouncer] setting (KeyError only for names that are not settings)."""
        return self._values[name]

    def show_rows(self) -> list[tuple[str, str, str, str]]:
        """SHOW CONFIG rows: key, value, default, changeable (the extensions only while turned on)."""
        params = list(PARAMS.values())
        if self._values["http_listen_addr"]:
            params = sorted(params + list(EXTENSIONS.values()), key=lambda p: p.name)
        return [
            (p.name, p.format(self._values[p.name]), p.default, "yes" if p.reloadable else "no")
            for p in params
            if p.name not in HIDDEN
        ]

    def with_setting(self, name: str, value: str) -> Config:
        """Admin console SET. Like PgBouncer, a no-reload setting is accepted and silently left unchanged.

        Raises ConfigError: unknown key -> messages ['unknown parameter: pgbouncer/KEY', 'SET failed'];
        bad value -> ['SET failed']. The client is always told 'SET failed'.
        """
        param = _lookup(name)
        if param is None:
            raise ConfigError(f"unknown parameter: pgbouncer/{name}", "SET failed")
        try:
            parsed = param.parse(value)
        except ValueError:
            raise ConfigError("SET failed") from None
        problem = param.problem(parsed)
        if problem:
            raise ConfigError(problem, "SET failed")
        values = dict(self._values)
        if param.reloadable:
            values[param.name] = parsed
        return Config(self.path, values, self.databases, self.users, self.peers)

    def changed_settings(self, old: Config) -> set[str]:
        """Names of [pgbouncer] settings whose values differ from `old`."""
        return {n for n, v in self._values.items() if old._values.get(n) != v}

    def list_setting(self, name: str) -> list[str]:
        """A comma-list setting split into stripped, non-empty items."""
        return [item.strip() for item in str(self._values[name]).split(",") if item.strip()]


def _defaults(path: str) -> dict:
    values = {name: p.default_value for name, p in ALL_PARAMS.items()}
    values["conffile"] = path
    return values


def load_config(path: str, *, startup: Config | None = None) -> Config:
    """Read the ini (with %include), [databases]/[users]/[peers], validate everything; raise ConfigError.

    With `startup` (the config the process started with) this is a RELOAD: no-reload settings keep
    their startup values whatever the file now says, and every other setting starts from its default.
    """
    base = _defaults(path)
    frozen = {n: startup.get(n) for n, p in ALL_PARAMS.items() if not p.reloadable} if startup else {}
    values = {**base, **frozen}
    databases: dict[str, DatabaseConf] = {}
    users: dict[str, UserConf] = {}
    peers: dict[int, PeerConf] = {}
    seen_main = False
    try:
        for line in iter_ini(path):
            if line.key is None:  # section header
                if line.section == "pgbouncer":
                    seen_main = True
                    values = {**base, **frozen}  # each [pgbouncer] start resets to defaults
                continue
            sec = line.section
            try:
                if sec is None:
                    raise ConfigError(f"load_init_file: value without section: {line.key}")
                if sec == "pgbouncer":
                    param = _lookup(line.key)
                    if param is None:
                        raise ConfigError(f"unknown parameter: pgbouncer/{line.key}")
                    try:
                        values[param.name] = param.parse(line.value)
                    except ValueError:
                        raise ConfigError() from None
                    problem = param.problem(values[param.name])
                    if problem:
                        raise ConfigError(problem)
                elif sec == "databases":
                    databases[line.key] = parse_database(line.key, line.value)
                elif sec == "users":
                    users[line.key] = parse_user(line.key, line.value)
                elif sec == "peers":
                    peer = parse_peer(line.key, line.value)
                    peers[peer.peer_id] = peer
            except ConfigError as e:
                raise line.error(*e.messages, _invalid(line)) from None
    except ConfigError as e:
        if e.logfile is None:
            e.logfile = values["logfile"]      # the logfile in force when the bad line was read: PgBouncer logs there
        raise
    if not seen_main:
        raise ConfigError("load_init_file: main section missing from config file")
    values.update(frozen)
    peers.pop(values["peer_id"], None)  # an entry for our own peer_id is allowed and ignored
    return Config(startup.path if startup else path, values, databases, users, peers)


# keep dataclass field lists handy for consumers that render SHOW DATABASES/USERS
DATABASE_FIELDS = tuple(f.name for f in fields(DatabaseConf))
USER_FIELDS = tuple(f.name for f in fields(UserConf))
