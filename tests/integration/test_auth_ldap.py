"""LDAP authentication (auth_type=ldap with auth_ldap_options, method ldap in auth_hba_file) against a real slapd
(tests/ldaputil.py). No PgBouncer on this machine has LDAP (1.24.1 and 1.18 predate it; 1.25 added it), so the
reference is PostgreSQL's own ldap method: the session's cluster gets the same option lines in its pg_hba.conf
(for databases s_<scenario> that do not exist, so a login that passes authentication ends with "database ... does
not exist"), and each line must give the same accept/reject through pgbouncer-py as directly against PostgreSQL,
with the same reason in the log. The pooler logs the LDAP users in to testdb, which checks the password it
passes on against the directory too."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest
from authutil import login_result, password_msg, raw_login
from ldaputil import BASE_DN, SERVICE_DN, SERVICE_PASSWORD, USERS, options, slapd_fixture
from pgutil import SilentServer, free_port, wait_until

from pgbouncer_py.config.hba import parse_hba

slapd = slapd_fixture()

FAIL = "LDAP authentication failed"
PG_FAIL = 'LDAP authentication failed for user "{}"'
PG_PASSED = 'database "{}" does not exist'
LIBRARY_MISSING = "LDAP authentication needs the python3-ldap3 package"
ALICE, BOB, CAROL, MAIL = "ldap_alice", "ldap_bob", "ldap_carol", "ldap_carol@example.net"


def _url(d, scheme_port: str, dn: str, rest: str) -> str:
    return options(ldapurl=f"{scheme_port.replace('HOST', d.host)}/{dn}{rest}", ldapbinddn=SERVICE_DN,
                   ldapbindpasswd=SERVICE_PASSWORD)


# name -> (option line for the directory d, [(user, password, accepted)]); each line goes into PostgreSQL's
# pg_hba.conf and pgbouncer-py's auth_hba_file for database s_<name>
SCENARIOS = {
    "simple": (lambda d: d.simple_bind(), [(ALICE, "alice-pw", True), (ALICE, "bob-pw", False),
                                           ("ldap_nobody", "x", False), (f"{ALICE},ou=x", "alice-pw", False)]),
    "search": (lambda d: d.search_bind(), [(ALICE, "alice-pw", True), (BOB, "wrong", False),
                                           ("ldap_nobody", "x", False), ("ldap_al*", "alice-pw", False)]),
    "search_anonymous": (lambda d: d.search_bind(ldapbinddn=None, ldapbindpasswd=None), [(ALICE, "alice-pw", False)]),
    "search_bad_service": (lambda d: d.search_bind(ldapbindpasswd="nope"), [(ALICE, "alice-pw", False)]),
    "search_no_service_password": (lambda d: d.search_bind(ldapbindpasswd=None), [(ALICE, "alice-pw", False)]),
    "search_attribute": (lambda d: d.search_bind(ldapsearchattribute="mail"), [
        (MAIL, "carol-pw", True), (CAROL, "carol-pw", False)]),
    "search_filter": (lambda d: d.search_bind(ldapsearchfilter="(|(uid=$username)(mail=$username))"), [
        (MAIL, "carol-pw", True), (CAROL, "carol-pw", True), (CAROL, "alice-pw", False)]),
    "search_not_unique": (lambda d: d.search_bind(ldapsearchattribute="description"), [("ldap_twin", "twin-pw", False)]),
    "url_sub": (lambda d: _url(d, f"ldap://HOST:{d.port}", BASE_DN, "?uid?sub"), [
        (ALICE, "alice-pw", True), (ALICE, "x", False)]),
    "url_no_scope": (lambda d: _url(d, f"ldap://HOST:{d.port}", BASE_DN, "?uid"), [(ALICE, "alice-pw", True)]),
    # PostgreSQL 15 searches the subtree whatever scope the URL names (its documentation says otherwise)
    "url_base_scope": (lambda d: _url(d, f"ldap://HOST:{d.port}", BASE_DN, "?uid?base"), [(ALICE, "alice-pw", True)]),
    "url_one_level": (lambda d: _url(d, f"ldap://HOST:{d.port}", BASE_DN, "?uid?one"), [(ALICE, "alice-pw", True)]),
    "url_filter": (lambda d: _url(d, f"ldap://HOST:{d.port}", BASE_DN, "??sub?(mail=$username)"), [
        (MAIL, "carol-pw", True), (CAROL, "carol-pw", False)]),
    "starttls": (lambda d: d.simple_bind(ldaptls="1"), [(ALICE, "alice-pw", True), (ALICE, "x", False)]),
    "starttls_search": (lambda d: d.search_bind(ldaptls="1"), [(BOB, "bob-pw", True)]),
    "ldaps": (lambda d: d.simple_bind(ldapscheme="ldaps", ldapport=str(d.tls_port)), [
        (ALICE, "alice-pw", True), (ALICE, "x", False)]),
    "ldaps_url": (lambda d: _url(d, f"ldaps://HOST:{d.tls_port}", BASE_DN, "?uid?sub"), [(BOB, "bob-pw", True)]),
    "starttls_wrong_name": (lambda d: d.simple_bind(ldapserver=d.wrong_host, ldaptls="1"), [(ALICE, "alice-pw", False)]),
    "ldaps_wrong_name": (lambda d: d.simple_bind(ldapserver=d.wrong_host, ldapscheme="ldaps", ldapport=str(d.tls_port)),
                         [(ALICE, "alice-pw", False)]),
    "ldaps_and_starttls": (lambda d: d.simple_bind(ldapscheme="ldaps", ldapport=str(d.tls_port), ldaptls="1"), [
        (ALICE, "alice-pw", False)]),
    "second_server": (lambda d: d.simple_bind(ldapserver=f"127.0.0.2 {d.host}"), [(ALICE, "alice-pw", True)]),
    "directory_down": (lambda d: d.simple_bind(ldapport=str(free_port())), [(ALICE, "alice-pw", False)]),
}
# the log reason differs from PostgreSQL's: ldap3 does not send a bind with a DN and no password, which
# OpenLDAP refuses anyway (PostgreSQL: "Server is unwilling to perform")
OWN_LOG_REASON = {"search_no_service_password"}
# auth_type=ldap is checked with these (every option is the same code as the hba rules')
GLOBAL_SCENARIOS = ("simple", "search", "url_sub", "starttls", "ldaps")
SERVER_FILTER = "(|(uid=$username)(mail=$username))"
ROLES = sorted({u for _f, cases in SCENARIOS.values() for u, _p, _a in cases} | set(USERS))


def _db(name: str) -> str:
    return f"s_{name}"


@pytest.fixture(scope="module")
def lines(slapd) -> dict[str, str]:
    return {name: make(slapd) for name, (make, _cases) in SCENARIOS.items()}


@pytest.fixture(scope="module")
def ldap_pg(pg, slapd, lines):
    """The session's cluster with the LDAP roles and, first in pg_hba.conf, every scenario line (database
    s_<name>) and a line that checks the LDAP users' server logins to testdb against the directory. Its libldap
    trusts the test CA through an ldaprc in the data directory (a backend's working directory). All undone at
    the end."""
    hba_path, ldaprc = pg.data_dir / "pg_hba.conf", pg.data_dir / "ldaprc"
    saved = hba_path.read_text()
    users = ",".join(f'"{r}"' for r in ROLES)
    ldaprc.write_text(f"TLS_CACERT {slapd.tls.ca}\n")
    pg.psql(";\n".join(f'CREATE ROLE "{r}" LOGIN' for r in ROLES) + ";\n")
    try:
        hba = [f"host {_db(name)} all 127.0.0.1/32 ldap {line}" for name, line in lines.items()]
        hba.append(f"host testdb {users} 127.0.0.1/32 ldap {slapd.search_bind(ldapsearchfilter=SERVER_FILTER)}")
        hba_path.write_text("# tests/integration/test_auth_ldap.py\n" + "\n".join(hba) + "\n" + saved)
        pg.query("select pg_reload_conf()")
        wait_until(lambda: login_result(pg.dsn(_db("simple"), ALICE, "alice-pw")) == PG_PASSED.format(_db("simple")),
                   10, message="PostgreSQL to load the ldap lines")
        yield pg
    finally:
        hba_path.write_text(saved)
        pg.query("select pg_reload_conf()")
        ldaprc.unlink()
        pg.psql(";\n".join(f'DROP ROLE IF EXISTS "{r}"' for r in ROLES) + ";\n", check=False)


@pytest.fixture(scope="module")
def ldap_env(slapd):
    """pgbouncer-py trusts the test CA through LDAPTLS_CACERT (libldap's variable)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LDAPTLS_CACERT", slapd.tls.ca)
        for var in ("LDAPTLS_REQCERT", "LDAPTIMEOUT", "LDAPNETWORK_TIMEOUT", "LDAPNOINIT", "LDAPCONF"):
            mp.delenv(var, raising=False)
        yield mp


@pytest.fixture
def factory(pooler_factory, ldap_pg, ldap_env):
    """pooler_factory, once the session's cluster and the environment are ready for LDAP."""
    return pooler_factory


def _server(pg, **extra) -> str:
    return pg.server_connstr("testdb", **extra)


_PG_NOISE = re.compile(r"connection (received|authenticated|authorized)")


def _pg_reason(pg, since: int) -> str:
    """The first LOG line PostgreSQL wrote about a failed login after log offset `since`."""
    for line in pg.log(since).splitlines():
        m = re.search(r" LOG:  (.*)", line)
        if m and not _PG_NOISE.match(m.group(1)):
            return m.group(1)
    return ""


def _compare(pg, pooler, dbs: dict[str, str]) -> list[str]:
    """Log in through `pooler` and directly for every case; dbs maps scenario -> pooler database.
    Returns the differences (empty when pgbouncer-py and PostgreSQL agree)."""
    problems = []
    for name, db in dbs.items():
        for user, password, accepted in SCENARIOS[name][1]:
            case = f"{name} {user}/{password}"
            mark = len(pg.log())
            direct = login_result(pg.dsn(_db(name), user, password, connect_timeout=10))
            reason = _pg_reason(pg, mark)
            plog = pooler.log_mark()
            got = login_result(pooler.dsn(db, user, password))
            pg_ok = direct == PG_PASSED.format(_db(name))
            if pg_ok != accepted:
                problems.append(f"{case}: PostgreSQL itself says {direct!r}")
            if not pg_ok and direct != PG_FAIL.format(user):
                problems.append(f"{case}: PostgreSQL refused with {direct!r}")
            if got != (f"OK {user}" if pg_ok else FAIL):
                problems.append(f"{case}: pgbouncer-py {got!r}, PostgreSQL {direct!r}")
            if not pg_ok and name not in OWN_LOG_REASON and reason not in pooler.log()[plog:]:
                problems.append(f"{case}: PostgreSQL logged {reason!r}, pgbouncer-py: {pooler.log()[plog:]!r}")
    return problems


def test_hba_ldap_lines_as_postgresql(factory, ldap_pg, lines):
    """Every scenario line as an auth_hba_file rule: the same outcome and log reason as in pg_hba.conf."""
    hba = "".join(f"host {_db(n)} all 127.0.0.1/32 ldap {line}\n" for n, line in lines.items())
    pooler = factory.start(databases={_db(n): _server(ldap_pg) for n in SCENARIOS}, hba=hba)
    assert "ERROR" not in pooler.log()
    problems = _compare(ldap_pg, pooler, {n: _db(n) for n in SCENARIOS})
    assert not problems, "\n".join(problems)


def test_auth_type_ldap_as_postgresql(factory, ldap_pg, lines):
    """auth_type=ldap with auth_ldap_options = a scenario line (changed by RELOAD): the same outcome."""
    pooler = factory.start({"auth_type": "ldap", "auth_ldap_options": lines[GLOBAL_SCENARIOS[0]]},
                           databases={"ldapdb": _server(ldap_pg)})
    problems = []
    for name in GLOBAL_SCENARIOS:
        text = pooler.ini_path.read_text()
        pooler.ini_path.write_text(re.sub(r"(?m)^auth_ldap_options = .*$",
                                          lambda _m, name=name: f"auth_ldap_options = {lines[name]}", text))
        pooler.admin("RELOAD")
        problems += _compare(ldap_pg, pooler, {name: "ldapdb"})
    assert not problems, "\n".join(problems)
    assert "ERROR" not in pooler.log()


def test_server_login_uses_the_client_password_unless_forced(factory, ldap_pg, slapd):
    """testdb checks the LDAP users' password against the directory: the client's password reaches PostgreSQL. A
    [databases] entry with user= and password= logs in as that user with that password instead."""
    pooler = factory.start({"auth_type": "ldap", "auth_ldap_options": slapd.simple_bind()},
                           databases={"ldapdb": _server(ldap_pg),
                                      "forced": _server(ldap_pg, user="md5user", password="md5pass")})
    assert login_result(pooler.dsn("ldapdb", BOB, "bob-pw")) == f"OK {BOB}"
    assert login_result(pooler.dsn("forced", ALICE, "alice-pw")) == "OK md5user"
    assert login_result(pooler.dsn("forced", ALICE, "wrong")) == FAIL


def test_hba_ldap_rule_leaves_the_auth_file_secret_alone(factory, ldap_pg, slapd):
    """A user of auth_file who logs in through an hba ldap rule keeps the auth_file secret that the md5 rule
    checks (the server logins here are forced to md5user, so only the client side is looked at)."""
    forced = _server(ldap_pg, user="md5user", password="md5pass")
    pooler = factory.start(databases={"ldapdb": forced, "md5db": forced}, userlist={BOB: "bob-file-pw"},
                           hba=f"host ldapdb all 127.0.0.1/32 ldap {slapd.simple_bind()}\n"
                               "host md5db all 127.0.0.1/32 md5\n")
    assert login_result(pooler.dsn("ldapdb", BOB, "bob-pw")) == "OK md5user"
    assert login_result(pooler.dsn("ldapdb", BOB, "bob-file-pw")) == FAIL
    assert login_result(pooler.dsn("md5db", BOB, "bob-file-pw")) == "OK md5user"
    assert login_result(pooler.dsn("md5db", BOB, "bob-pw")) == "password authentication failed"


def test_empty_password_is_refused(factory, ldap_pg, slapd):
    """An empty password would be an anonymous bind that many directories accept: refused before LDAP,
    with PostgreSQL's text (PgBouncer uses the same)."""
    pooler = factory.start({"auth_type": "ldap", "auth_ldap_options": slapd.simple_bind()},
                           databases={"ldapdb": _server(ldap_pg)})
    empty = [password_msg(b"\0")]
    assert raw_login(ldap_pg.host, ldap_pg.port, ALICE, _db("simple"), empty) == \
        "ERROR: empty password returned by client"
    assert raw_login(pooler.host, pooler.port, ALICE, "ldapdb", empty) == \
        "ERROR: empty password returned by client"


# PostgreSQL's verdict on option lines, read from pg_hba_file_rules: (line, our error text or None when valid)
OPTION_LINES = [
    ('ldapserver=h ldapprefix=x ldapbasedn="dc=x"', "MIXED"),
    ('ldapserver=h ldapsuffix=x ldapbinddn="cn=y"', "MIXED"),
    ("ldapserver=h ldapprefix=x ldapbindpasswd=y", "MIXED"),
    ("ldapserver=h ldapprefix=x ldapsearchattribute=cn", "MIXED"),
    ('ldapprefix=x ldapurl="ldap://h/dc=x"', "MIXED"),
    ("ldapserver=h", "NO_MODE"),
    ('ldapserver=h ldapbinddn="cn=y" ldapbindpasswd=y', "NO_MODE"),
    ('ldapserver=h ldapbasedn="dc=x" ldapsearchattribute=cn ldapsearchfilter="(uid=$username)"', "ATTR_FILTER"),
    ('ldapurl="ldap://h/dc=x?uid" ldapsearchfilter="(cn=$username)"', "ATTR_FILTER"),
    ("ldapserver=h ldapprefix=x ldapport=0", 'invalid LDAP port number: "0"'),
    ("ldapserver=h ldapprefix=x ldapport=ldap", 'invalid LDAP port number: "ldap"'),
    ('ldapurl="ldapi:///dc=x"', "unsupported LDAP URL scheme: ldapi"),
    ('ldapurl="http://h/dc=x"', "error"),
    ('ldapurl="ldap://h/dc=x?uid?deep"', "error"),
    ("ldapserver=h ldaphost=x", "error"),
    ("ldapserver=h ldapbasedn=dc=x,dc=y", "error"),
    ("ldapserver=h ldapprefix", "error"),
    ("ldapserver=h ldapprefix=x ldapport=389abc", None),
    ("ldapserver=h ldapprefix=x ldapscheme=ldaps ldaptls=yes", None),
    ('ldapurl="ldap://h" ldapprefix=uid=', None),
    ('ldapurl="LDAPS://h:1636/dc=x??one?(cn=$username)"', None),
    ('ldapbasedn="dc=x"', None),
]
# lines PostgreSQL 15 loads although they cannot work; pgbouncer-py refuses them when it reads the file
STRICTER = [
    ("ldapserver=h ldapprefix=x ldapscheme=ldapi", 'invalid ldapscheme value: "ldapi"'),
    ("ldapserver=h ldapprefix=x ldapport=70000", 'invalid LDAP port number: "70000"'),
]


def test_option_lines_refused_as_postgresql_refuses_them(ldap_pg):
    """Which option lines are invalid, and PostgreSQL's words for the ldap-specific rules (pg_hba_file_rules
    parses pg_hba.conf as it stands; the file is put back before anything reloads it)."""
    from pgbouncer_py.config import ldapopts
    words = {"MIXED": ldapopts.MIXED_MODES, "NO_MODE": ldapopts.NO_MODE, "ATTR_FILTER": ldapopts.ATTRIBUTE_AND_FILTER}
    cases = OPTION_LINES + STRICTER
    path = ldap_pg.data_dir / "pg_hba.conf"
    saved = path.read_text()
    first = len(saved.splitlines()) + 1
    try:
        path.write_text(saved + "".join(f"host x all 127.0.0.1/32 ldap {line}\n" for line, _ in cases))
        pg_errors = dict(ldap_pg.query("select line_number, error from pg_hba_file_rules where line_number >= %s",
                                       (first,)))
    finally:
        path.write_text(saved)
    ours = parse_hba("".join(f"host x all 127.0.0.1/32 ldap {line}\n" for line, _ in cases), filename="f")
    our_errors = {int(e.split(":")[1]): e.split(": ", 1)[1] for e in ours.errors}
    problems = []
    for i, (line, expected) in enumerate(cases):
        pg_error, our_error = pg_errors.get(first + i), our_errors.get(i + 1)
        stricter = (line, expected) in STRICTER
        if (pg_error is None) != (expected is None or stricter):
            problems.append(f"{line}: PostgreSQL says {pg_error!r} (expected {expected!r})")
        if (our_error is None) != (expected is None):
            problems.append(f"{line}: pgbouncer-py says {our_error!r} (expected {expected!r})")
        text = words.get(expected, expected)
        if expected not in (None, "error") and our_error != text:
            problems.append(f"{line}: pgbouncer-py says {our_error!r}, expected {text!r}")
        if expected not in (None, "error") and not stricter and pg_error != text:
            problems.append(f"{line}: PostgreSQL says {pg_error!r}, expected {text!r}")
    assert not problems, "\n".join(problems)


class _Login(threading.Thread):
    """One login in the background: .result (login_result text) and .elapsed (seconds)."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.result: str | None = None
        self.elapsed = 0.0
        self.start()

    def run(self):
        t0 = time.monotonic()
        self.result = login_result(self.dsn)
        self.elapsed = time.monotonic() - t0


def test_hung_and_down_directory(factory, ldap_pg, slapd, monkeypatch, tmp_path):
    """A directory that accepts and never answers (TIMEOUT 3 in ldap.conf): its logins fail after the timeout
    with "Timed out" in the log, and meanwhile md5 logins and logins against a live directory go through. A
    directory that is down fails at once ("Can't contact LDAP server"). An immediate shutdown does not wait for a
    check still hung (TIMEOUT 30 after a RELOAD)."""
    ldap_conf = tmp_path / "ldap.conf"
    ldap_conf.write_text("# the pooler's libldap-style client settings\nTIMEOUT 3\nNETWORK_TIMEOUT 3\n")
    monkeypatch.setenv("LDAPCONF", str(ldap_conf))
    hole = SilentServer()
    try:
        hba = (f"host hung all 127.0.0.1/32 ldap {slapd.simple_bind(ldapport=str(hole.port))}\n"
               f"host down all 127.0.0.1/32 ldap {slapd.simple_bind(ldapport=str(free_port()))}\n"
               f"host ldapdb all 127.0.0.1/32 ldap {slapd.simple_bind()}\n"
               "host all all 127.0.0.1/32 md5\n")
        pooler = factory.start(databases={"hung": _server(ldap_pg), "down": _server(ldap_pg),
                                          "ldapdb": _server(ldap_pg), "testdb": _server(ldap_pg)},
                               hba=hba)
        hung = [_Login(pooler.dsn("hung", user, USERS[user])) for user in (ALICE, BOB, CAROL)]
        wait_until(lambda: len(hole.conns) >= 3, 10, message="three LDAP connections to the hung directory")
        t0 = time.monotonic()
        assert login_result(pooler.dsn("testdb", "md5user", "md5pass")) == "OK md5user"
        assert login_result(pooler.dsn("ldapdb", ALICE, "alice-pw")) == f"OK {ALICE}"
        assert login_result(pooler.dsn("down", ALICE, "alice-pw")) == FAIL
        others = time.monotonic() - t0
        assert all(t.is_alive() for t in hung), "the hung logins ended before the others were done"
        for t in hung:
            t.join(15)
            assert t.result == FAIL
            assert 2.5 < t.elapsed < 10, t.elapsed
        log = pooler.log()
        assert len(re.findall(r"LDAP login failed for user \"uid=\w+,ou=people,dc=example,dc=net\" on server "
                              r"\"127.0.0.1\": Timed out", log)) == 3, log
        assert re.search(r"down/\(nouser\)@127.0.0.1:\d+ LDAP login failed for user .* Can't contact LDAP server",
                         log), log
        print(f"3 logins hung on the directory; md5 + live LDAP + down LDAP logins meanwhile took {others:.2f} s")

        # a check still hung at an immediate shutdown does not hold the process
        ldap_conf.write_text("TIMEOUT 30\n")
        pooler.admin("RELOAD")
        late = _Login(pooler.dsn("hung", ALICE, "alice-pw"))
        wait_until(lambda: len(hole.conns) >= 4, 10, message="a fourth LDAP connection")
        t0 = time.monotonic()
        pooler.stop(signal.SIGQUIT)
        stopped = time.monotonic() - t0
        print(f"immediate shutdown with a check hung for up to 30 s took {stopped:.2f} s")
        assert stopped < 5 and pooler.forced is None
        late.join(10)
        assert late.result is not None and not late.result.startswith("OK")
    finally:
        hole.close()


def test_library_missing(factory, ldap_pg, slapd, tmp_path, monkeypatch):
    """Without ldap3: startup and RELOAD say so in the log; a login fails with the usual text and an ERROR."""
    shadow = tmp_path / "shadow" / "ldap3"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("ldap3 hidden by the test")\n')
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    pooler = factory.start({"auth_type": "ldap", "auth_ldap_options": slapd.simple_bind()},
                           databases={"ldapdb": _server(ldap_pg)})
    pooler.wait_for_log(f"ERROR {LIBRARY_MISSING}.*; LDAP logins will fail")
    assert login_result(pooler.dsn("ldapdb", ALICE, "alice-pw")) == FAIL
    pooler.wait_for_log(rf"ERROR C-\S+ ldapdb/\(nouser\)@127.0.0.1:\d+ {LIBRARY_MISSING}")
    mark = pooler.log_mark()
    pooler.admin("RELOAD")
    pooler.wait_for_log(f"ERROR {LIBRARY_MISSING}", since=mark)


def test_bad_auth_ldap_options(factory, ldap_pg):
    """auth_ldap_options that PostgreSQL would refuse: an ERROR at startup, and ldap logins fail."""
    pooler = factory.start({"auth_type": "ldap", "auth_ldap_options": 'ldapserver=127.0.0.1 ldapprefix="uid=" '
                            'ldapbasedn="dc=example,dc=net"'}, databases={"ldapdb": _server(ldap_pg)})
    pooler.wait_for_log("ERROR auth_ldap_options: cannot use ldapbasedn, ldapbinddn, ldapbindpasswd, "
                        "ldapsearchattribute, ldapsearchfilter, or ldapurl together with ldapprefix")
    assert login_result(pooler.dsn("ldapdb", ALICE, "alice-pw")) == FAIL
    pooler.wait_for_log(r"ERROR C-\S+ ldapdb/\(nouser\)@127.0.0.1:\d+ auth_ldap_options: cannot use")
