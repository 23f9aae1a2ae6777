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
