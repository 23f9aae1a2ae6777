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


# every mutator of a mapping: Values take a new version on each, a Shared refuses each
MUTATORS = {
    "set": lambda d: d.__setitem__("TimeZone", "UTC"),
    "del": lambda d: d.__delitem__("DateStyle"),
    "update": lambda d: d.update(TimeZone="UTC"),
    "ior": lambda d: d.__ior__({"TimeZone": "UTC"}),
    "setdefault": lambda d: d.setdefault("IntervalStyle", "postgres"),
    "pop": lambda d: d.pop("DateStyle"),
    "popitem": lambda d: d.popitem(),
    "clear": lambda d: d.clear(),
}


@pytest.mark.parametrize("change", list(MUTATORS.values()), ids=list(MUTATORS))
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


# --- clients that logged in with the same values share one read-only mapping (varcache.Shared) ---

def test_share_gives_one_object_per_contents():
    a = varcache.share({"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
    b = varcache.share(varcache.Values({"TimeZone": "UTC", "DateStyle": "ISO, MDY"}))
    assert a is b and isinstance(a, varcache.Shared) and a == {"TimeZone": "UTC", "DateStyle": "ISO, MDY"}
    assert varcache.share(a) is a
    assert varcache.share({}) is varcache.EMPTY
    c = varcache.share({"TimeZone": "Europe/Paris", "DateStyle": "ISO, MDY"})
    assert c is not a and c.version != a.version


def test_share_is_bounded(monkeypatch):
    monkeypatch.setattr(varcache, "_shared", {})
    monkeypatch.setattr(varcache, "SHARED_MAX", 3)
    held = [varcache.share({"application_name": str(i)}) for i in range(10)]
    assert len(varcache._shared) <= 3
    assert [dict(h) for h in held] == [{"application_name": str(i)} for i in range(10)]   # holders keep theirs


@pytest.mark.parametrize("change", list(MUTATORS.values()), ids=list(MUTATORS))
def test_shared_is_read_only(change):
    s = varcache.share({"DateStyle": "ISO, MDY", "TimeZone": "Asia/Tokyo"})
    version = s.version
    with pytest.raises(TypeError):
        change(s)
    assert s == {"DateStyle": "ISO, MDY", "TimeZone": "Asia/Tokyo"} and s.version == version


def test_copy_of_shared_takes_its_own_version():
    s = varcache.share({"DateStyle": "ISO, MDY"})
    mine = varcache.Values(s)
    assert mine == s and mine.version != s.version
    mine["DateStyle"] = "German, DMY"
    assert s == {"DateStyle": "ISO, MDY"}


def test_covered_check_of_a_shared_holds_for_every_holder():
    server = _Server({"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
    first = varcache.share({"TimeZone": "UTC"})
    assert varcache.covered(first, server)
    second = varcache.share({"TimeZone": "UTC"})                  # another client with the same values
    assert second is first and second.version in server.vars_checked
    server.params["TimeZone"] = "Europe/Paris"
    assert not varcache.covered(second, server)


def test_adopt_canonical_copies_a_shared_only_when_a_value_differs():
    s = varcache.share({"DateStyle": "german"})
    same = varcache.adopt_canonical(varcache.TRACKED_PARAMS, s, {"DateStyle": "german"})
    assert same is s
    mine = varcache.adopt_canonical(varcache.TRACKED_PARAMS, s, {"DateStyle": "German, DMY"})
    assert mine is not s and not isinstance(mine, varcache.Shared)
    assert mine == {"DateStyle": "German, DMY"} and s == {"DateStyle": "german"}
    assert mine.version != s.version


def test_client_set_var_copies_on_first_change():
    from pgbouncer_py.client import Client
    a, b = Client(), Client()
    assert a.vars is varcache.EMPTY and b.vars is varcache.EMPTY
    shared = varcache.share({"TimeZone": "UTC", "application_name": "app"})
    a.vars = b.vars = shared
    a.set_var("TimeZone", "UTC")                                  # the value it already has: still shared
    assert a.vars is shared
    a.set_var("application_name", "other")
    assert a.vars == {"TimeZone": "UTC", "application_name": "other"} and not isinstance(a.vars, varcache.Shared)
    assert b.vars is shared and shared == {"TimeZone": "UTC", "application_name": "app"}
    version = a.vars.version
    a.set_var("TimeZone", "Europe/Paris")                         # its own copy now: changed in place
    assert a.vars.version != version and b.vars["TimeZone"] == "UTC"
