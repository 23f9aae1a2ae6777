"""Tests for the auth_file reader and secret classification."""

import os

import pytest

from pgbouncer_py.config import ConfigError
from pgbouncer_py.config.userlist import (
    MAX_PASSWORD,
    MAX_USERNAME,
    load_auth_file,
    parse_userlist,
    secret_kind,
)

SCRAM = (
    "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$"
    "R9zCMGmTmTgrI4GXHhi9FK9JhuSQKkQZSXlBqKg5GE4=:u0aWzb4EBNqa1x4cO0vWVJOAcHKVCZZ1XkXbFEpB3v8="
)


@pytest.mark.parametrize(
    "text,users,errors",
    [
        ('"a" "b"\n', {"a": "b"}, []),
        ('"admin" ""\n"u1" "p1" junk here\n  ; comment\n"u""q" "p""w"\n"u2"   "x"',
         {"admin": "", "u1": "p1", 'u"q': 'p"w', "u2": "x"}, []),
        ('"admin" ""\n# hash comment\n"u1" "p1"\n', {"admin": ""}, ["broken auth file"]),
        ('"admin" ""\n"u1" "p1"\nbroken\n"u2" "p2"\n', {"admin": "", "u1": "p1"}, ["broken auth file"]),
        # the password's opening quote is searched for across lines, like PgBouncer does
        ('"admin" ""\n"u1"\n"u2" "p2"\n"u3" "p3"\n', {"admin": "", "u1": "u2", "u3": "p3"}, []),
        ('"admin" ""\n"u1" "p1\n"u2" "p2"\n"u3" "p3"\n', {"admin": "", "u1": "p1\n", "u3": "p3"}, []),
        ('"admin" ""\n"u1""p1"\n"u2"x"p2"\n', {"admin": "", 'u1"p1': "u2"}, []),
        ('"a" "1"\n"a" "2"\n', {"a": "2"}, []),
        ('"unterminated\n', {}, ["broken auth file"]),
        ('"u" "unterminated\n', {}, ["broken auth file"]),
        ('"u"\n', {}, ["broken auth file"]),
        ("\n\n   \n", {}, []),
        (f'"scram" "{SCRAM}"\n"md5" "md5d3a6a1d3bd6d6a06fd6e8cd1e64c4c93"\n',
         {"scram": SCRAM, "md5": "md5d3a6a1d3bd6d6a06fd6e8cd1e64c4c93"}, []),
        ('"ünï" "pässwörd"\n', {"ünï": "pässwörd"}, []),
    ],
)
def test_parse_userlist(text, users, errors):
    errs: list[str] = []
    assert parse_userlist(text, errs) == users
    assert errs == errors


@pytest.mark.parametrize(
    "user_len,pw_len,users,errors",
    [
        (MAX_USERNAME - 1, 10, 1, []),
        (MAX_USERNAME, 10, 0, ["username too long in auth file"]),
        (5, MAX_PASSWORD - 1, 1, []),
        (5, MAX_PASSWORD, 0, ["password too long in auth file"]),
    ],
)
def test_length_limits(user_len, pw_len, users, errors):
    errs: list[str] = []
    got = parse_userlist(f'"{"u" * user_len}" "{"p" * pw_len}"\n', errs)
    assert (len(got), errs) == (users, errors)


def test_username_limit_counts_bytes():
    errs: list[str] = []
    assert parse_userlist(f'"{"é" * 64}" "x"\n', errs) == {}  # 128 bytes
    assert errs == ["username too long in auth file"]


@pytest.mark.parametrize(
    "secret,kind",
    [
        ("", "plain"), ("secret", "plain"), ("md5d3a6a1d3bd6d6a06fd6e8cd1e64c4c93", "md5"),
        ("md5short", "plain"), ("md5D3A6A1D3BD6D6A06FD6E8CD1E64C4C93", "plain"),
        (SCRAM, "scram"), ("SCRAM-SHA-256$4096:salt", "plain"), ("SCRAM-SHA-256$x:c2FsdA==$a:b", "plain"),
    ],
)
def test_secret_kind(secret, kind):
    assert secret_kind(secret) == kind


def test_load_auth_file(tmp_path):
    p = tmp_path / "userlist.txt"
    p.write_text('"bob" "pw"\n;"old" "x"\n')
    assert load_auth_file(str(p)) == {"bob": "pw"}


def test_load_auth_file_missing(tmp_path):
    p = str(tmp_path / "none.txt")
    with pytest.raises(ConfigError) as ei:
        load_auth_file(p)
    assert str(ei.value) == f"could not open auth_file {p}: No such file or directory"


def test_debian_example_userlist():
    path = os.path.join(os.path.dirname(__file__), "data", "config", "debian-userlist.txt")
    assert load_auth_file(path) == {"marko": "asdasd", "postgres": "asdasd", "pgbouncer": "fake"}
