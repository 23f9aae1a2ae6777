"""Tracked session parameters ("varcache"): which ones follow a client from server to server, and the SET
that makes a freshly linked server agree with the client. Pure functions: no I/O, no clock."""

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


def adopt_canonical(names, client_vars: dict[str, str], server_params: dict[str, str]) -> None:
    """After the SETs succeeded, remember the values as the server spelled them (e.g. 'German, DMY' for
    'german'), so the next server whose ParameterStatus says the same needs no SET."""
    for name in names:
        if name in client_vars and name in server_params:
            client_vars[name] = server_params[name]
