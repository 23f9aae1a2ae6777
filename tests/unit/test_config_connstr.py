"""Tests for the key=value connection strings of [databases], [users] and [peers]."""

import pytest

from pgbouncer_py.config import ConfigError
from pgbouncer_py.config.connstr import SYNTAX_USER, atoi, parse_connstr


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", {}),
        ("   ", {}),
        ("host=x", {"host": "x"}),
        ("host=x port=5433", {"host": "x", "port": "5433"}),
        ("host = x   port =  5 ", {"host": "x", "port": "5"}),
        ("host='a b' dbname='it''s'", {"host": "a b", "dbname": "it's"}),
        ("host='a'b port=5", {"host": "a", "port": "5"}),
        ("host=x=y", {"host": "x=y"}),
        ("host=x\tport=5", {"host": "x\tport=5"}),  # only a space ends an unquoted value
        ("\thost=x", {"host": "x"}),
        ("host=x dbname=y host=z", {"host": "z", "dbname": "y"}),
        ("host=h1,h2 port=5432,5433", {"host": "h1,h2", "port": "5432,5433"}),
        ("connect_query='SELECT 1; SET x = ''y'''", {"connect_query": "SELECT 1; SET x = 'y'"}),
        ("HOST=x", {"HOST": "x"}),
        ("password=\"x", {"password": '"x'}),
    ],
)
def test_parse_connstr(text, expected):
    assert parse_connstr(text) == expected


@pytest.mark.parametrize(
    "text", ["host", "host=", "host=''", "a= ", "host='abc", "host x", "=x y", "host=\"x y\"", "host=x port"]
)
def test_parse_connstr_syntax_error(text):
    with pytest.raises(ConfigError) as ei:
        parse_connstr(text)
    assert str(ei.value) == "syntax error in connection string"


def test_user_settings_message():
    with pytest.raises(ConfigError) as ei:
        parse_connstr("pool_mode", syntax_message=SYNTAX_USER)
    assert str(ei.value) == "syntax error in user settings"


@pytest.mark.parametrize(
    "text,value",
    [("5", 5), ("0x10", 0), ("abc", 0), ("12abc", 12), ("-3", -3), (" 7", 7), ("+4", 4), ("", 0),
     ("4294967297", 1)],
)
def test_atoi(text, value):
    assert atoi(text) == value
