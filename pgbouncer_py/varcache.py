"""Tracked session parameters ("varcache"): which ones follow a client from server to server, and the SET
that makes a freshly linked server agree with the client. Pure functions: no I/O, no clock.

Clients that logged in with the same values share one read-only `Shared` mapping (share()); a client copies it
into a `Values` of its own on its first change (client.Client.set_var). A Shared never changes, so its one
version number keeps the (server params version, client vars version) checks of covered() valid for every client
that holds it."""

import itertools

# always tracked, in the order the SETs are sent; track_extra_parameters adds more (IntervalStyle by default)
TRACKED_PARAMS = ("client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name")

_cache: tuple = (None, None, TRACKED_PARAMS)
_versions = itertools.count(1)

# PostgreSQL reports a parameter (ParameterStatus) under one spelling: these three with capitals, any other in
# lower case. Tracked names are kept in that spelling, so that whatever case track_extra_parameters or a client
# used (intervalstyle, INTERVALSTYLE), the client's value and the server's report land under one key.
_PG_SPELLING = {n.lower(): n for n in ("DateStyle", "IntervalStyle", "TimeZone")}


def canonical_name(name: str) -> str:
    low = name.lower()
    return _PG_SPELLING.get(low, low)


class Values(dict):
    """Parameter name -> value (a client's vars, a server's params) that takes a new, never reused version number
    on every change: a (server params version, client vars version) pair checked once stays checked."""

    __slots__ = ("version",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = next(_versions)

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, value)
        self.version = next(_versions)

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self.version = next(_versions)

    def __ior__(self, other):
        dict.update(self, other)
        self.version = next(_versions)
        return self

    def update(self, *args, **kwargs):
        dict.update(self, *args, **kwargs)
        self.version = next(_versions)

    def setdefault(self, key, default=None):
        self.version = next(_versions)
        return dict.setdefault(self, key, default)

    def pop(self, *args):
        self.version = next(_versions)
        return dict.pop(self, *args)

    def popitem(self):
        self.version = next(_versions)
        return dict.popitem(self)

    def clear(self):
        dict.clear(self)
        self.version = next(_versions)


class Shared(Values):
    """Values that many clients hold at once (share()): read-only, every change raises TypeError. Copy it into a
    Values (which takes a new version) before changing anything."""

    __slots__ = ()

    def _read_only(self, *args, **kwargs):
        raise TypeError("varcache.Shared is read-only: copy it into a Values first")

    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = _read_only


EMPTY = Shared()        # a client that has set nothing yet

# contents (the items as a tuple) -> the Shared holding them; bounded: when full it starts over (clients keep
# what they hold, only later logins get new Shared objects)
_shared: dict[tuple, Shared] = {}
SHARED_MAX = 4096


def share(values: dict[str, str]) -> Shared:
    """The Shared with these contents: one object (and one version) for every client whose values are the same."""
    if values.__class__ is Shared:
        return values
    if not values:
        return EMPTY
    key = tuple(values.items())
    s = _shared.get(key)
    if s is None:
        if len(_shared) >= SHARED_MAX:
            _shared.clear()
        s = _shared[key] = Shared(values)
    return s


def covered(client_vars: Values, server) -> bool:
    """Every value the client set is what the server has (client_vars a subset of server.params). HOT: each
    server remembers which client vars versions it has matched since its own params last changed."""
    params = server.params
    if params.version != server.vars_checked_at:
        server.vars_checked_at = params.version
        server.vars_checked.clear()
    elif client_vars.version in server.vars_checked:
        return True
    if not client_vars.items() <= params.items():
        return False
    checked = server.vars_checked
    if len(checked) >= 4096:        # bounded: many distinct clients only cost a re-check
        checked.clear()
    checked.add(client_vars.version)
    return True


def tracked_params(cfg) -> tuple[str, ...]:
    """The tracked parameter names for this configuration (computed once per config object)."""
    global _cache
    if _cache[0] is cfg and _cache[1] is not None:
        return _cache[2]
    extra = []
    for p in cfg.list_setting("track_extra_parameters"):
        name = canonical_name(p)
        if name not in TRACKED_PARAMS and name not in extra:
            extra.append(name)
    names = TRACKED_PARAMS + tuple(extra)
    _cache = (cfg, True, names)
    return names


def quote_literal(value: str) -> str:
    """A SQL string literal that reads the same whatever the server's standard_conforming_strings is."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """Parameter names are identifiers; only quote the unusual ones."""
    if name.replace("_", "a").replace(".", "a").isalnum():
        return name
    return '"' + name.replace('"', '""') + '"'


def set_statements(names, client_vars: dict[str, str], server_params: dict[str, str]) -> str:
    """The SETs (one string, "" when none is needed) making the server's parameters match the client's."""
    out = []
    for name in names:
        want = client_vars.get(name)
        if want is not None and server_params.get(name) != want:
            out.append(f"SET {quote_ident(name)}={quote_literal(want)};")
    return "".join(out)


def adopt_canonical(names, client_vars: dict[str, str], server_params: dict[str, str]) -> dict[str, str]:
    """After the SETs succeeded, remember the values as the server spelled them (e.g. 'German, DMY' for
    'german'), so the next server whose ParameterStatus says the same needs no SET. Returns the client's values:
    client_vars changed in place, or, when client_vars is a Shared and a value differs, a Values copy."""
    for name in names:
        if name in client_vars and name in server_params:
            value = server_params[name]
            if client_vars[name] != value:
                if client_vars.__class__ is Shared:
                    client_vars = Values(client_vars)
                client_vars[name] = value
    return client_vars
