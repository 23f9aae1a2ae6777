"""Every auth_type x (right secret, wrong secret, unknown user) x (TCP, unix socket), against real PostgreSQL
with md5 and SCRAM roles; each answer compared with Debian's PgBouncer 1.18 (binary 'c') where it has the
feature. Expected texts: password/SASL/trust failures, login rejected, unix socket login rejected."""

from __future__ import annotations

import getpass

import pytest
from authutil import login_result
from pgutil import C_PGBOUNCER, PASSWORDS

PW = "password authentication failed"
SASL = "SASL authentication failed"
TRUST = '"trust" authentication failed'
REJECT = "login rejected"
UNIX_REJECT = "unix socket login rejected"
OK_MD5, OK_SCRAM = "OK md5user", "OK scramuser"

# (auth_type, userlist kind) -> {(user, secret, transport): expected}; secret: right | wrong
# userlist "secrets" = the md5/SCRAM secrets copied from pg_authid, "plain" = the passwords themselves.
MATRIX = {
    ("md5", "secrets"): {"md5user": (OK_MD5, PW), "scramuser": (OK_SCRAM, SASL), "nouser": (None, PW)},
    ("md5", "plain"): {"md5user": (OK_MD5, PW), "scramuser": (OK_SCRAM, PW), "nouser": (None, PW)},
    ("plain", "secrets"): {"md5user": (OK_MD5, PW), "scramuser": (OK_SCRAM, PW), "nouser": (None, PW)},
    ("scram-sha-256", "secrets"): {"md5user": (SASL, SASL), "scramuser": (OK_SCRAM, SASL), "nouser": (None, SASL)},
    ("scram-sha-256", "plain"): {"md5user": (OK_MD5, SASL), "scramuser": (OK_SCRAM, SASL), "nouser": (None, SASL)},
    ("trust", "plain"): {"md5user": (OK_MD5, OK_MD5), "scramuser": (OK_SCRAM, OK_SCRAM), "nouser": (None, TRUST)},
    ("any", "plain"): {"md5user": (OK_MD5, OK_MD5), "scramuser": (OK_MD5, OK_MD5), "nouser": (None, OK_MD5)},
}

# auth_type=hba: unix socket -> md5 for all but scramuser (scram-sha-256); TCP -> password for md5user,
# reject for scramuser on otherdb, scram-sha-256 for the rest; nothing for benchdb
HBA = """\
local all scramuser scram-sha-256
local all all md5
host all md5user 127.0.0.1/32 password
host otherdb scramuser 127.0.0.1/32 reject
host testdb all 127.0.0.1/32 scram-sha-256
"""
HBA_MATRIX = {  # (db, user, transport) -> (right, wrong)
    ("testdb", "md5user", "unix"): (OK_MD5, PW),
    ("testdb", "scramuser", "unix"): (OK_SCRAM, SASL),
    ("testdb", "nouser", "unix"): (None, PW),
    ("testdb", "md5user", "tcp"): (OK_MD5, PW),
    ("testdb", "scramuser", "tcp"): (OK_SCRAM, SASL),
    ("testdb", "nouser", "tcp"): (None, SASL),
    ("otherdb", "scramuser", "tcp"): (REJECT, REJECT),
    ("otherdb", "nouser", "tcp"): (REJECT, REJECT),
    ("benchdb", "nouser", "unix"): (PW, PW),
}


def _binaries(skip_c: bool = False):
    """'py', plus 'c' when Debian's real (ELF) PgBouncer is installed."""
    out = ["py"]
    try:
        with open(C_PGBOUNCER, "rb") as f:
            if f.read(4) == b"\x7fELF" and not skip_c:
                out.append("c")
    except OSError:
        pass
    return out


def _userlist(pg, kind: str) -> dict[str, str]:
    if kind == "plain":
        return dict(PASSWORDS)
    rows = pg.query("select rolname, rolpassword from pg_authid where rolname in ('md5user', 'scramuser')")
    return {name: secret for name, secret in rows}


def _run_cases(pooler, cases):
    got, want = {}, {}
    for (db, user, transport), (right, wrong) in cases.items():
        for which, expected in (("right", right), ("wrong", wrong)):
            if expected is None:
                continue
            pw = PASSWORDS.get(user, "whatever") if which == "right" else "wrong-password"
            key = (db, user, which, transport)
            got[key] = login_result(pooler.dsn(db, user, pw, unix=transport == "unix"))
            want[key] = expected
    return got, want


@pytest.mark.parametrize("binary", _binaries())
@pytest.mark.parametrize(("auth_type", "kind"), list(MATRIX))
def test_auth_type_matrix(pooler_factory, pg, binary, auth_type, kind):
    if binary == "c" and (auth_type, kind) == ("plain", "secrets"):
        pytest.skip("PgBouncer 1.18 keeps no SCRAM keys after a cleartext login against a SCRAM secret, so its "
                    "server login fails (wrong password type); pgbouncer-py derives them")
    databases = None
    if auth_type == "any":
        databases = {"testdb": pg.server_connstr("testdb", user="md5user", password="md5pass")}
    pooler = pooler_factory.start({"auth_type": auth_type}, databases=databases,
                                  userlist=_userlist(pg, kind), binary=binary)
    cases = {}
    for user, (right, wrong) in MATRIX[(auth_type, kind)].items():
        for transport in ("tcp", "unix"):
            cases[("testdb", user, transport)] = (right, wrong)
    got, want = _run_cases(pooler, cases)
    assert got == want


@pytest.mark.parametrize("binary", _binaries())
def test_hba_matrix(pooler_factory, pg, binary):
    pooler = pooler_factory.start(hba=HBA, userlist=_userlist(pg, "secrets"), binary=binary)
    got, want = _run_cases(pooler, HBA_MATRIX)
    assert got == want


def test_any_without_forced_user_is_a_config_error(pooler_factory):
    pooler = pooler_factory.start({"auth_type": "any"})
    assert login_result(pooler.dsn("testdb", "md5user", "x")) == "bouncer config error"


@pytest.mark.parametrize("binary", _binaries())
def test_peer_rejections(pooler_factory, binary):
    me = getpass.getuser()
    pooler = pooler_factory.start(hba="local all all peer\nhost all all 127.0.0.1/32 peer\n",
                                  userlist={me: "x", **PASSWORDS}, binary=binary)
    assert login_result(pooler.dsn("testdb", "md5user", "x", unix=True)) == UNIX_REJECT   # OS user differs
    assert login_result(pooler.dsn("testdb", "nouser", "x", unix=True)) == UNIX_REJECT
    assert login_result(pooler.dsn("testdb", me, "x", unix=False)) == UNIX_REJECT         # TCP
    # the OS user itself passes peer auth; PostgreSQL then refuses the unknown role
    assert login_result(pooler.dsn("testdb", me, "x", unix=True)) != UNIX_REJECT


def test_peer_with_ident_map(pooler_factory, tmp_path):
    me = getpass.getuser()
    ident = tmp_path / "ident.conf"
    ident.write_text(f"m {me} md5user\n")
    pooler = pooler_factory.start({"auth_ident_file": str(ident)}, hba="local all all peer map=m\n")
    assert login_result(pooler.dsn("testdb", "md5user", "x", unix=True)) == OK_MD5
    assert login_result(pooler.dsn("testdb", "scramuser", "x", unix=True)) == UNIX_REJECT
