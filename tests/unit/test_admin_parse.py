"""Console parsing rules, column tables, binary encodings and the extended-protocol message decoding (no I/O)."""

import struct
from decimal import Decimal

import pytest

from pgbouncer_py.admin import commands, show
from pgbouncer_py.admin.console import parse_command, parse_pause_timeout, parse_set, parse_shutdown


@pytest.mark.parametrize(("sql", "expected"), [
    ("SHOW STATS", ("show", "stats")),
    ("show stats;", ("show", "stats")),
    ("  SHOW   Pools ;  ", ("show", "pools")),
    ('SHOW "Weird"', ("show", "Weird")),
    ("PAUSE", ("pause", None)),
    ("pause testdb", ("pause", "testdb")),
    ("KILL_CLIENT 17", ("kill_client", "17")),
    ("SELECT version", ("select", "version")),
    ("SHOW STATS; SHOW POOLS", None),
    ("SELECT 1+1", None),
    ("SHOW a b", None),
    ("", None),
])
def test_parse_command(sql, expected):
    assert parse_command(sql) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    ("SET default_pool_size = 5", ("default_pool_size", "5")),
    ("set pool_mode to 'transaction';", ("pool_mode", "transaction")),
    ("SET x = 'it''s'", ("x", "it's")),
    ("SET a=1", ("a", "1")),
    ("SET a", None),
    ("SHOW a", None),
])
def test_parse_set(sql, expected):
    assert parse_set(sql) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    ("SHUTDOWN", ""),
    ("shutdown;", ""),
    ("SHUTDOWN WAIT_FOR_SERVERS", "wait_for_servers"),
    ("shutdown wait_for_clients ;", "wait_for_clients"),
    ("SHUTDOWN NOW", None),
    ("SHOW", None),
])
def test_parse_shutdown(sql, expected):
    assert parse_shutdown(sql) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    ("PAUSE TIMEOUT 5", (None, 5.0, False)),
    ("pause timeout 2.5;", (None, 2.5, False)),
    ("PAUSE appdb TIMEOUT 10 FORCE", ("appdb", 10.0, True)),
    ("pause timeout timeout .5 force ;", ("timeout", 0.5, True)),     # a database called "timeout"
    ('PAUSE "My Db" TIMEOUT 0', ("My Db", 0.0, False)),             # refused later, with a clear error
    ("PAUSE timeout", None),                                         # plain PAUSE of a database "timeout"
    ("PAUSE", None),
    ("PAUSE TIMEOUT", None),
    ("PAUSE TIMEOUT -1", None),
    ("PAUSE TIMEOUT 5 NOW", None),
    ("PAUSE a b TIMEOUT 5", None),
])
def test_parse_pause_timeout(sql, expected):
    assert parse_pause_timeout(sql) == expected


def _decode_numeric(b: bytes) -> Decimal:
    ndigits, weight, sign, _dscale = struct.unpack_from("!hhHH", b)
    digits = struct.unpack_from(f"!{ndigits}H", b, 8)
    v = sum(d * 10000 ** (weight - i) for i, d in enumerate(digits))
    return Decimal(-v if sign == 0x4000 else v)


@pytest.mark.parametrize("n", [0, 1, 9999, 10000, 10001, 123456789, 10**20, -5, -10000, 2**63 - 1])
def test_numeric_binary_round_trips(n):
    assert _decode_numeric(commands.numeric_binary(n)) == n


@pytest.mark.parametrize(("value", "oid", "expected"), [
    (7, show.INT4, b"\0\0\0\x07"),
    (-1, show.INT8, b"\xff" * 8),
    ("abc", show.TEXT, b"abc"),
    (None, show.INT4, None),
    (b"\x01\x02", show.BYTEA, b"\x01\x02"),
])
def test_binary_value(value, oid, expected):
    assert commands.binary_value(value, oid) == expected


@pytest.mark.parametrize(("names", "types", "ok"), [
    ("a b", "si", True),
    ("a b c", "si", False),
    ("a", "N", True),
])
def test_cols_checks_length(names, types, ok):
    if ok:
        assert len(show.cols(names, types)) == len(names.split())
    else:
        with pytest.raises(ValueError):
            show.cols(names, types)


@pytest.mark.parametrize(("value", "expected"), [(None, ""), (5, "        5"), (123456789, "123456789")])
def test_users_pool_size_padding(value, expected):
    assert show._pad(value) == expected


@pytest.mark.parametrize(("table", "count"), [
    (show.STATS_COLS, 25), (show.STATS_TOTALS_COLS, 13), (show.STATS_AVERAGES_COLS, 13), (show.SOCKET_COLS, 21),
    (show.POOLS_COLS, 17), (show.DATABASES_COLS, 17), (show.USERS_COLS, 8), (show.LISTS_COLS, 2),
])
def test_column_counts_of_1_25(table, count):
    assert len(table) == count


@pytest.mark.parametrize(("formats", "expected_format_codes"), [
    (None, [0, 0]),
    ([0], [0, 0]),
    ([1], [1, 1]),
    ([0, 1], [0, 1]),
])
def test_row_description_format_codes(formats, expected_format_codes):
    msg = commands.row_description([("a", show.TEXT), ("b", show.INT4)], formats)
    assert msg[:1] == b"T"
    body = msg[5:]
    pos, codes = 2, []
    for _ in range(2):
        pos = body.index(b"\0", pos) + 1
        codes.append(struct.unpack_from("!h", body, pos + 16)[0])
        pos += 18
    assert codes == expected_format_codes


@pytest.mark.parametrize(("sql", "expected"), [
    ("SHOW STATS", True), ("select lists", True), ("SHOW HELP", False), ("PAUSE", False), ("SHOW", False),
])
def test_is_show(sql, expected):
    assert commands.is_show(sql) is expected
