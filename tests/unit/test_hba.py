"""Table-driven tests for pgbouncer_py.config.hba: parsing, matching, errors, ident maps, golden file."""

import json
import os

import pytest

from pgbouncer_py.config.hba import (
    HbaError,
    HbaRules,
    load_hba_file,
    load_ident_file,
    parse_hba,
    parse_ident,
)

DATA = os.path.join(os.path.dirname(__file__), "data", "hba")


def read_data(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return f.read()


def conn(kind="host", addr="10.0.0.1", db="db", user="u", tls=False, repl=False):
    return dict(conn_type=kind, tls=tls, addr=addr if kind == "host" else None, database=db, user=user,
                replication=repl)


def matched_line(rules: HbaRules, c: dict) -> int | None:
    rule = rules.match(**c)
    return None if rule is None else rule.line


# --- matching ---------------------------------------------------------------------------------------

MATCH_CASES = [
    # record types
    ("local all all trust", conn("local"), 1),
    ("local all all trust", conn("host"), None),
    ("host all all 0.0.0.0/0 trust", conn("local"), None),
    ("host all all 0.0.0.0/0 trust", conn("host", tls=True), 1),
    ("host all all 0.0.0.0/0 trust", conn("host", tls=False), 1),
    ("hostssl all all 0.0.0.0/0 trust", conn("host", tls=True), 1),
    ("hostssl all all 0.0.0.0/0 trust", conn("host", tls=False), None),
    ("hostnossl all all 0.0.0.0/0 trust", conn("host", tls=False), 1),
    ("hostnossl all all 0.0.0.0/0 trust", conn("host", tls=True), None),
    ("hostssl all all all trust", conn("local"), None),
    # first match wins, later lines are not consulted
    ("local all all reject\nlocal all all trust", conn("local"), 1),
    ("local db2 all reject\nlocal all all trust", conn("local"), 2),
    ("local all u2 reject\nlocal all all trust", conn("local"), 2),
    ("host all all 10.0.0.0/8 reject\nhost all all all trust", conn(addr="10.9.9.9"), 1),
    ("host all all 10.0.0.0/8 reject\nhost all all all trust", conn(addr="11.0.0.1"), 2),
    ("\n\n# c\nlocal all all md5", conn("local"), 4),
    # databases
    ("local db all trust", conn("local", db="db"), 1),
    ("local db all trust", conn("local", db="DB"), None),
    ("local a,b,c all trust", conn("local", db="b"), 1),
    ("local a, b , c all trust", conn("local", db="c"), 1),
    ("local a,b all trust", conn("local", db="d"), None),
    ('local "all" all trust', conn("local", db="x"), None),
    ('local "all" all trust', conn("local", db="all"), 1),
    ("local sameuser all trust", conn("local", db="bob", user="bob"), 1),
    ("local sameuser all trust", conn("local", db="bob", user="alice"), None),
    ('local "sameuser" all trust', conn("local", db="bob", user="bob"), None),
    ('local "sameuser" all trust', conn("local", db="sameuser", user="bob"), 1),
    ('local "My DB" all trust', conn("local", db="My DB"), 1),
    ('local "a,b" all trust', conn("local", db="a,b"), 1),
    ('local "a,b" all trust', conn("local", db="a"), None),
    ('local "a""b" all trust', conn("local", db='a"b'), 1),
    ('local "" all trust', conn("local", db=""), 1),
    ('local "a"b all trust', conn("local", db="ab"), 1),
    ("local a#b all trust", conn("local", db="a"), None),  # '#' starts a comment: the line is broken
    ('local "a#b" all trust', conn("local", db="a#b"), 1),
    ("local @ all trust", conn("local", db="@"), 1),  # a lone @ is a plain name
    ('local "@x" all trust', conn("local", db="@x"), 1),
    # replication
    ("local replication all trust", conn("local", repl=True), 1),
    ("local replication all trust", conn("local", db="replication"), None),
    ("local all all trust", conn("local", repl=True), None),
    ("local all,replication all trust", conn("local", repl=True), 1),
    ("local all,replication all trust", conn("local"), 1),
    ('local "replication" all trust', conn("local", db="replication"), 1),
    ('local "replication" all trust', conn("local", db="replication", repl=True), None),
    ("local sameuser all trust", conn("local", db="u", user="u", repl=True), None),
    ("local all all reject\nlocal replication all trust", conn("local", repl=True), 2),
    ("host replication rep 10.0.0.0/8 md5", conn(addr="10.1.1.1", user="rep", repl=True), 1),
    # users
    ("local all bob trust", conn("local", user="bob"), 1),
    ("local all bob trust", conn("local", user="Bob"), None),
    ("local all bob,alice trust", conn("local", user="alice"), 1),
    ('local all "all" trust', conn("local", user="x"), None),
    ('local all "all" trust', conn("local", user="all"), 1),
    ('local all "Ann Lee" trust', conn("local", user="Ann Lee"), 1),
    ('local all "+grp" trust', conn("local", user="+grp"), 1),
    # IPv4 addresses
    ("host all all 127.0.0.1/32 trust", conn(addr="127.0.0.1"), 1),
    ("host all all 127.0.0.1/32 trust", conn(addr="127.0.0.2"), None),
    ("host all all 10.0.0.0/8 trust", conn(addr="10.255.255.255"), 1),
    ("host all all 10.0.0.0/8 trust", conn(addr="11.0.0.0"), None),
    ("host all all 0.0.0.0/0 trust", conn(addr="203.0.113.9"), 1),
    ("host all all 0.0.0.0/0 trust", conn(addr="::1"), None),
    ("host all all 10.1.2.3/8 trust", conn(addr="10.200.0.1"), 1),  # host bits ignored
    ("host all all 10.0.0.0 255.0.0.0 trust", conn(addr="10.3.4.5"), 1),
    ("host all all 10.0.0.0 255.0.0.0 trust", conn(addr="12.3.4.5"), None),
    ("host all all 10.0.0.0 255.0.255.0 trust", conn(addr="10.9.0.7"), 1),  # non-contiguous, as PG
    ("host all all 10.0.0.0 255.0.255.0 trust", conn(addr="10.9.1.7"), None),
    ("host all all 192.168.1.5 255.255.255.255 trust", conn(addr="192.168.1.5"), 1),
    ("host all all all trust", conn(addr="198.51.100.1"), 1),
    ("host all all all trust", conn(addr="2001:db8::1"), 1),
    ("host all all all trust", conn(addr=None), 1),
    ("host all all 10.0.0.0/8 trust", conn(addr=None), None),
    # IPv6 addresses
    ("host all all ::1/128 trust", conn(addr="::1"), 1),
    ("host all all ::1/128 trust", conn(addr="127.0.0.1"), None),
    ("host all all ::1/128 trust", conn(addr="0:0:0:0:0:0:0:1"), 1),
    ("host all all 2001:db8::/32 trust", conn(addr="2001:db8:ffff::5"), 1),
    ("host all all 2001:db8::/32 trust", conn(addr="2001:db9::5"), None),
    ("host all all ::/0 trust", conn(addr="10.0.0.1"), None),
    ("host all all ::/0 trust", conn(addr="fe80::1"), 1),
    ("host all all fe80::/10 trust", conn(addr="fe80::1%eth0"), 1),  # client zone id ignored
    ("host all all ::1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff trust", conn(addr="::1"), 1),
    ("host all all 2001:db8:: ffff:ffff:: trust", conn(addr="2001:db8:1::1"), 1),
    ("host all all 2001:db8:: ffff:ffff:: trust", conn(addr="2001:db7::1"), None),
    # IPv4-mapped IPv6 clients match IPv4 rules and vice versa
    ("host all all 127.0.0.1/32 trust", conn(addr="::ffff:127.0.0.1"), 1),
    ("host all all 10.0.0.0/8 trust", conn(addr="::ffff:10.1.2.3"), 1),
    ("host all all 10.0.0.0/8 trust", conn(addr="::ffff:11.1.2.3"), None),
    ("host all all ::ffff:10.0.0.0/104 trust", conn(addr="10.4.4.4"), 1),
    ("host all all ::ffff:10.0.0.0/104 trust", conn(addr="::ffff:10.4.4.4"), 1),
    ("host all all ::ffff:10.0.0.0/104 trust", conn(addr="11.4.4.4"), None),
    ("host all all ::ffff:0:0/96 trust", conn(addr="8.8.8.8"), 1),
    ("host all all ::/0 trust", conn(addr="::ffff:8.8.8.8"), 1),  # literally inside ::/0
    ("host all all ::/64 trust", conn(addr="8.8.8.8"), None),
    ("host all all ::ffff:10.0.0.0 ffff:ffff:ffff:ffff:ffff:ffff:ff00:0 trust", conn(addr="10.1.1.1"), 1),
    ("host all all 0.0.0.0/0 trust", conn(addr="::ffff:0.0.0.1"), 1),
    ("host all all ::/0 trust", conn(addr="::1"), 1),
    # combinations
    ("hostssl db1,db2 u1 10.0.0.0/8 scram-sha-256", conn(addr="10.0.0.1", db="db2", user="u1", tls=True), 1),
    ("hostssl db1,db2 u1 10.0.0.0/8 scram-sha-256", conn(addr="10.0.0.1", db="db2", user="u1"), None),
    ("hostssl db1,db2 u1 10.0.0.0/8 scram-sha-256", conn(addr="10.0.0.1", db="db3", user="u1", tls=True),
     None),
    ("host all all 0.0.0.0/0 reject\nlocal all all trust", conn("local"), 2),
    # continuation lines: the rule keeps its first line number
    ("local all \\\nall trust", conn("local"), 1),
    ("local a\\\nb all trust", conn("local", db="ab"), 1),
    ("# x\nhost all all \\\n  10.0.0.0/8 \\\n  md5\nlocal all all trust", conn(addr="10.0.0.1"), 2),
    ("# x\nhost all all \\\n  10.0.0.0/8 \\\n  md5\nlocal all all trust", conn("local"), 5),
]


@pytest.mark.parametrize("text,c,expected", MATCH_CASES)
def test_match(text, c, expected):
    rules = parse_hba(text)
    assert matched_line(rules, c) == expected


def test_match_rejects_unknown_conn_type():
    with pytest.raises(ValueError, match="conn_type"):
        parse_hba("local all all trust").match(conn_type="tcp", tls=False, addr=None, database="d", user="u")


@pytest.mark.parametrize("addr", ["not-an-ip", "10.0.0", ""])
def test_match_rejects_bad_client_address(addr):
    rules = parse_hba("host all all 10.0.0.0/8 trust")
    if addr == "":  # no address at all: only address-less rules could match
        assert rules.match(**conn(addr=addr)) is None
    else:
        with pytest.raises(ValueError):
            rules.match(**conn(addr=addr))


def test_empty_file_matches_nothing():
    rules = parse_hba("# only comments\n\n   \t\n")
    assert rules.rules == [] and rules.errors == []
    assert rules.match(**conn("local")) is None


# --- parsed rule contents ---------------------------------------------------------------------------

PARSE_CASES = [
    ("local all all trust",
     dict(conn_type="local", method="trust", db_keywords={"all"}, databases=set(), user_all=True, users=set(),
          address=None, netmask=None, options={}, option_text="")),
    ("host a,\"B c\" x,y 10.0.0.0/8 md5",
     dict(conn_type="host", databases={"a", "B c"}, db_keywords=set(), users={"x", "y"}, user_all=False,
          address="10.0.0.0/8", net=(4, 0x0A000000, 0xFF000000))),
    ("host all all 10.1.2.3/8 md5", dict(address="10.1.2.3/8", net=(4, 0x0A000000, 0xFF000000))),
    ("host all all 10.0.0.0 255.255.0.0 md5", dict(address="10.0.0.0", netmask="255.255.0.0",
                                                    net=(4, 0x0A000000, 0xFFFF0000))),
    ("host all all ::1/128 md5", dict(net=(6, 1, (1 << 128) - 1))),
    ("host all all all md5", dict(address="all", net=None)),
    ("hostssl all all all cert map=ops", dict(method="cert", options={"map": "ops"}, option_text="map=ops")),
    ("local all all peer map=admins", dict(method="peer", options={"map": "admins"})),
    ('local all all peer map="two words"', dict(options={"map": "two words"})),
    ("local all all peer map=a map=b", dict(options={"map": "b"})),
    ("local all all peer", dict(method="peer", options={})),
    ("local all all scram-sha-256", dict(method="scram-sha-256")),
    ("local all all password", dict(method="password")),
    ("local all all reject", dict(method="reject")),
    ("local all all md5 # trailing comment", dict(method="md5", option_text="")),
    ("local all all trust#comment", dict(method="trust")),
    ('host all all all ldap ldapserver=ldap.example.net ldapprefix="cn=" ldapsuffix=", dc=example"  # c',
     dict(method="ldap",
          options={"ldapserver": "ldap.example.net", "ldapprefix": "cn=", "ldapsuffix": ", dc=example"},
          option_text='ldapserver=ldap.example.net ldapprefix="cn=" ldapsuffix=", dc=example"')),
    ('host all all all ldap ldapurl="ldap://ldap.example.net/dc=example,dc=net?uid?sub"',
     dict(options={"ldapurl": "ldap://ldap.example.net/dc=example,dc=net?uid?sub"})),
    ("local replication,all all trust", dict(db_keywords={"all", "replication"})),
    ("local sameuser all trust", dict(db_keywords={"sameuser"})),
    ('local "replication","sameuser" all trust', dict(databases={"replication", "sameuser"}, db_keywords=set())),
    ("local\tall\t\tall\ttrust", dict(method="trust", user_all=True)),
    ("  local all all trust  ", dict(method="trust")),
    ("local all all trust\r", dict(method="trust")),
]


@pytest.mark.parametrize("text,attrs", PARSE_CASES)
def test_parse_rule(text, attrs):
    rules = parse_hba(text)
    assert rules.errors == []
    assert len(rules.rules) == 1
    rule = rules.rules[0]
    assert rule.line == 1
    for name, want in attrs.items():
        got = getattr(rule, name)
        if isinstance(want, set):
            got = set(got)
        assert got == want, name


# --- lines that are skipped with an error -----------------------------------------------------------

ERROR_CASES = [
    # things PostgreSQL accepts but PgBouncer does not
    ("host all all samehost md5", 'address keyword "samehost" is not supported'),
    ("host all all samenet md5", 'address keyword "samenet" is not supported'),
    ("host all all db.example.net md5", 'host name "db.example.net" is not supported in address field (use an IP address)'),
    ("host all all .example.net md5", 'host name ".example.net" is not supported in address field (use an IP address)'),
    ("host all +staff 10.0.0.0/8 md5", 'group membership "+staff" (+group) is not supported'),
    ("local all /^app.*$ md5", 'regular expression "/^app.*$" is not supported in user field'),
    ("local /^db md5 all md5", 'regular expression "/^db" is not supported in database field'),
    ("local samerole all md5", 'database keyword "samerole" is not supported'),
    ("local samegroup all md5", 'database keyword "samegroup" is not supported'),
    ("hostgssenc all all all md5", 'connection type "hostgssenc" is not supported'),
    ("hostnogssenc all all all md5", 'connection type "hostnogssenc" is not supported'),
    ("include other.conf", '"include" directives are not supported'),
    ("include_if_exists other.conf", '"include_if_exists" directives are not supported'),
    ("include_dir conf.d", '"include_dir" directives are not supported'),
    ("local all all pam", 'authentication method "pam" is not supported'),
    ("local all all ident", 'authentication method "ident" is not supported'),
    ("host all all all gss", 'authentication method "gss" is not supported'),
    ("host all all all sspi", 'authentication method "sspi" is not supported'),
    ("host all all all radius", 'authentication method "radius" is not supported'),
    ("local all all bsd", 'authentication method "bsd" is not supported'),
    ("local all all any", 'authentication method "any" is not supported'),
    ("hostssl all all all cert clientcert=verify-full",
     'option "clientcert" is not supported for method cert (only map= is)'),
    ("hostssl all all all md5 clientcert=verify-ca", 'option "clientcert" is not supported for method md5'),
    ("local all all trust map=x", 'option "map" is not supported for method trust'),
    ("host all all fe80::1%eth0/128 md5", 'IPv6 zone id in address "fe80::1%eth0" is not supported'),
    # malformed lines
    ("LOCAL all all trust", 'invalid connection type "LOCAL"'),
    ('"local" all all trust', 'invalid connection type "local"'),
    ("local,host all all trust", "multiple values specified for connection type"),
    ("lokal all all trust", 'invalid connection type "lokal"'),
    ("local", "end of line before database specification"),
    ("local all", "end of line before user specification"),
    ("local all all", "end of line before authentication method"),
    ("local all all # trust", "end of line before authentication method"),
    ("host all all", "end of line before IP address"),
    ("host all all 10.0.0.0/8", "end of line before authentication method"),
    ("local all all TRUST", 'invalid authentication method "TRUST"'),
    ('local all all "trust"', 'invalid authentication method "trust"'),
    ("local all all krb5", 'invalid authentication method "krb5"'),
    ("local all all trust,md5", "multiple values specified for authentication method"),
    ("local all all trust extra", 'authentication option not in name=value format: "extra"'),
    ("local all all peer =x", 'authentication option not in name=value format: "=x"'),
    ("local all all peer map=", "option map needs a map name"),
    ("host all all all ldap ldaphost=x", 'unknown ldap option "ldaphost"'),
    ("host all all all ldap ldapserver", 'authentication option not in name=value format: "ldapserver"'),
    ("local a,,b all trust", "empty name in comma-separated list"),
    (",local all all trust", "empty name in comma-separated list"),
    ("local ,a all trust", "multiple values specified for connection type"),  # blank-comma continues a list
    ("local a, all", "end of line before user specification"),
    ("local a,", "end of line after comma in list"),
    ("local a,# c", "end of line after comma in list"),
    ('local "unterminated all trust', "unterminated quoted string"),
    ("host all all 10.0.0.0/33 md5", 'invalid CIDR mask in address "10.0.0.0/33"'),
    ("host all all ::/129 md5", 'invalid CIDR mask in address "::/129"'),
    ("host all all 10.0.0.0/ md5", 'invalid CIDR mask in address "10.0.0.0/"'),
    ("host all all 10.0.0.0/x md5", 'invalid CIDR mask in address "10.0.0.0/x"'),
    ("host all all 10.0.0.0/-1 md5", 'invalid CIDR mask in address "10.0.0.0/-1"'),
    ("host all all 10/8 md5", 'invalid IP address "10"'),
    ("host all all 300.1.1.1/32 md5", 'invalid IP address "300.1.1.1"'),
    ("host all all 10.0.0.0 md5", 'invalid IP mask "md5" after address "10.0.0.0"'),
    ("host all all 10.0.0.0", 'end of line before netmask for address "10.0.0.0"'),
    ("host all all 10.0.0.0/8 255.0.0.0 md5", 'invalid authentication method "255.0.0.0"'),
    ("host all all 10.0.0.0 ffff:: md5", 'IP address "10.0.0.0" and mask "ffff::" do not match in family'),
    ("host all all 10.0.0.0,10.1.0.0 255.0.0.0 md5", "multiple values specified for host address"),
    ("host all all 10.0.0.0 255.0.0.0,255.0.0.0 md5", "multiple values specified for netmask"),
    ('host all all "all" md5', 'host name "all" is not supported in address field (use an IP address)'),
    ("local @inc all trust", 'cannot read "@inc": no include reader given'),
]


@pytest.mark.parametrize("text,message", ERROR_CASES)
def test_error_line_is_skipped(text, message):
    rules = parse_hba(text + "\nlocal all all trust", filename="/etc/pgbouncer/hba.conf")
    assert rules.errors == [f"/etc/pgbouncer/hba.conf:1: {message}"]
    assert [r.line for r in rules.rules] == [2]


def test_error_keeps_following_rules_and_numbers():
    text = "local all all trust\nhost all all samehost md5\n\nhost all all 10.0.0.0/8 md5\nbogus\n"
    rules = parse_hba(text)
    assert [r.line for r in rules.rules] == [1, 4]
    assert rules.errors == ['pg_hba.conf:2: address keyword "samehost" is not supported',
                            'pg_hba.conf:5: invalid connection type "bogus"']


def test_error_on_continued_line_reports_first_line():
    rules = parse_hba("# c\nhost all \\\n all \\\n samehost md5\n")
    assert rules.errors == ['pg_hba.conf:2: address keyword "samehost" is not supported']


def test_hba_error_attributes():
    err = HbaError("f.conf", 7, "bad thing")
    assert str(err) == "f.conf:7: bad thing"
    assert (err.filename, err.line, err.message) == ("f.conf", 7, "bad thing")


# --- warnings: the rule is kept ---------------------------------------------------------------------

WARNING_CASES = [
    ("host all all 10.1.2.3/8 md5", "pg_hba.conf:1: address 10.1.2.3/8 has bits set outside the mask"),
    ("host all all 10.1.0.0 255.0.0.0 md5", "pg_hba.conf:1: address 10.1.0.0 255.0.0.0 has bits set"),
    ("host all all 0.0.0.0/0 peer", "pg_hba.conf:1: peer authentication only works on local"),
    ("local all all cert", "pg_hba.conf:1: cert authentication needs TLS, which local connections never"),
    ("host all all all cert", "pg_hba.conf:1: cert authentication needs TLS; on host lines"),
    ("hostnossl all all all cert", "pg_hba.conf:1: cert authentication needs TLS; on hostnossl lines"),
]


@pytest.mark.parametrize("text,prefix", WARNING_CASES)
def test_warning_keeps_rule(text, prefix):
    rules = parse_hba(text)
    assert rules.errors == []
    assert len(rules.rules) == 1
    assert len(rules.warnings) == 1 and rules.warnings[0].startswith(prefix)


@pytest.mark.parametrize("text", ["hostssl all all all cert", "local all all peer", "host all all 10.0.0.0/8 md5"])
def test_no_warning(text):
    assert parse_hba(text).warnings == []


# --- @file includes ---------------------------------------------------------------------------------

INCLUDE_FILES = {
    "users.txt": "alice, bob\n# comment line\ncarol  # trailing\n\"Dan Smith\"\n",
    "dbs.txt": "app1 app2\nall\n",
    "sub/nested.txt": "eve @deeper\n",
    "sub/deeper": "frank\n",
    "/abs/list": "gina\n",
    "loop": "@loop\n",
    "bad": '"unterminated\n',
    "kw": "replication\n",
}


def fake_reader(name: str) -> str:
    try:
        return INCLUDE_FILES[name]
    except KeyError:
        raise FileNotFoundError(2, "No such file or directory", name) from None


INCLUDE_MATCH_CASES = [
    ("local all @users.txt trust", dict(user="alice"), True),
    ("local all @users.txt trust", dict(user="bob"), True),
    ("local all @users.txt trust", dict(user="carol"), True),
    ("local all @users.txt trust", dict(user="Dan Smith"), True),
    ("local all @users.txt trust", dict(user="comment"), False),
    ("local all @users.txt trust", dict(user="trailing"), False),
    ("local all @users.txt,zed trust", dict(user="zed"), True),
    ("local all @sub/nested.txt trust", dict(user="eve"), True),
    ("local all @sub/nested.txt trust", dict(user="frank"), True),  # nested, relative to sub/
    ("local all @/abs/list trust", dict(user="gina"), True),
    ("local @dbs.txt u trust", dict(database="app2"), True),
    ("local @dbs.txt u trust", dict(database="anything"), True),  # keyword all inside the file
    ("local @kw u trust", dict(database="x", replication=True), True),
    ('local all "@users.txt" trust', dict(user="@users.txt"), True),
    ('local all "@users.txt" trust', dict(user="alice"), False),
]


@pytest.mark.parametrize("text,overrides,expect", INCLUDE_MATCH_CASES)
def test_include_match(text, overrides, expect):
    rules = parse_hba(text, read_include=fake_reader)
    assert rules.errors == []
    c = dict(conn_type="local", tls=False, addr=None, database="db", user="u")
    c.update(overrides)
    assert (rules.match(**c) is not None) is expect


INCLUDE_ERROR_CASES = [
    ("local all @nope trust", 'could not read included file "@nope": No such file or directory'),
    ("local @loop all trust", '@file nesting too deep at "@loop"'),
    ("local all @bad trust", 'in included file "@bad": unterminated quoted string'),
]


@pytest.mark.parametrize("text,message", INCLUDE_ERROR_CASES)
def test_include_errors(text, message):
    rules = parse_hba(text, read_include=fake_reader)
    assert rules.rules == []
    assert rules.errors == [f"pg_hba.conf:1: {message}"]


# --- golden file ------------------------------------------------------------------------------------


def rule_as_dict(rule) -> dict:
    return {
        "line": rule.line, "conn_type": rule.conn_type,
        "databases": sorted(rule.databases), "db_keywords": sorted(rule.db_keywords),
        "users": sorted(rule.users), "user_all": rule.user_all,
        "address": rule.address, "netmask": rule.netmask,
        "method": rule.method, "options": rule.options, "option_text": rule.option_text,
    }


def parse_golden() -> HbaRules:
    def reader(name):
        return read_data(name)

    return parse_hba(read_data("realistic.conf"), filename="realistic.conf", read_include=reader)


def test_golden_parse():
    rules = parse_golden()
    expected = json.loads(read_data("realistic.expected.json"))
    got = {"rules": [rule_as_dict(r) for r in rules.rules], "errors": rules.errors, "warnings": rules.warnings}
    assert got == expected


GOLDEN_MATCH_CASES = [
    (conn("local", db="pgbouncer", user="admin"), (5, "peer")),
    (conn("local", db="postgres", user="postgres"), (6, "peer")),
    (conn("local", db="alice", user="alice"), (7, "md5")),
    (conn("local", db="app", user="alice"), None),
    (conn(addr="192.0.2.10", user="replicator", tls=True, repl=True), (10, "scram-sha-256")),
    (conn(addr="192.0.2.10", user="replicator", tls=False, repl=True), (11, "reject")),
    (conn(addr="127.0.0.1", user="replicator", repl=True), (11, "reject")),
    (conn(addr="10.20.1.1", db="App Reports", user="app admin", tls=True), (14, "scram-sha-256")),
    (conn(addr="10.20.1.1", db="app", user="batch", tls=True), (14, "scram-sha-256")),
    (conn(addr="10.20.1.1", db="app", user="app_ro", tls=False), (15, "reject")),
    (conn(addr="10.20.1.1", db="other", user="app_ro", tls=False), (39, "reject")),
    (conn(addr="198.51.100.7", db="all", user="batch"), (16, "md5")),
    (conn(addr="198.51.100.7", db="app", user="batch"), (39, "reject")),
    (conn(addr="2001:db8::7", db="warehouse", user="carol"), (17, "scram-sha-256")),
    (conn(addr="2001:db8::7", db="warehouse", user="mallory"), None),
    (conn(addr="203.0.113.5", db="x", user="y", tls=True), (21, "cert")),
    (conn(addr="::ffff:172.20.0.1", db="x", user="y"), (24, "ldap")),
    (conn(addr="127.0.0.1", db="x", user="y"), (37, "trust")),
    (conn(addr="::ffff:127.0.0.1", db="x", user="y"), (37, "trust")),
    (conn(addr="::1", db="x", user="y"), (38, "trust")),
    (conn(addr="8.8.8.8", db="x", user="y"), (39, "reject")),
    (conn(addr="2001:db9::1", db="x", user="y"), None),
]


@pytest.mark.parametrize("c,expected", GOLDEN_MATCH_CASES)
def test_golden_match(c, expected):
    rule = parse_golden().match(**c)
    assert (None if rule is None else (rule.line, rule.method)) == expected


def test_load_hba_file_reads_includes_relative_to_its_directory():
    path = os.path.join(DATA, "realistic.conf")
    rules = load_hba_file(path)
    golden = parse_golden()
    assert [rule_as_dict(r) for r in rules.rules] == [rule_as_dict(r) for r in golden.rules]
    assert rules.errors == [e.replace("realistic.conf", path, 1) for e in golden.errors]


def test_load_hba_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hba_file(str(tmp_path / "nope.conf"))


def test_load_hba_file_absolute_include(tmp_path):
    (tmp_path / "names").write_text("zoe\n")
    hba = tmp_path / "hba.conf"
    hba.write_text(f"local all @{tmp_path / 'names'} trust\n")
    rules = load_hba_file(str(hba))
    assert rules.errors == []
    assert rules.rules[0].users == frozenset({"zoe"})


# --- ident maps -------------------------------------------------------------------------------------

IDENT_CASES = [
    ("m root postgres", "m", "root", "postgres", True),
    ("m root postgres", "m", "root", "other", False),
    ("m root postgres", "m", "Root", "postgres", False),
    ("m root postgres", "n", "root", "postgres", False),
    ("m root postgres", "M", "root", "postgres", False),
    ("m root postgres\nm root app", "m", "root", "app", True),
    ("m root postgres\nn bob app", "n", "root", "app", False),
    ("m robot all", "m", "robot", "anyone", True),
    ("m robot all", "m", "other", "anyone", False),
    ('m robot "all"', "m", "robot", "anyone", False),
    ('m robot "all"', "m", "robot", "all", True),
    ('m "CN with space" db_user', "m", "CN with space", "db_user", True),
    ('"my map" a b', "my map", "a", "b", True),
    ("m\ta\t\tb   # comment", "m", "a", "b", True),
    ("# m a b", "m", "a", "b", False),
    ("m a \\\n b", "m", "a", "b", True),
    ('m "/notregex" b', "m", "/notregex", "b", True),
    ('m a "+notgroup"', "m", "a", "+notgroup", True),
    ("", "m", "a", "b", False),
]


@pytest.mark.parametrize("text,mapname,sysuser,dbuser,expect", IDENT_CASES)
def test_ident_check(text, mapname, sysuser, dbuser, expect):
    im = parse_ident(text)
    assert im.errors == []
    assert im.check(mapname, sysuser, dbuser) is expect


IDENT_ERROR_CASES = [
    ("m /^(.*)$ \\1", 'regular expression "/^(.*)$" is not supported in ident maps'),
    ("m a +admins", 'group membership "+admins" (+group) is not supported in ident maps'),
    ("m a /^x$", 'regular expression "/^x$" is not supported in ident maps'),
    ("include other.conf", '"include" directives are not supported'),
    ("include_dir conf.d", '"include_dir" directives are not supported'),
    ("include_if_exists x", '"include_if_exists" directives are not supported'),
    ("m a", "missing entry: expected map name, system user name and database user name"),
    ("m", "missing entry: expected map name, system user name and database user name"),
    ("m a b c", "extra fields after database user name"),
    ("m a,b c", "multiple values specified for system user"),
    ("m,n a c", "multiple values specified for map name"),
    ("m a b,c", "multiple values specified for database user"),
    ('m "a b', "unterminated quoted string"),
]


@pytest.mark.parametrize("text,message", IDENT_ERROR_CASES)
def test_ident_errors(text, message):
    im = parse_ident(text + "\nok x y", filename="ident.conf")
    assert im.errors == [f"ident.conf:1: {message}"]
    assert im.check("ok", "x", "y")
    assert len(im.entries) == 1


@pytest.mark.parametrize("mapname,expect", [("admins", True), ("ops", True), ("broken", False), ("x", False)])
def test_ident_has_map(mapname, expect):
    assert load_ident_file(os.path.join(DATA, "ident.conf")).has_map(mapname) is expect


IDENT_GOLDEN_CASES = [
    ("admins", "root", "pgbouncer", True),
    ("admins", "postgres", "postgres", True),
    ("admins", "root", "postgres", False),
    ("ops", "Jane Doe", "jane", True),
    ("ops", "ops-robot", "whoever", True),
    ("ops", "ci", "whoever", False),
    ("ops", "ci", "all", True),
    ("ops", "root", "admins", False),
    ("admins", "ops-robot", "pgbouncer", False),
]


@pytest.mark.parametrize("mapname,sysuser,dbuser,expect", IDENT_GOLDEN_CASES)
def test_ident_golden(mapname, sysuser, dbuser, expect):
    im = load_ident_file(os.path.join(DATA, "ident.conf"))
    assert im.check(mapname, sysuser, dbuser) is expect


def test_ident_golden_errors():
    path = os.path.join(DATA, "ident.conf")
    assert load_ident_file(path).errors == [
        f'{path}:8: regular expression "/^(.*)$" is not supported in ident maps',
        f'{path}:9: group membership "+admins" (+group) is not supported in ident maps',
        f'{path}:10: "include" directives are not supported',
        f"{path}:11: missing entry: expected map name, system user name and database user name",
    ]
