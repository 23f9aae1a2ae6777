"""LDAP options of the ldap auth method (config/ldapopts.py, hba.parse_ldap_options): PostgreSQL's rules for what
an option line means and which combinations it refuses, the LDAP URL, and libldap's client settings."""

from __future__ import annotations

import pytest

from pgbouncer_py.config import ldapopts
from pgbouncer_py.config.hba import parse_hba, parse_ldap_options
from pgbouncer_py.config.ldapopts import LdapConfig, LdapOptionError, client_settings, parse_ldap_url

D = "dc=example,dc=net"

VALID = [
    # simple bind
    ('ldapserver=ldap.example.net ldapprefix="cn=" ldapsuffix=", dc=example, dc=net"',
     dict(servers=("ldap.example.net",), prefix="cn=", suffix=", dc=example, dc=net", search_mode=False,
          port=389)),
    ("ldapserver=h ldapprefix=uid=", dict(prefix="uid=", suffix=None, search_mode=False)),
    ('ldapserver=h ldapsuffix="@example.net"', dict(prefix=None, suffix="@example.net", search_mode=False)),
    ('ldapserver=h ldapprefix=""', dict(prefix="", search_mode=False)),
    ("ldapserver=h ldapprefix=x ldapport=1389 ldaptls=1", dict(port=1389, tls=True)),
    ("ldapserver=h ldapprefix=x ldaptls=0", dict(tls=False)),
    ("ldapserver=h ldapprefix=x ldaptls=yes", dict(tls=False)),          # only "1" turns it on
    ("ldapserver=h ldapprefix=x ldapscheme=ldaps", dict(scheme="ldaps", port=636)),
    ("ldapserver=h ldapprefix=x ldapport=389abc", dict(port=389)),         # atoi
    ('ldapserver="h1 h2  h3" ldapprefix=x', dict(servers=("h1", "h2", "h3"), server_text="h1 h2 h3")),
    # search+bind
    (f'ldapserver=h ldapbasedn="{D}"', dict(basedn=D, search_mode=True, binddn=None)),
    (f'ldapserver=h ldapbasedn="{D}" ldapbinddn="cn=svc,{D}" ldapbindpasswd=s3cret ldapsearchattribute=cn',
     dict(binddn=f"cn=svc,{D}", bindpasswd="s3cret", searchattribute="cn")),
    (f'ldapserver=h ldapbasedn="{D}" ldapsearchfilter="(|(uid=$username)(mail=$username))"',
     dict(searchfilter="(|(uid=$username)(mail=$username))")),
    # ldapurl sets scheme, server, port, base DN, attribute and filter; its scope is checked, not used (the
    # search covers the subtree, as PostgreSQL 15 does whatever the URL says)
    (f'ldapurl="ldap://ldap.example.net/{D}?uid?sub"',
     dict(servers=("ldap.example.net",), port=389, basedn=D, searchattribute="uid")),
    (f'ldapurl="ldap://ldap.example.net/{D}?uid"', dict(searchattribute="uid")),
    (f'ldapurl="ldap://ldap.example.net/{D}"', dict(searchattribute=None)),
    (f'ldapurl="LDAPS://h:1636/{D}??one"', dict(scheme="ldaps", port=1636, searchattribute=None)),
    (f'ldapurl="ldaps://h/{D}"', dict(port=636)),
    (f'ldapurl="ldap://h/{D}??sub?(mail=$username)"', dict(searchfilter="(mail=$username)", searchattribute=None)),
    ('ldapurl="ldap://[::1]:1389/ou=a%20b,dc=x?cn,mail?subtree"',
     dict(servers=("::1",), port=1389, basedn="ou=a b,dc=x", searchattribute="cn")),
    (f'ldapurl="ldap:///{D}"', dict(servers=(), basedn=D)),
    # later options override earlier ones, the URL included
    (f'ldapurl="ldap://a/{D}" ldapserver=b ldapport=2', dict(servers=("b",), port=2)),
    (f'ldapserver=b ldapport=2 ldapurl="ldap://a/{D}"', dict(servers=("a",), port=389)),
    ("ldapserver=h ldapprefix=x ldapprefix=y", dict(prefix="y")),
    ('ldapurl="ldap://h" ldapprefix=uid=', dict(servers=("h",), prefix="uid=", basedn=None)),
]


@pytest.mark.parametrize("text,expected", VALID)
def test_valid_options(text, expected):
    conf = parse_ldap_options(text)
    for attr, value in expected.items():
        got = conf.effective_port() if attr == "port" else getattr(conf, attr)
        assert got == value, attr


