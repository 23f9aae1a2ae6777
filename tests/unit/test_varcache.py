"""varcache: the SETs that make a server match a client, quoting, and adopting PostgreSQL's canonical spelling."""

import pytest

from pgbouncer_py import varcache


class Cfg:
    def __init__(self, extra: str):
        self.extra = extra

    def list_setting(self, name):
        assert name == "track_extra_parameters"
        return [p.strip() for p in self.extra.split(",") if p.strip()]


@pytest.mark.parametrize(("extra", "expected"), [
    ("", varcache.TRACKED_PARAMS),
    ("IntervalStyle", varcache.TRACKED_PARAMS + ("IntervalStyle",)),
    ("IntervalStyle, search_path", varcache.TRACKED_PARAMS + ("IntervalStyle", "search_path")),
    ("TimeZone", varcache.TRACKED_PARAMS),                       # already tracked: not twice
])
def test_tracked_params(extra, expected):
    assert varcache.tracked_params(Cfg(extra)) == expected


@pytest.mark.parametrize(("client", "server", "expected"), [
    ({}, {"DateStyle": "ISO, MDY"}, ""),
    ({"DateStyle": "ISO, MDY"}, {"DateStyle": "ISO, MDY"}, ""),
    ({"DateStyle": "German, DMY"}, {"DateStyle": "ISO, MDY"}, "SET DateStyle='German, DMY';"),
    ({"application_name": "it's"}, {}, "SET application_name='it''s';"),
    ({"TimeZone": "UTC", "client_encoding": "LATIN1"}, {"TimeZone": "UTC", "client_encoding": "UTF8"},
     "SET client_encoding='LATIN1';"),
    ({"client_encoding": "LATIN1", "TimeZone": "Europe/Paris"}, {},
     "SET client_encoding='LATIN1';SET TimeZone='Europe/Paris';"),   # in TRACKED_PARAMS order
    ({"my.param": "x"}, {}, "SET my.param='x';"),
    ({"odd-name": "x"}, {}, 'SET "odd-name"=\'x\';'),
])
def test_set_statements(client, server, expected):
    names = varcache.TRACKED_PARAMS + ("my.param", "odd-name")
    assert varcache.set_statements(names, client, server) == expected


@pytest.mark.parametrize(("client", "server", "expected"), [
    ({"DateStyle": "german"}, {"DateStyle": "German, DMY"}, {"DateStyle": "German, DMY"}),
    ({"TimeZone": "europe/paris"}, {"TimeZone": "Europe/Paris", "DateStyle": "ISO"},
     {"TimeZone": "Europe/Paris"}),                               # only what the client tracks
    ({"server_version": "x"}, {"server_version": "15"}, {"server_version": "x"}),   # not tracked
])
def test_adopt_canonical(client, server, expected):
    varcache.adopt_canonical(varcache.TRACKED_PARAMS, client, server)
    assert client == expected


@pytest.mark.parametrize(("value", "quoted"), [
    ("a", "'a'"), ("", "''"), ("o'k", "'o''k'"),
    ("\\", "E'\\\\'"), ("a\\'b", "E'a\\\\''b'"),      # backslashes: E'' reads the same either way
])
def test_quote_literal(value, quoted):
    assert varcache.quote_literal(value) == quoted


@pytest.mark.parametrize("change", [
    lambda d: d.__setitem__("TimeZone", "UTC"),
    lambda d: d.__delitem__("DateStyle"),
    lambda d: d.update(TimeZone="UTC"),
    lambda d: d.__ior__({"TimeZone": "UTC"}),
    lambda d: d.setdefault("IntervalStyle", "postgres"),
    lambda d: d.pop("DateStyle"),
    lambda d: d.popitem(),
    lambda d: d.clear(),
], ids=["set", "del", "update", "ior", "setdefault", "pop", "popitem", "clear"])
def test_values_take_a_new_version_on_every_change(change):
    d = varcache.Values({"DateStyle": "ISO, MDY"})
    other = varcache.Values({"DateStyle": "ISO, MDY"})
    before = d.version
    change(d)
    assert d.version > before and d.version != other.version     # never reused, not shared between dicts


class _Server:
    def __init__(self, params):
        self.params = varcache.Values(params)
        self.vars_checked_at = 0
        self.vars_checked = set()


def test_covered_remembers_only_what_still_holds():
    server = _Server({"TimeZone": "UTC", "DateStyle": "ISO, MDY", "server_version": "15"})
    client = varcache.Values({"TimeZone": "UTC"})
    assert varcache.covered(client, server)
    assert client.version in server.vars_checked
    assert varcache.covered(client, server)                      # from the remembered check
    client["TimeZone"] = "Europe/Paris"                          # the client SETs something: checked again
    assert not varcache.covered(client, server)
    server.params["TimeZone"] = "Europe/Paris"                   # the server follows: a new params version
    assert varcache.covered(client, server)
    server.params["DateStyle"] = "German, DMY"                   # a value the client did not set
    assert varcache.covered(client, server)
    client["DateStyle"] = "ISO, MDY"
    assert not varcache.covered(client, server)                  # a failed check is never remembered
    assert not varcache.covered(client, server)


def test_covered_forgets_when_many_clients_were_checked():
    server = _Server({"TimeZone": "UTC"})
    clients = [varcache.Values({"TimeZone": "UTC"}) for _ in range(5000)]
    assert all(varcache.covered(c, server) for c in clients)
    assert len(server.vars_checked) <= 4096
    assert varcache.covered(clients[0], server)
