"""Tests for load_config: golden files, sections, SHOW CONFIG rows, SET and RELOAD semantics."""

import glob
import os

import pytest

from pgbouncer_py.config import (
    PARAMS,
    Config,
    ConfigError,
    DatabaseConf,
    PeerConf,
    UserConf,
    load_config,
)

DATA = os.path.join(os.path.dirname(__file__), "data", "config")
ERRORS = os.path.join(DATA, "errors")


def _load_text(tmp_path, text, name="pgbouncer.ini", **kw):
    p = tmp_path / name
    p.write_text(text)
    return load_config(str(p), **kw)


@pytest.fixture
def minimal(tmp_path):
    return _load_text(tmp_path, "[pgbouncer]\n")


# ---------------------------------------------------------------- golden files

def test_debian_shipped_ini_loads_unmodified():
    path = os.path.join(DATA, "debian-pgbouncer.ini")
    cfg = load_config(path)
    assert cfg.path == path and cfg.conffile == path
    assert (cfg.logfile, cfg.pidfile) == ("/var/log/postgresql/pgbouncer.log", "/var/run/postgresql/pgbouncer.pid")
    assert (cfg.listen_addr, cfg.listen_port, cfg.unix_socket_dir) == ("localhost", 6432, "/var/run/postgresql")
    assert (cfg.auth_type, cfg.auth_file) == ("md5", "/etc/pgbouncer/userlist.txt")
    assert cfg.databases == {} and cfg.users == {} and cfg.peers == {}


def test_every_setting_golden():
    path = os.path.join(DATA, "every-setting.ini")
    cfg = load_config(path)
    with open(os.path.join(DATA, "every-setting.show")) as f:
        expected = [tuple(line.rstrip("\n").split("|")) for line in f]
    assert cfg.show_rows() == expected
    # the golden file really sets every key to something other than its default
    for name, p in PARAMS.items():
        if name != "service_name":  # Windows-only: an unknown parameter on Linux
            assert cfg.get(name) != p.default_value, name


def test_every_setting_sections():
    cfg = load_config(os.path.join(DATA, "every-setting.ini"))
    assert list(cfg.databases) == ["appdb", "*"]
    appdb = cfg.databases["appdb"]
    assert (appdb.host, appdb.port, appdb.dbname, appdb.pool_size, appdb.reserve_pool_size) == (
        "127.0.0.1", 5499, "appdb", 7, 2)
    assert cfg.databases["*"].host == "/var/run/postgresql"
    assert cfg.users["bob"] == UserConf(name="bob", pool_mode="transaction", max_user_connections=3)
    assert cfg.peers == {2: PeerConf(peer_id=2, host="/tmp/peer2", port=6433, pool_size=4)}
    assert cfg.list_setting("admin_users") == ["admin", "root"]
    assert cfg.list_setting("listen_addr") == ["127.0.0.1", "::1"]
    assert cfg.list_setting("track_extra_parameters") == ["IntervalStyle", "search_path"]
    assert cfg.list_setting("ignore_startup_parameters") == ["extra_float_digits", "options"]


def test_include_golden(monkeypatch):
    monkeypatch.chdir(DATA)
    cfg = load_config("include/main.ini")
    # level3.ini's second [pgbouncer] header reset listen_port/pool_mode/default_pool_size to defaults
    assert (cfg.listen_port, cfg.max_client_conn, cfg.pool_mode, cfg.default_pool_size, cfg.listen_backlog) == (
        6432, 300, "session", 20, 64)
    assert list(cfg.databases) == ["db1", "db2"]
    assert cfg.databases["db1"].dbname == "one"
    assert cfg.users["carol"].pool_size == 4


def _error_cases():
    for path in sorted(glob.glob(os.path.join(ERRORS, "*.ini"))):
        with open(path) as f:
            expect = [line[len("; expect: "):].rstrip("\n") for line in f if line.startswith("; expect: ")]
        yield pytest.param(path, [e.replace("{dir}", ERRORS) for e in expect], id=os.path.basename(path))


@pytest.mark.parametrize("path,messages", list(_error_cases()))
def test_error_golden(path, messages, monkeypatch):
    monkeypatch.chdir(DATA)
    assert messages, "golden file has no '; expect:' line"
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert ei.value.messages == messages
    assert str(ei.value) == messages[0]


def test_semantic_error_inside_include_is_chained(tmp_path):
    (tmp_path / "inner.ini").write_text("[users]\ncarol = bogus=1\n")
    main = tmp_path / "main.ini"
    main.write_text(f"[pgbouncer]\n%include {tmp_path}/inner.ini\n")
    with pytest.raises(ConfigError) as ei:
        load_config(str(main))
    assert ei.value.messages == [
        "unrecognized user parameter: bogus",
        f'invalid value "bogus=1" for parameter carol in configuration ({tmp_path}/inner.ini:2)',
        f"error processing include file in configuration ({main}:2), stopping loading",
    ]


