"""auth_hba_file and auth_ident_file: parse PgBouncer's subset of pg_hba.conf / pg_ident.conf and match
connections against the rules. Pure: text in, rules out; only the load_* helpers read files.
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from pgbouncer_py.config import ldapopts

__all__ = [
    "HbaError",
    "HbaRule",
    "HbaRules",
    "IdentMap",
    "load_hba_file",
    "load_ident_file",
    "parse_hba",
    "parse_ident",
    "parse_ldap_options",
]

CONN_TYPES = ("local", "host", "hostssl", "hostnossl")
METHODS = ("trust", "reject", "md5", "password", "peer", "cert", "scram-sha-256", "ldap")
# PostgreSQL accepts these, PgBouncer does not: named in the error so the operator knows why.
_PG_ONLY_CONN_TYPES = ("hostgssenc", "hostnogssenc")
_PG_ONLY_METHODS = ("ident", "pam", "gss", "sspi", "radius", "bsd", "any")
_INCLUDE_DIRECTIVES = ("include", "include_if_exists", "include_dir")
# Option names PostgreSQL knows for method ldap (config/ldapopts.py checks their values and combinations).
LDAP_OPTIONS = ldapopts.OPTION_NAMES
_MAP_METHODS = ("peer", "cert")
_MAX_INCLUDE_DEPTH = 10


class HbaError(Exception):
    """A line of an hba or ident file that cannot be used; str() is 'file:line: what is wrong'."""

    def __init__(self, filename: str, line: int, message: str) -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


# --- tokenizer -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    text: str
    quoted: bool  # any part was in double quotes: keywords and @file do not apply

    def is_kw(self, word: str) -> bool:
        return not self.quoted and self.text == word


@dataclass
class _Field:
    tokens: list[_Token]
    start: int  # offset in the logical line, to recover raw option text


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash-continued lines (as PostgreSQL 15 does); each keeps its first line number."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for num, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            first = num
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        out.append((first, "".join(pending)))
        pending = []
    if pending:
        out.append((first, "".join(pending)))
    return out


def _split_fields(line: str) -> tuple[list[_Field], int]:
    """Split a logical line into whitespace-separated fields of comma-separated tokens.

    Returns the fields and the offset where the content ends (a '#' comment or end of line).
    Raises ValueError with a message for malformed quoting or lists.
    """
    fields: list[_Field] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t\r\f\v":
            i += 1
        if i >= n or line[i] == "#":
            return fields, i
        start = i
        tokens: list[_Token] = []
        while True:
            buf: list[str] = []
            quoted = False
            while i < n:
                c = line[i]
                if c == '"':
                    quoted = True
                    i += 1
                    while True:
                        if i >= n:
                            raise ValueError("unterminated quoted string")
                        if line[i] == '"':
                            if i + 1 < n and line[i + 1] == '"':
                                buf.append('"')
                                i += 2
                                continue
                            i += 1
                            break
                        buf.append(line[i])
                        i += 1
                    continue
                if c in " \t\r\f\v,#":
                    break
                buf.append(c)
                i += 1
            if not buf and not quoted:
                raise ValueError("empty name in comma-separated list")
            tokens.append(_Token("".join(buf), quoted))
            # a comma (with optional blanks around it) continues the list
            j = i
            while j < n and line[j] in " \t\r\f\v":
                j += 1
            if j < n and line[j] == ",":
                i = j + 1
                while i < n and line[i] in " \t\r\f\v":
                    i += 1
                if i >= n or line[i] in ",#":
                    raise ValueError("end of line after comma in list" if i >= n or line[i] == "#"
                                     else "empty name in comma-separated list")
                continue
            break
        fields.append(_Field(tokens, start))


def _words(text: str) -> list[_Token]:
    """Tokens of an @file: names separated by blanks, commas or newlines; '#' comments."""
    out: list[_Token] = []
    for _num, line in _logical_lines(text):
        fields, _end = _split_fields(line)
        for f in fields:
            out.extend(f.tokens)
    return out


def _single(fld: _Field, what: str) -> _Token:
    if len(fld.tokens) != 1:
        raise ValueError(f"multiple values specified for {what}")
    return fld.tokens[0]


# --- hba rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HbaRule:
    """One usable hba line. `net` is None for `local` lines and for address `all`."""

    line: int
    conn_type: str
    method: str
    options: dict[str, str] = field(default_factory=dict)
    databases: frozenset[str] = frozenset()
    db_keywords: frozenset[str] = frozenset()  # subset of {'all', 'sameuser', 'replication'}
    users: frozenset[str] = frozenset()
    user_all: bool = False
    address: str | None = None  # as written: 'all', '10.0.0.0/8', '10.0.0.0' (with netmask)
    netmask: str | None = None  # the separate netmask column, if used
    net: tuple[int, int, int] | None = None  # (ip version, address int, mask int)
    option_text: str = ""  # everything after the method, as written (for ldap)
    ldap: ldapopts.LdapConfig | None = None  # method ldap: its checked options

    def matches_database(self, database: str, user: str, replication: bool) -> bool:
        if replication:
            return "replication" in self.db_keywords
        if "all" in self.db_keywords:
            return True
        if "sameuser" in self.db_keywords and database == user:
            return True
        return database in self.databases

    def matches_user(self, user: str) -> bool:
        return self.user_all or user in self.users

    def matches_address(self, candidates: list[tuple[int, int]]) -> bool:
        """candidates: (ip version, address int) forms of the client address (see _client_candidates)."""
        if self.net is None:
            return True
        version, addr, mask = self.net
        for v, a in candidates:
            if v == version and (a & mask) == addr:
                return True
            # an IPv6 rule inside ::ffff:0:0/96 also covers the IPv4 addresses it maps
            if v == 4 and version == 6 and mask >> 32 == _V6_TOP96 and addr >> 32 == _MAPPED_PREFIX:
                if (a & mask & 0xFFFFFFFF) == (addr & 0xFFFFFFFF):
                    return True
        return False


_V6_TOP96 = (1 << 96) - 1
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96, the top 96 bits of an IPv4-mapped IPv6 address


def _client_candidates(addr: str) -> list[tuple[int, int]]:
    """(version, int) forms of a client address: an IPv4-mapped IPv6 client (::ffff:a.b.c.d) is also
    its IPv4 address, so it matches IPv4 rules; a zone id (%eth0) is ignored. ValueError if not an IP.
    """
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    out = [(ip.version, int(ip))]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        out.insert(0, (4, int(ip.ipv4_mapped)))
    return out


class HbaRules:
    """Parsed hba file: usable rules in file order, plus messages for lines that were skipped."""

    def __init__(self, rules: list[HbaRule], errors: list[str], warnings: list[str] | None = None) -> None:
        self.rules = rules
        self.errors = errors
        self.warnings = warnings if warnings is not None else []

    def match(self, *, conn_type: str, tls: bool, addr: str | None, database: str, user: str,
              replication: bool = False) -> HbaRule | None:
        """First rule that fits the connection, or None (the caller rejects the login).

        conn_type is 'local' (unix socket) or 'host' (TCP; addr is the client IP text). replication is
        True for a physical replication connection: only `replication` rules match it, never `all`.
        """
        if conn_type not in ("local", "host"):
            raise ValueError(f"conn_type must be 'local' or 'host', not {conn_type!r}")
        candidates = _client_candidates(addr) if conn_type == "host" and addr else []
        for rule in self.rules:
            if rule.conn_type == "local":
                if conn_type != "local":
                    continue
            else:
                if conn_type != "host":
                    continue
                if rule.conn_type == "hostssl" and not tls:
                    continue
                if rule.conn_type == "hostnossl" and tls:
                    continue
                if rule.net is not None and not rule.matches_address(candidates):
                    continue
            if not rule.matches_database(database, user, replication):
                continue
            if not rule.matches_user(user):
                continue
            return rule
        return None


ReadInclude = Callable[[str], str]


def _option_pairs(fields: list[_Field], method: str) -> list[tuple[str, str]]:
    """The name=value options after a method, in the order written; ValueError says what is wrong."""
    pairs: list[tuple[str, str]] = []
    for fld in fields:
        for tok in fld.tokens:
            name, eq, value = tok.text.partition("=")
            if not eq or not name:
                raise ValueError(f'authentication option not in name=value format: "{tok.text}"')
            if method == "ldap":
                if name not in LDAP_OPTIONS:
                    raise ValueError(f'unknown ldap option "{name}"')
            elif method in _MAP_METHODS:
                if name != "map":
                    raise ValueError(f'option "{name}" is not supported for method {method} (only map= is)')
                if not value:
                    raise ValueError("option map needs a map name")
            else:
                raise ValueError(f'option "{name}" is not supported for method {method}')
            pairs.append((name, value))
    return pairs


def parse_ldap_options(text: str) -> ldapopts.LdapConfig:
    """auth_ldap_options: the options of an hba ldap rule, written the same way (name=value, "quoted" values);
    ValueError (LdapOptionError for the values) says what is wrong."""
    fields, end = _split_fields(text)
    if end < len(text):
        raise ValueError('unquoted "#" in auth_ldap_options (put a value that contains it in double quotes)')
    return ldapopts.ldap_config(_option_pairs(fields, "ldap"))


class _HbaParser:
    def __init__(self, filename: str, read_include: ReadInclude | None) -> None:
        self.filename = filename
        self.read_include = read_include
        self.warnings: list[str] = []

    def err(self, line: int, msg: str) -> HbaError:
        return HbaError(self.filename, line, msg)

    def expand(self, tokens: list[_Token], line: int, depth: int = 0, base: str = "") -> list[_Token]:
        """Replace unquoted @file tokens by the names in that file (nested files allowed)."""
        out: list[_Token] = []
        for tok in tokens:
            if tok.quoted or not tok.text.startswith("@") or tok.text == "@":
                out.append(tok)
                continue
            name = tok.text[1:]
            if base and not posixpath.isabs(name):
                name = posixpath.join(posixpath.dirname(base), name)
            if depth >= _MAX_INCLUDE_DEPTH:
                raise self.err(line, f'@file nesting too deep at "@{name}"')
            if self.read_include is None:
                raise self.err(line, f'cannot read "@{name}": no include reader given')
            try:
                text = self.read_include(name)
            except OSError as e:
                raise self.err(line, f'could not read included file "@{name}": {e.strerror or e}') from None
            try:
                words = _words(text)
            except ValueError as e:
                raise self.err(line, f'in included file "@{name}": {e}') from None
            out.extend(self.expand(words, line, depth + 1, name))
        return out

    def databases(self, fld: _Field, line: int) -> tuple[frozenset[str], frozenset[str]]:
        names: set[str] = set()
        kws: set[str] = set()
        for tok in self.expand(fld.tokens, line):
            if not tok.quoted and tok.text in ("all", "sameuser", "replication"):
                kws.add(tok.text)
            elif not tok.quoted and tok.text in ("samerole", "samegroup"):
                raise self.err(line, f'database keyword "{tok.text}" is not supported')
            elif not tok.quoted and tok.text.startswith("/"):
                raise self.err(line, f'regular expression "{tok.text}" is not supported in database field')
            else:
                names.add(tok.text)
        return frozenset(names), frozenset(kws)

    def users(self, fld: _Field, line: int) -> tuple[frozenset[str], bool]:
        names: set[str] = set()
        user_all = False
        for tok in self.expand(fld.tokens, line):
            if tok.is_kw("all"):
                user_all = True
            elif not tok.quoted and tok.text.startswith("+"):
                raise self.err(line, f'group membership "{tok.text}" (+group) is not supported')
            elif not tok.quoted and tok.text.startswith("/"):
                raise self.err(line, f'regular expression "{tok.text}" is not supported in user field')
            else:
                names.add(tok.text)
        return frozenset(names), user_all

    def address(self, fields: list[_Field], i: int, line: int
                ) -> tuple[int, str, str | None, tuple[int, int, int] | None]:
        """Parse the address (and maybe netmask) at fields[i]; returns next index, text, mask, net."""
        if i >= len(fields):
            raise self.err(line, "end of line before IP address")
        try:
            tok = _single(fields[i], "host address")
        except ValueError as e:
            raise self.err(line, str(e)) from None
        text = tok.text
        if tok.is_kw("all"):
            return i + 1, text, None, None
        if tok.is_kw("samehost") or tok.is_kw("samenet"):
            raise self.err(line, f'address keyword "{text}" is not supported')
        if "/" in text:
            host, _, bits = text.partition("/")
            ip = _parse_ip(host)
            if ip is None:
                raise self.err(line, _bad_ip(host))
            maxbits = 32 if ip.version == 4 else 128
            if not bits.isdigit() or int(bits) > maxbits:
                raise self.err(line, f'invalid CIDR mask in address "{text}"')
            mask = ((1 << maxbits) - 1) ^ ((1 << (maxbits - int(bits))) - 1)
            self._check_host_bits(line, ip, mask, text)
            return i + 1, text, None, (ip.version, int(ip) & mask, mask)
        ip = _parse_ip(text)
        if ip is None:
            raise self.err(line, _bad_ip(text))
        if i + 1 >= len(fields):
            raise self.err(line, f'end of line before netmask for address "{text}"')
        try:
            mtok = _single(fields[i + 1], "netmask")
        except ValueError as e:
            raise self.err(line, str(e)) from None
        mip = _parse_ip(mtok.text)
        if mip is None:
            raise self.err(line, f'invalid IP mask "{mtok.text}" after address "{text}"')
        if mip.version != ip.version:
            raise self.err(line, f'IP address "{text}" and mask "{mtok.text}" do not match in family')
        mask = int(mip)
        self._check_host_bits(line, ip, mask, f"{text} {mtok.text}")
        return i + 2, text, mtok.text, (ip.version, int(ip) & mask, mask)

    def _check_host_bits(self, line: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                         mask: int, shown: str) -> None:
        if int(ip) & ~mask:
            self.warnings.append(f"{self.filename}:{line}: address {shown} has bits set outside the mask;"
                                 " they are ignored")

    def options(self, fields: list[_Field], line: int, method: str) -> list[tuple[str, str]]:
        try:
            return _option_pairs(fields, method)
        except ValueError as e:
            raise self.err(line, str(e)) from None

    def rule(self, num: int, line: str) -> HbaRule | None:
        try:
            fields, end = _split_fields(line)
        except ValueError as e:
            raise self.err(num, str(e)) from None
        if not fields:
            return None
        try:
            ctok = _single(fields[0], "connection type")
        except ValueError as e:
            raise self.err(num, str(e)) from None
        ctype = ctok.text
        if ctok.quoted or ctype not in CONN_TYPES:
            if ctype in _INCLUDE_DIRECTIVES:
                raise self.err(num, f'"{ctype}" directives are not supported')
            if ctype in _PG_ONLY_CONN_TYPES:
                raise self.err(num, f'connection type "{ctype}" is not supported')
            raise self.err(num, f'invalid connection type "{ctype}"')
        if len(fields) < 2:
            raise self.err(num, "end of line before database specification")
        if len(fields) < 3:
            raise self.err(num, "end of line before user specification")
        databases, db_kw = self.databases(fields[1], num)
        users, user_all = self.users(fields[2], num)
        i = 3
        address = netmask = None
        net = None
        if ctype != "local":
            i, address, netmask, net = self.address(fields, i, num)
        if i >= len(fields):
            raise self.err(num, "end of line before authentication method")
        try:
            mtok = _single(fields[i], "authentication method")
        except ValueError as e:
            raise self.err(num, str(e)) from None
        method = mtok.text
        if mtok.quoted or method not in METHODS:
            if method in _PG_ONLY_METHODS:
                raise self.err(num, f'authentication method "{method}" is not supported')
            raise self.err(num, f'invalid authentication method "{method}"')
        opt_fields = fields[i + 1:]
        pairs = self.options(opt_fields, num, method)
        ldap = None
        if method == "ldap":
            try:
                ldap = ldapopts.ldap_config(pairs)
            except ldapopts.LdapOptionError as e:
                raise self.err(num, str(e)) from None
            if not ldap.servers:
                self.warnings.append(f"{self.filename}:{num}: ldap rule without ldapserver: finding LDAP servers"
                                     " through DNS SRV records is not supported; this rule rejects its logins")
        option_text = line[opt_fields[0].start:end].strip() if opt_fields else ""
        if method == "peer" and ctype != "local":
            self.warnings.append(f"{self.filename}:{num}: peer authentication only works on local"
                                 " (unix socket) connections; this rule rejects its logins")
        if method == "cert" and ctype == "local":
            self.warnings.append(f"{self.filename}:{num}: cert authentication needs TLS, which local"
                                 " connections never have; this rule rejects its logins")
        elif method == "cert" and ctype != "hostssl":
            self.warnings.append(f"{self.filename}:{num}: cert authentication needs TLS; on {ctype}"
                                 " lines it rejects logins made without TLS")
        return HbaRule(line=num, conn_type=ctype, method=method, options=dict(pairs), databases=databases,
                       db_keywords=db_kw, users=users, user_all=user_all, address=address,
                       netmask=netmask, net=net, option_text=option_text, ldap=ldap)


def _bad_ip(text: str) -> str:
    if "%" in text:
        return f'IPv6 zone id in address "{text}" is not supported'
    if text and all(c.isdigit() or c in ".:" for c in text):
        return f'invalid IP address "{text}"'
    return f'host name "{text}" is not supported in address field (use an IP address)'


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # zone ids are not supported
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_hba(text: str, *, filename: str = "pg_hba.conf", read_include: ReadInclude | None = None) -> HbaRules:
    """Parse hba text. Bad lines are skipped and described in .errors; the rest keep file order.

    read_include(name) returns the text of an @file; name is as written (relative to the hba file's
    directory unless absolute; names inside an @file are made relative to that file's directory).
    """
    parser = _HbaParser(filename, read_include)
    rules: list[HbaRule] = []
    errors: list[str] = []
    for num, line in _logical_lines(text):
        try:
            rule = parser.rule(num, line)
        except HbaError as e:
            errors.append(str(e))
            continue
        if rule is not None:
            rules.append(rule)
    return HbaRules(rules, errors, parser.warnings)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def load_hba_file(path: str) -> HbaRules:
    """Read and parse an hba file; @files are read relative to its directory. OSError if unreadable."""
    base = posixpath.dirname(path)

    def read_include(name: str) -> str:
        return _read_text(name if posixpath.isabs(name) else posixpath.join(base, name))

    return parse_hba(_read_text(path), filename=path, read_include=read_include)


# --- ident maps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentEntry:
    line: int
    mapname: str
    system_user: str
    db_user: str | None  # None = keyword all (any database user)


class IdentMap:
    """auth_ident_file: maps a system user name (peer uid name, certificate CN) to database users."""

    def __init__(self, entries: list[IdentEntry], errors: list[str]) -> None:
        self.entries = entries
        self.errors = errors
        self._maps: dict[str, list[IdentEntry]] = {}
        for e in entries:
            self._maps.setdefault(e.mapname, []).append(e)

    def has_map(self, mapname: str) -> bool:
        return mapname in self._maps

    def check(self, mapname: str, system_user: str, db_user: str) -> bool:
        """True if map `mapname` lets `system_user` log in as `db_user` (exact, case-sensitive)."""
        for e in self._maps.get(mapname, ()):
            if e.system_user == system_user and (e.db_user is None or e.db_user == db_user):
                return True
        return False


def _ident_entry(filename: str, num: int, line: str) -> IdentEntry | None:
    def err(msg: str) -> HbaError:
        return HbaError(filename, num, msg)

    try:
        fields, _end = _split_fields(line)
    except ValueError as e:
        raise err(str(e)) from None
    if not fields:
        return None
    first = fields[0].tokens[0]
    if not first.quoted and first.text in _INCLUDE_DIRECTIVES:
        raise err(f'"{first.text}" directives are not supported')
    if len(fields) < 3:
        raise err("missing entry: expected map name, system user name and database user name")
    if len(fields) > 3:
        raise err("extra fields after database user name")
    try:
        mapname, sysuser, dbuser = (_single(f, what) for f, what in
                                    zip(fields, ("map name", "system user", "database user"), strict=True))
    except ValueError as e:
        raise err(str(e)) from None
    if not sysuser.quoted and sysuser.text.startswith("/"):
        raise err(f'regular expression "{sysuser.text}" is not supported in ident maps')
    if not dbuser.quoted and dbuser.text.startswith("+"):
        raise err(f'group membership "{dbuser.text}" (+group) is not supported in ident maps')
    if not dbuser.quoted and dbuser.text.startswith("/"):
        raise err(f'regular expression "{dbuser.text}" is not supported in ident maps')
    db = None if dbuser.is_kw("all") else dbuser.text
    return IdentEntry(num, mapname.text, sysuser.text, db)


def parse_ident(text: str, *, filename: str = "pg_ident.conf") -> IdentMap:
    """Parse ident map text: lines `mapname system-user db-user`; bad lines go to .errors."""
    entries: list[IdentEntry] = []
    errors: list[str] = []
    for num, line in _logical_lines(text):
        try:
            entry = _ident_entry(filename, num, line)
        except HbaError as e:
            errors.append(str(e))
            continue
        if entry is not None:
            entries.append(entry)
    return IdentMap(entries, errors)


def load_ident_file(path: str) -> IdentMap:
    """Read and parse an ident map file. OSError if unreadable."""
    return parse_ident(_read_text(path), filename=path)
