"""Table-driven tests of the pure parts of authentication: peer/cert name checks, secret kinds, cleartext
checks, the auth_query wire messages and DataRow parsing, and the startup config check."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from pgbouncer_py.auth import auth_query, cert, login, peer
from pgbouncer_py.auth.md5 import md5_secret
from pgbouncer_py.auth.scram import make_scram_secret
from pgbouncer_py.config.hba import parse_ident

IDENT = parse_ident("m alice bob\nm carol all\n")


@pytest.mark.parametrize(("system", "db_user", "mapname", "expected"), [
    ("bob", "bob", None, True),
    ("alice", "bob", None, False),
    ("alice", "bob", "m", True),
    ("alice", "alice", "m", False),
    ("carol", "anyone", "m", True),
    ("bob", "bob", "m", False),
    ("bob", "bob", "nomap", False),
    (None, "bob", None, False),
])
def test_peer_allowed(system, db_user, mapname, expected):
    assert peer.peer_allowed(system, db_user, mapname, IDENT) is expected


@pytest.mark.parametrize(("peer_cert", "expected"), [
    ({"subject": ((("countryName", "DE"),), (("commonName", "bob"),))}, "bob"),
    ({"subject": ((("commonName", "a"),), (("commonName", "b"),))}, "b"),
    ({"subject": ((("organizationName", "x"),),)}, None),
    ({}, None),
    (None, None),
])
def test_cert_common_name(peer_cert, expected):
    assert cert.cert_common_name(peer_cert) == expected


@pytest.mark.parametrize(("cn", "db_user", "mapname", "expected"), [
    ("bob", "bob", None, True),
    ("bob", "alice", None, False),
    ("alice", "bob", "m", True),
])
def test_cert_allowed(cn, db_user, mapname, expected):
    c = {"subject": ((("commonName", cn),),)}
    assert cert.cert_allowed(c, db_user, mapname, IDENT) is expected


SCRAM = make_scram_secret("pw", 4096, salt=b"0123456789abcdef")


@pytest.mark.parametrize(("secret", "kind"), [
    (None, "none"), ("pw", "plain"), ("", "plain"), (md5_secret("pw", "u"), "md5"), (SCRAM, "scram"),
    ("SCRAM-SHA-256$broken", "plain"), ("md5" + "g" * 32, "plain"),
])
def test_secret_kind(secret, kind):
    assert login.secret_kind(secret) == kind


@pytest.mark.parametrize(("secret", "password", "ok"), [
    ("pw", "pw", True), ("pw", "px", False),
    (md5_secret("pw", "u"), "pw", True), (md5_secret("pw", "u"), "px", False),
    (SCRAM, "pw", True), (SCRAM, "px", False),
])
def test_check_cleartext(secret, password, ok):
    assert login.check_cleartext(secret, "u", password) is ok


@pytest.mark.parametrize(("auth_type", "sslmode", "error"), [
    ("cert", "verify-full", None),
    ("cert", "require", "auth_type=cert requires client_tls_sslmode=SSLMODE_VERIFY_FULL"),
    ("md5", "disable", None),
])
def test_config_error(auth_type, sslmode, error):
    assert login.config_error(SimpleNamespace(auth_type=auth_type, client_tls_sslmode=sslmode)) == error


def _data_row(values):
    out = struct.pack("!h", len(values))
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out


@pytest.mark.parametrize("values", [[b"bob", b"md5abc"], [b"bob", None], [], [b"", b"x" * 70000]])
def test_parse_data_row(values):
    assert auth_query.parse_data_row(_data_row(values)) == values


@pytest.mark.parametrize(("query", "user"), [("SELECT $1", "bob"), ("select 1 where $1 = ''", "ünï")])
def test_lookup_messages(query, user):
    data = auth_query.lookup_messages(query, user)
    types = []
    pos = 0
    while pos < len(data):
        types.append(data[pos:pos + 1])
        pos += 1 + struct.unpack_from("!I", data, pos + 1)[0]
    assert types == [b"P", b"B", b"E", b"S"]
    assert query.encode() in data and user.encode() in data


@pytest.mark.parametrize(("conf", "glob", "expected"), [
    (None, ("g", "Q", ""), ("g", "Q", None)),
    (SimpleNamespace(auth_user="d", auth_query=None, auth_dbname="x"), ("g", "Q", ""), ("d", "Q", "x")),
    (SimpleNamespace(auth_user=None, auth_query="q2", auth_dbname=None), ("", "Q", "y"), (None, "q2", "y")),
])
def test_auth_query_settings(conf, glob, expected):
    cfg = SimpleNamespace(auth_user=glob[0], auth_query=glob[1], auth_dbname=glob[2])
    assert auth_query.settings_for(SimpleNamespace(conf=conf), cfg) == expected