def test_first_error_in_file_order_wins(tmp_path):
    with pytest.raises(ConfigError) as ei:
        _load_text(tmp_path, "[pgbouncer]\nfoo = 1\n[bad]\n")
    assert str(ei.value) == "unknown parameter: pgbouncer/foo"


# ---------------------------------------------------------------- SHOW CONFIG

def test_show_rows_cover_every_param(minimal):
    rows = minimal.show_rows()
    assert [r[0] for r in rows] == [n for n in PARAMS if n != "service_name"]
    assert len(rows) == 100
    assert sum(r[3] == "no" for r in rows) == 14
    assert all(r[3] == ("yes" if PARAMS[r[0]].reloadable else "no") for r in rows)


def test_show_rows_defaults(minimal):
    for key, value, default, _ in minimal.show_rows():
        if key == "conffile":
            assert value == minimal.path and default == ""
        elif key == "unix_socket_mode":
            assert (value, default) == ("511", "0777")
        elif key == "verbose":
            assert (value, default) == ("0", "")
        else:
            assert value == default, key


# ---------------------------------------------------------------- attributes

@pytest.mark.parametrize(
    "line,name,value",
    [
        ("pool_mode = Transaction", "pool_mode", "transaction"),
        ("auth_type = Scram-SHA-256", "auth_type", "scram-sha-256"),
        ("reserve_pool_timeout = 0.5", "reserve_pool_timeout", 0.5),
        ("unix_socket_mode = 0700", "unix_socket_mode", 0o700),
        ("log_stats = 0", "log_stats", 0),
        ("listen_addr = 127.0.0.1, ::1", "listen_addr", "127.0.0.1, ::1"),
        ("max_client_conn = 0x20", "max_client_conn", 32),
        ("logfile =", "logfile", ""),
        ("syslog_facility = local7", "syslog_facility", "local7"),
    ],
)
def test_setting_attributes(tmp_path, line, name, value):
    cfg = _load_text(tmp_path, f"[pgbouncer]\n{line}\n")
    assert getattr(cfg, name) == value
    assert cfg.get(name) == value


def test_get_unknown_and_immutability(minimal):
    with pytest.raises(KeyError):
        minimal.get("nope")
    with pytest.raises(AttributeError):
        _ = minimal.nope
    with pytest.raises(AttributeError):
        minimal.pool_mode = "transaction"


def test_duplicate_key_last_wins(tmp_path):
    assert _load_text(tmp_path, "[pgbouncer]\nmax_client_conn=5\nmax_client_conn=7\n").max_client_conn == 7


# ---------------------------------------------------------------- [databases] / [users] / [peers]

@pytest.mark.parametrize(
    "connstr,expected",
    [
        ("", {}),
        ("host=a", {"host": "a"}),
        ("host=h1,h2 port=5433 dbname=real user=bob password='p w'",
         {"host": "h1,h2", "port": 5433, "dbname": "real", "user": "bob", "password": "p w"}),
        ("port=12abc", {"port": 12}),
        ("port=70000", {"port": 70000}),
        ("pool_size=abc min_pool_size=-3 max_db_connections=7x", {"pool_size": 0, "min_pool_size": -3,
                                                                   "max_db_connections": 7}),
        ("pool_mode=Transaction pool_size=0x10 reserve_pool=3",
         {"pool_mode": "transaction", "pool_size": 0, "reserve_pool_size": 3}),
        ("reserve_pool_size=4", {"reserve_pool_size": 4}),
        ("auth_user=au auth_query='SELECT 1' auth_dbname=authdb",
         {"auth_user": "au", "auth_query": "SELECT 1", "auth_dbname": "authdb"}),
        ("connect_query='SET x=1' query_wait_timeout=30 server_lifetime=60 max_db_client_connections=9",
         {"connect_query": "SET x=1", "query_wait_timeout": 30.0, "server_lifetime": 60.0,
          "max_db_client_connections": 9}),
        ("query_wait_timeout=1.5", {"query_wait_timeout": 1.0}),
        ("load_balance_hosts=disable", {"load_balance_hosts": "disable"}),
        ("load_balance_hosts=Round-Robin", {"load_balance_hosts": "round-robin"}),
        ("client_encoding=UTF8 datestyle=ISO timezone=UTC application_name=app",
         {"client_encoding": "UTF8", "datestyle": "ISO", "timezone": "UTC", "application_name": "app"}),
        ("host=/var/run/postgresql", {"host": "/var/run/postgresql"}),
    ],
)
def test_database_entries(tmp_path, connstr, expected):
    cfg = _load_text(tmp_path, f"[pgbouncer]\n[databases]\nMyDb = {connstr}\n")
    assert cfg.databases["MyDb"] == DatabaseConf(name="MyDb", connstr=connstr, **expected)


