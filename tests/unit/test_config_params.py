"""Tests for the [pgbouncer] settings table: completeness, defaults, parsing and SHOW CONFIG formatting."""

import pytest

from pgbouncer_py.config.params import HIDDEN, KINDS, PARAMS, Param, parse_c_int, parse_c_time

NO_RELOAD = {
    "disable_pqexec", "job_name", "listen_addr", "listen_backlog", "listen_port", "pidfile", "pkt_buf",
    "resolv_conf", "so_reuseport", "track_extra_parameters", "unix_socket_dir", "unix_socket_group",
    "unix_socket_mode", "user",
}
NEW_SINCE_118 = {
    "auth_dbname", "auth_ident_file", "auth_ldap_options", "cancel_wait_timeout", "client_tls13_ciphers",
    "login_notify_message", "max_db_client_connections", "max_prepared_statements",
    "max_user_client_connections", "peer_id", "pool_idle_timeout", "query_wait_notify", "scram_iterations",
    "server_tls13_ciphers", "track_extra_parameters", "transaction_timeout",
}


def test_table_size_and_order():
    assert len(PARAMS) == 101
    assert HIDDEN == {"service_name"}
    assert list(PARAMS) == sorted(PARAMS)  # SHOW CONFIG order is the C table order: byte-wise sorted


def test_no_reload_set():
    assert {n for n, p in PARAMS.items() if not p.reloadable} == NO_RELOAD


def test_new_keys_present():
    assert NEW_SINCE_118 <= set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_row_is_well_formed(name):
    p = PARAMS[name]
    assert p.name == name
    assert p.kind in KINDS
    assert p.doc and p.doc.endswith(".")
    assert bool(p.choices) == (p.kind == "enum")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_default_parses_and_reformats_to_itself(name):
    p = PARAMS[name]
    if p.default == "" and p.kind != "str":  # C NULL default (verbose): shown empty, value 0
        assert p.default_value == 0
        return
    value = p.parse(p.default)
    assert value == p.default_value
    if p.kind == "mode":  # SHOW CONFIG prints the default column '0777' but values in decimal
        assert p.format(value) == str(int(p.default, 8))
    else:
        assert p.format(value) == p.default


@pytest.mark.parametrize(
    "name,default",
    [
        ("auth_type", "md5"), ("pool_mode", "session"), ("listen_port", "6432"), ("unix_socket_dir", "/tmp"),
        ("unix_socket_mode", "0777"), ("server_tls_sslmode", "prefer"), ("client_tls_sslmode", "disable"),
        ("client_tls_ciphers", "default"), ("server_check_query", ""), ("max_prepared_statements", "200"),
        ("track_extra_parameters", "IntervalStyle"), ("verbose", ""), ("conffile", ""),
        ("max_packet_size", "2147483647"), ("query_wait_timeout", "120"), ("server_reset_query", "DISCARD ALL"),
        ("scram_iterations", "4096"), ("stats_period", "60"), ("tcp_defer_accept", "1"),
    ],
)
def test_selected_defaults(name, default):
    assert PARAMS[name].default == default


@pytest.mark.parametrize(
    "text,value",
    [
        ("0", 0), ("10", 10), ("+3", 3), ("-1", -1), ("010", 8), ("0777", 511), ("0x10", 16), ("0X1f", 31),
        (" 5", 5), ("2147483647", 2147483647), ("2147483648", -2147483648), ("99999999999", 1215752191),
        ("-2147483648", -2147483648),
    ],
)
def test_parse_c_int(text, value):
    assert parse_c_int(text) == value


@pytest.mark.parametrize("text", ["", "abc", "10abc", "1.5", "08", "0x", "yes", "on", "true", "1 2", "1_000"])
def test_parse_c_int_rejects(text):
    with pytest.raises(ValueError):
        parse_c_int(text)


@pytest.mark.parametrize(
    "text,value,shown",
    [
        ("0", 0.0, "0"), ("0.5", 0.5, "0.5"), ("1.25", 1.25, "1.25"), ("1e3", 1000.0, "1000"),
        ("123456.789", 123456.789, "123457"), ("0.000001", 1e-06, "1e-06"), ("1e-7", 0.0, "0"),
        ("+3", 3.0, "3"), ("0x10", 16.0, "16"), (".5", 0.5, "0.5"), ("3600", 3600.0, "3600"),
        ("1800.5", 1800.5, "1800.5"),
    ],
)
def test_parse_and_format_time(text, value, shown):
    p = PARAMS["query_timeout"]
    assert p.parse(text) == pytest.approx(value)
    assert p.format(p.parse(text)) == shown


@pytest.mark.parametrize("text", ["", "-1", "5s", "inf", "nan", "1e300", "abc", "1_0"])
def test_parse_time_rejects(text):
    with pytest.raises(ValueError):
        parse_c_time(text)


@pytest.mark.parametrize(
    "name,text,value",
    [
        ("pool_mode", "Transaction", "transaction"), ("pool_mode", "STATEMENT", "statement"),
        ("auth_type", "MD5", "md5"), ("auth_type", "Scram-SHA-256", "scram-sha-256"), ("auth_type", "pam", "pam"),
        ("auth_type", "hba", "hba"), ("auth_type", "cert", "cert"), ("auth_type", "any", "any"),
        ("auth_type", "LDAP", "ldap"),
        ("client_tls_sslmode", "VERIFY-FULL", "verify-full"), ("server_tls_sslmode", "allow", "allow"),
    ],
)
def test_enum_canonical(name, text, value):
    assert PARAMS[name].parse(text) == value


@pytest.mark.parametrize(
    "name,text",
    [("pool_mode", "foo"), ("pool_mode", ""), ("auth_type", "radius"), ("auth_type", "password"),
     ("client_tls_sslmode", "x"), ("server_tls_sslmode", "verify")],
)
def test_enum_rejects(name, text):
    with pytest.raises(ValueError):
        PARAMS[name].parse(text)


@pytest.mark.parametrize(
    "name,text,shown",
    [
        ("unix_socket_mode", "0700", "448"), ("unix_socket_mode", "0777", "511"), ("log_stats", "0x1", "1"),
        ("tcp_keepalive", "2", "2"), ("max_client_conn", "-1", "-1"), ("logfile", "", ""),
        ("server_reset_query", "DISCARD ALL ; hi", "DISCARD ALL ; hi"),
    ],
)
def test_format_values_like_show_config(name, text, shown):
    p = PARAMS[name]
    assert p.format(p.parse(text)) == shown


def test_param_is_frozen():
    p = Param("x", "int", "1")
    with pytest.raises(AttributeError):
        p.default = "2"