INVALID = [
    ("", ldapopts.NO_MODE),
    ("ldapserver=h", ldapopts.NO_MODE),
    ("ldapserver=h ldapbinddn=x ldapbindpasswd=y", ldapopts.NO_MODE),
    (f'ldapserver=h ldapprefix=x ldapbasedn="{D}"', ldapopts.MIXED_MODES),
    ("ldapserver=h ldapsuffix=x ldapbinddn=y", ldapopts.MIXED_MODES),
    ("ldapserver=h ldapsuffix=x ldapbindpasswd=y", ldapopts.MIXED_MODES),
    ("ldapserver=h ldapprefix=x ldapsearchattribute=uid", ldapopts.MIXED_MODES),
    ("ldapserver=h ldapprefix=x ldapsearchfilter=(uid=$username)", ldapopts.MIXED_MODES),
    (f'ldapprefix=x ldapurl="ldap://h/{D}"', ldapopts.MIXED_MODES),     # the URL's base DN
    (f'ldapserver=h ldapbasedn="{D}" ldapsearchattribute=cn ldapsearchfilter="(uid=$username)"',
     ldapopts.ATTRIBUTE_AND_FILTER),
    (f'ldapurl="ldap://h/{D}?uid" ldapsearchfilter="(cn=$username)"', ldapopts.ATTRIBUTE_AND_FILTER),
    ("ldapserver=h ldapprefix=x ldapport=0", 'invalid LDAP port number: "0"'),
    ("ldapserver=h ldapprefix=x ldapport=ldap", 'invalid LDAP port number: "ldap"'),
    ("ldapserver=h ldapprefix=x ldapport=70000", 'invalid LDAP port number: "70000"'),
    ("ldapserver=h ldapprefix=x ldapscheme=ldapi", 'invalid ldapscheme value: "ldapi"'),
    ("ldapserver=h ldapprefix=x ldapscheme=LDAPS", 'invalid ldapscheme value: "LDAPS"'),
    ('ldapurl="http://h/dc=x"', 'could not parse LDAP URL "http://h/dc=x": bad URL scheme'),
    ('ldapurl="h/dc=x"', 'could not parse LDAP URL "h/dc=x": bad URL scheme'),
    ('ldapurl="ldapi:///dc=x"', "unsupported LDAP URL scheme: ldapi"),
    ('ldapurl="ldap://h:99999/dc=x"', 'could not parse LDAP URL "ldap://h:99999/dc=x": bad port "99999"'),
    ('ldapurl="ldap://h/dc=x?uid?deep"', 'could not parse LDAP URL "ldap://h/dc=x?uid?deep": bad scope "deep"'),
    ('ldapurl="ldap://h/dc=x?uid?children"', "is not supported by pgbouncer-py"),
    ('ldapurl="ldap://[::1/dc=x"', "bad IPv6 address"),
    # the hba syntax: a comma separates options, so a DN with commas must be quoted (as in pg_hba.conf)
    (f"ldapserver=h ldapbasedn={D}", 'unknown ldap option "dc"'),
    ("ldapserver=h ldaphost=x", 'unknown ldap option "ldaphost"'),
    ("ldapserver=h ldapprefix", 'authentication option not in name=value format: "ldapprefix"'),
    ("ldapserver=h ldapprefix=x # comment", 'unquoted "#"'),
    ('ldapserver=h ldapprefix="x', "unterminated quoted string"),
]


@pytest.mark.parametrize("text,message", INVALID)
def test_invalid_options(text, message):
    with pytest.raises(ValueError) as e:
        parse_ldap_options(text)
    assert message in str(e.value)


@pytest.mark.parametrize("text,message", [t for t in INVALID if "#" not in t[0]])
def test_hba_rule_with_invalid_options_is_an_error_of_its_line(text, message):
    rules = parse_hba(f"host all all all trust\nhost all all all ldap {text}\n", filename="hba")
    assert [r.line for r in rules.rules] == [1]
    assert len(rules.errors) == 1 and rules.errors[0].startswith("hba:2: ") and message in rules.errors[0]


def test_hba_rule_keeps_checked_options():
    rules = parse_hba(f'host all all all ldap ldapserver=h ldapbasedn="{D}" ldapsearchattribute=cn\n'
                      "host all all all md5\n")
    assert rules.errors == [] and rules.warnings == []
    assert rules.rules[0].ldap == LdapConfig(servers=("h",), basedn=D, searchattribute="cn")
    assert rules.rules[1].ldap is None