def test_database_names_are_case_sensitive(tmp_path):
    cfg = _load_text(tmp_path, "[pgbouncer]\n[databases]\nPgBouncer = host=x\napp = host=a\nApp = host=b\n")
    assert list(cfg.databases) == ["PgBouncer", "app", "App"]
    assert cfg.databases["App"].host == "b"


def test_database_defaults_and_fallback(tmp_path):
    cfg = _load_text(tmp_path, "[pgbouncer]\n[databases]\n* = host=fallback\n")
    db = cfg.databases["*"]
    assert (db.dbname, db.port, db.pool_size, db.load_balance_hosts) == (None, 5432, None, "round-robin")


@pytest.mark.parametrize(
    "connstr,expected",
    [
        ("", {}),
        ("pool_mode=Statement max_user_connections=4", {"pool_mode": "statement", "max_user_connections": 4}),
        ("pool_size=5 reserve_pool_size=2 max_user_client_connections=8",
         {"pool_size": 5, "reserve_pool_size": 2, "max_user_client_connections": 8}),
        ("query_timeout=10 query_wait_timeout=11 idle_transaction_timeout=12 transaction_timeout=13 "
         "client_idle_timeout=14",
         {"query_timeout": 10.0, "query_wait_timeout": 11.0, "idle_transaction_timeout": 12.0,
          "transaction_timeout": 13.0, "client_idle_timeout": 14.0}),
    ],
)
def test_user_entries(tmp_path, connstr, expected):
    cfg = _load_text(tmp_path, f"[pgbouncer]\n[users]\nbob = {connstr}\n")
    assert cfg.users["bob"] == UserConf(name="bob", **expected)


@pytest.mark.parametrize(
    "entry,expected",
    [
        ("1 = host=a", PeerConf(peer_id=1, host="a")),
        ("65535 = host=/tmp port=7000 pool_size=3", PeerConf(peer_id=65535, host="/tmp", port=7000, pool_size=3)),
    ],
)
def test_peer_entries(tmp_path, entry, expected):
    cfg = _load_text(tmp_path, f"[pgbouncer]\npeer_id = 7\n[peers]\n{entry}\n")
    assert cfg.peers == {expected.peer_id: expected}


def test_own_peer_entry_is_ignored(tmp_path):
    cfg = _load_text(tmp_path, "[peers]\n1 = host=a\n2 = host=b\n[pgbouncer]\npeer_id = 2\n")
    assert list(cfg.peers) == [1]


@pytest.mark.parametrize("key", ["0", "-1", "65536", "x1", ""])
def test_peer_id_range(tmp_path, key):
    with pytest.raises(ConfigError) as ei:
        _load_text(tmp_path, f"[pgbouncer]\n[peers]\n{key} = host=a\n")
    assert str(ei.value) == f"invalid peer id: {key}"


# ---------------------------------------------------------------- SET

@pytest.mark.parametrize(
    "name,text,value",
    [
        ("query_timeout", "0.25", 0.25),
        ("pool_mode", "Transaction", "transaction"),
        ("max_client_conn", "7", 7),
        ("conffile", "/tmp/x.ini", "/tmp/x.ini"),
        ("admin_users", "a,b", "a,b"),
        ("server_tls_sslmode", "require", "require"),
    ],
)
def test_with_setting(minimal, name, text, value):
    new = minimal.with_setting(name, text)
    assert new.get(name) == value
    assert new.changed_settings(minimal) == {name}
    assert minimal.get(name) == PARAMS[name].default_value or name == "conffile"  # original untouched


@pytest.mark.parametrize("name,text", [("listen_port", "1"), ("job_name", "x"), ("unix_socket_mode", "0700")])
def test_with_setting_no_reload_is_accepted_and_ignored(minimal, name, text):
    new = minimal.with_setting(name, text)
    assert new.get(name) == minimal.get(name)
    assert new.changed_settings(minimal) == set()


@pytest.mark.parametrize(
    "name,text,messages",
    [
        ("foo", "1", ["unknown parameter: pgbouncer/foo", "SET failed"]),
        ("MAX_CLIENT_CONN", "5", ["unknown parameter: pgbouncer/MAX_CLIENT_CONN", "SET failed"]),
        ("service_name", "x", ["unknown parameter: pgbouncer/service_name", "SET failed"]),
        ("pool_mode", "bad", ["SET failed"]),
        ("max_client_conn", "abc", ["SET failed"]),
        ("verbose", "", ["SET failed"]),
        ("query_timeout", "-1", ["SET failed"]),
    ],
)
def test_with_setting_errors(minimal, name, text, messages):
    with pytest.raises(ConfigError) as ei:
        minimal.with_setting(name, text)
    assert ei.value.messages == messages


# ---------------------------------------------------------------- RELOAD

def test_reload_keeps_no_reload_values_and_resets_the_rest(tmp_path):
    start = _load_text(tmp_path, "[pgbouncer]\nlisten_port = 6598\nmax_client_conn = 50\nunix_socket_mode = 0700\n")
    start = start.with_setting("query_timeout", "5")
    new = _load_text(tmp_path, "[pgbouncer]\nlisten_port = 6597\npool_mode = transaction\nunix_socket_mode = 0755\n",
                     startup=start)
    assert new.listen_port == 6598 and new.unix_socket_mode == 0o700  # silently ignored
    assert new.max_client_conn == 100  # line removed -> default
    assert new.query_timeout == 0  # console SET is lost
    assert new.pool_mode == "transaction"
    assert new.changed_settings(start) == {"max_client_conn", "query_timeout", "pool_mode"}


def test_reload_path_and_conffile(tmp_path):
    start = _load_text(tmp_path, "[pgbouncer]\n", name="a.ini")
    new = _load_text(tmp_path, "[pgbouncer]\n", name="b.ini", startup=start)
    assert new.path == start.path
    assert new.conffile == str(tmp_path / "b.ini")


def test_reload_failure_raises(tmp_path):
    start = _load_text(tmp_path, "[pgbouncer]\n")
    with pytest.raises(ConfigError):
        _load_text(tmp_path, "[pgbouncer]\npool_mode = bad\n", startup=start)


def test_second_main_section_resets_at_startup(tmp_path):
    cfg = _load_text(tmp_path, "[pgbouncer]\npidfile = /x\nmax_client_conn = 5\n[pgbouncer]\nlisten_backlog = 7\n")
    assert (cfg.pidfile, cfg.max_client_conn, cfg.listen_backlog) == ("", 100, 7)


def test_changed_settings_and_lists(minimal):
    other = minimal.with_setting("stats_users", " a , b,,c ").with_setting("max_client_conn", "1")
    assert other.changed_settings(minimal) == {"stats_users", "max_client_conn"}
    assert other.list_setting("stats_users") == ["a", "b", "c"]
    assert minimal.list_setting("stats_users") == []
    assert minimal.list_setting("track_extra_parameters") == ["IntervalStyle"]
    assert isinstance(other, Config)


# ---------------------------------------------------------------- pgbouncer-py extensions

def test_extension_settings_read_and_shown_only_when_on(tmp_path, minimal):
    from pgbouncer_py.config.params import EXTENSIONS
    assert not set(EXTENSIONS) & set(PARAMS)                 # PgBouncer's own table is unchanged
    assert (minimal.http_listen_addr, minimal.http_listen_port, minimal.http_ready_check_servers) == ("", 9127, 0)
    off_rows = minimal.show_rows()
    assert [r[0] for r in off_rows] == [n for n in PARAMS if n != "service_name"]
    on = _load_text(tmp_path, "[pgbouncer]\nhttp_listen_addr = 127.0.0.1\nhttp_listen_port = 9200\n", "on.ini")
    rows = {r[0]: r for r in on.show_rows()}
    assert rows["http_listen_addr"] == ("http_listen_addr", "127.0.0.1", "", "no")
    assert rows["http_listen_port"] == ("http_listen_port", "9200", "9127", "no")
    assert rows["http_ready_check_servers"] == ("http_ready_check_servers", "0", "0", "yes")
    keys = [r[0] for r in on.show_rows()]
    assert keys == sorted(keys) and len(keys) == len(off_rows) + 3
    # SET: the reloadable one changes, the listener ones are accepted and left as they are (like listen_addr)
    assert on.with_setting("http_ready_check_servers", "1").http_ready_check_servers == 1
    assert on.with_setting("http_listen_port", "1").http_listen_port == 9200
    # RELOAD keeps the listener settings of the startup config
    (tmp_path / "on.ini").write_text("[pgbouncer]\nhttp_listen_addr = *\nhttp_ready_check_servers = 1\n")
    again = load_config(str(tmp_path / "on.ini"), startup=on)
    assert (again.http_listen_addr, again.http_listen_port, again.http_ready_check_servers) == ("127.0.0.1", 9200, 1)