def test_hba_rule_without_server_warns():
    rules = parse_hba(f'host all all all ldap ldapbasedn="{D}"\n', filename="hba")
    assert rules.errors == [] and len(rules.rules) == 1
    assert rules.warnings == ["hba:1: ldap rule without ldapserver: finding LDAP servers through DNS SRV records "
                              "is not supported; this rule rejects its logins"]


def test_quoted_hash_in_a_value():
    assert parse_ldap_options('ldapserver=h ldapbasedn=x ldapbindpasswd="p#ss"').bindpasswd == "p#ss"


@pytest.mark.parametrize("conf,user,dn,filt", [
    (LdapConfig(prefix="uid=", suffix=",ou=people"), "alice", "uid=alice,ou=people", None),
    (LdapConfig(suffix="@corp"), "bob", "bob@corp", None),
    (LdapConfig(basedn=D), "alice", None, "(uid=alice)"),
    (LdapConfig(basedn=D, searchattribute="cn"), "alice", None, "(cn=alice)"),
    (LdapConfig(basedn=D, searchfilter="(|(uid=$username)(mail=$username))"), "al", None,
     "(|(uid=al)(mail=al))"),
])
def test_dn_and_filter(conf, user, dn, filt):
    if dn is not None:
        assert not conf.search_mode and conf.bind_dn(user) == dn
    else:
        assert conf.search_mode and conf.search_filter(user) == filt


@pytest.mark.parametrize("user,ok", [
    ("alice", True), ("a.b-c_d@x", True), ("ali ce", True), ("a*", False), ("a(b", False), ("a)b", False),
    ("a\\b", False), ("a/b", False),
])
def test_user_names_a_search_refuses(user, ok):
    assert (LdapConfig.user_name_problem(user) is None) == ok


def test_url_parts():
    assert parse_ldap_url("ldap://h:1389/o=x?uid?sub?(a=b)?ext") == ldapopts.LdapUrl(
        "ldap", "h", 1389, "o=x", "uid", "sub", "(a=b)")
    assert parse_ldap_url("ldaps://h") == ldapopts.LdapUrl("ldaps", "h", 636, None, None, None, None)
    assert parse_ldap_url("ldap://h/").dn == ""


@pytest.mark.parametrize("conf_text,env,expected", [
    (None, {}, dict(ca_file=None, verify=True, network_timeout=10.0, timeout=10.0, problems=())),
    ("# comment\nTLS_CACERT /etc/ssl/ca.pem\ntls_reqcert never\nURI ldap://x\n", {},
     dict(ca_file="/etc/ssl/ca.pem", verify=False)),
    ("TLS_CACERT\t/a b/ca.pem\nTLS_CACERTDIR /etc/ssl/certs\n", {}, dict(ca_file="/a b/ca.pem",
                                                                          ca_dir="/etc/ssl/certs")),
    ("TLS_CACERT /file\nTLS_REQCERT allow\n", {"LDAPTLS_CACERT": "/env", "LDAPTLS_REQCERT": "demand"},
     dict(ca_file="/env", verify=True)),
    ("TLS_REQCERT try\nNETWORK_TIMEOUT 3\nTIMEOUT 2.5\n", {}, dict(verify=True, network_timeout=3.0, timeout=2.5)),
    (None, {"LDAPNETWORK_TIMEOUT": "1", "LDAPTIMEOUT": "4"}, dict(network_timeout=1.0, timeout=4.0)),
    ("TLS_CACERT /file\n", {"LDAPNOINIT": "1", "LDAPTIMEOUT": "4"}, dict(ca_file=None, timeout=10.0)),
    ("TIMEOUT -1\nNETWORK_TIMEOUT soon\nTLS_REQCERT maybe\n", {},
     dict(timeout=10.0, network_timeout=10.0, verify=True,
          problems=('TLS_REQCERT "maybe" is not one of never, allow, try, demand, hard: using demand',
                    'NETWORK_TIMEOUT "soon" is not a positive number of seconds: using 10',
                    'TIMEOUT "-1" is not a positive number of seconds: using 10'))),
])
def test_client_settings(conf_text, env, expected):
    settings = client_settings(conf_text, env)
    for attr, value in expected.items():
        assert getattr(settings, attr) == value, attr


def test_option_error_is_a_value_error():
    assert issubclass(LdapOptionError, ValueError)
