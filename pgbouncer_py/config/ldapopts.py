"""LDAP options of the ldap auth method (an auth_hba_file rule, auth_ldap_options) checked as PostgreSQL's
pg_hba.conf checks them, the LDAP URL they may contain, and the libldap client settings (ldap.conf). Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["LdapConfig", "LdapOptionError", "LdapUrl", "client_settings", "ldap_config", "parse_ldap_conf",
           "parse_ldap_url"]

# option names PostgreSQL knows for method ldap
OPTION_NAMES = (
    "ldapserver", "ldapport", "ldapscheme", "ldaptls", "ldapprefix", "ldapsuffix", "ldapbasedn",
    "ldapbinddn", "ldapbindpasswd", "ldapsearchattribute", "ldapsearchfilter", "ldapurl",
)
DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}
# RFC 4516 scope names as libldap reads them; the subordinate scope has no equivalent in ldap3
_SCOPES = {"base": "base", "one": "one", "onelevel": "one", "sub": "sub", "subtree": "sub"}
_UNSUPPORTED_SCOPES = ("subord", "subordinate", "children")
_KNOWN_SCHEMES = ("ldap", "ldaps", "ldapi", "cldap")
# characters PostgreSQL refuses in a user name that goes into a search filter
_FILTER_SPECIALS = frozenset("*()\\/")

# PostgreSQL's texts for the combinations it refuses
MIXED_MODES = ("cannot use ldapbasedn, ldapbinddn, ldapbindpasswd, ldapsearchattribute, ldapsearchfilter, "
               "or ldapurl together with ldapprefix")
NO_MODE = 'authentication method "ldap" requires argument "ldapbasedn", "ldapprefix", or "ldapsuffix" to be set'
ATTRIBUTE_AND_FILTER = "cannot use ldapsearchattribute together with ldapsearchfilter"


class LdapOptionError(ValueError):
    """An ldap option (or combination) that cannot be used; str() says why, in PostgreSQL's words."""


@dataclass(frozen=True)
class LdapUrl:
    """The parts of an RFC 4516 URL that the ldap method uses (as libldap's ldap_url_parse leaves them)."""

    scheme: str
    host: str | None
    port: int
    dn: str | None
    attribute: str | None
    scope: str | None           # None when the URL names none
    filter: str | None


def _atoi(text: str) -> int:
    """C atoi: leading blanks, a sign, digits up to the first other character; 0 if none."""
    m = re.match(r"[ \t\n\r\f\v]*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def parse_ldap_url(url: str) -> LdapUrl:
    """ldap[s]://host[:port]/basedn[?attribute[?scope[?filter[?extensions]]]]; LdapOptionError if unusable.

    Like libldap: the scheme is case-insensitive, a missing port is the scheme's default, empty parts are unset,
    %XX escapes are decoded, extensions are ignored."""
    def bad(reason: str) -> LdapOptionError:
        return LdapOptionError(f'could not parse LDAP URL "{url}": {reason}')

    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _KNOWN_SCHEMES:
        raise bad("bad URL scheme")
    if scheme not in DEFAULT_PORTS:
        raise LdapOptionError(f"unsupported LDAP URL scheme: {scheme}")
    if any(c.isspace() for c in rest):
        raise bad("blank in URL")
    hostport, slash, path = rest.partition("/")
    host: str | None = hostport
    port = DEFAULT_PORTS[scheme]
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise bad("bad IPv6 address")
        host, after = hostport[1:end], hostport[end + 1:]
        if after and not after.startswith(":"):
            raise bad("bad host")
        portpart = after[1:] if after else None
    else:
        host, colon, portpart = hostport.partition(":")
        if not colon:
            portpart = None
    if portpart is not None and portpart != "":
        if not portpart.isdigit() or not 0 < int(portpart) < 65536:
            raise bad(f'bad port "{portpart}"')
        port = int(portpart)
    host = unquote(host) if host else None
    if not slash:
        return LdapUrl(scheme, host, port, None, None, None, None)
    parts = path.split("?", 4)
    parts += [""] * (5 - len(parts))
    dn, attrs, scope_text, filt = (unquote(p) for p in parts[:4])
    attribute = attrs.split(",")[0] if attrs else None
    scope = None
    if scope_text:
        low = scope_text.lower()
        if low in _UNSUPPORTED_SCOPES:
            raise bad(f'scope "{scope_text}" is not supported by pgbouncer-py')
        if low not in _SCOPES:
            raise bad(f'bad scope "{scope_text}"')
        scope = _SCOPES[low]
    return LdapUrl(scheme, host, port, dn, attribute or None, scope, filt or None)


@dataclass(frozen=True)
class LdapConfig:
    """A checked set of ldap options: simple bind (prefix/suffix) or search+bind (basedn ...; the search
    covers the subtree under basedn)."""

    servers: tuple[str, ...] = ()
    port: int = 0                       # 0: the scheme's default port
    scheme: str = "ldap"
    tls: bool = False                   # StartTLS (ldaptls=1)
    prefix: str | None = None
    suffix: str | None = None
    basedn: str | None = None
    binddn: str | None = None
    bindpasswd: str | None = None
    searchattribute: str | None = None
    searchfilter: str | None = None

    @property
    def search_mode(self) -> bool:
        """True for search+bind, False for a simple bind of prefix + user name + suffix."""
        return self.prefix is None and self.suffix is None

    @property
    def server_text(self) -> str:
        """The ldapserver value as PostgreSQL's log lines quote it."""
        return " ".join(self.servers)

    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.scheme]

    def bind_dn(self, user: str) -> str:
        """The DN a simple bind uses for `user`."""
        return f"{self.prefix or ''}{user}{self.suffix or ''}"

    def search_filter(self, user: str) -> str:
        """The filter that finds `user`: ldapsearchfilter with $username replaced, or (attribute=user)."""
        if self.searchfilter is not None:
            return self.searchfilter.replace("$username", user)
        return f"({self.searchattribute or 'uid'}={user})"

    @staticmethod
    def user_name_problem(user: str) -> str | None:
        """Why `user` cannot go into a search filter (PostgreSQL refuses these characters), or None."""
        if any(c in _FILTER_SPECIALS for c in user):
            return "invalid character in user name for LDAP authentication"
        return None


def ldap_config(options: Iterable[tuple[str, str]] | Mapping[str, str]) -> LdapConfig:
    """Check (name, value) options in the order written (a later one overrides an earlier one, ldapurl sets
    several) and return the config; LdapOptionError with PostgreSQL's text for what it refuses."""
    items = options.items() if isinstance(options, Mapping) else options
    v: dict[str, object] = {}
    for name, value in items:
        if name == "ldapurl":
            url = parse_ldap_url(value)
            v["scheme"] = url.scheme
            if url.host is not None:
                v["servers"] = url.host
            v["port"] = url.port
            if url.dn is not None:
                v["basedn"] = url.dn
            if url.attribute is not None:
                v["searchattribute"] = url.attribute
            # the URL's scope is checked but not used: PostgreSQL 15 always searches the subtree (seen in
            # slapd's log: scope=2 for ?base, ?one and none), although its documentation says otherwise
            if url.filter is not None:
                v["searchfilter"] = url.filter
        elif name == "ldaptls":
            v["tls"] = value == "1"
        elif name == "ldapscheme":
            if value not in DEFAULT_PORTS:
                raise LdapOptionError(f'invalid ldapscheme value: "{value}"')
            v["scheme"] = value
        elif name == "ldapport":
            port = _atoi(value)
            if not 0 < port < 65536:      # PostgreSQL refuses 0 (atoi of anything not a number)
                raise LdapOptionError(f'invalid LDAP port number: "{value}"')
            v["port"] = port
        elif name == "ldapserver":
            v["servers"] = value
        elif name in OPTION_NAMES:
            v[name[4:]] = value
        else:
            raise LdapOptionError(f'unknown ldap option "{name}"')
    if v.get("prefix") is not None or v.get("suffix") is not None:
        if any(v.get(k) is not None for k in ("basedn", "binddn", "bindpasswd", "searchattribute", "searchfilter")):
            raise LdapOptionError(MIXED_MODES)
    elif v.get("basedn") is None:
        raise LdapOptionError(NO_MODE)
    if v.get("searchattribute") is not None and v.get("searchfilter") is not None:
        raise LdapOptionError(ATTRIBUTE_AND_FILTER)
    servers = v.pop("servers", "")
    return LdapConfig(servers=tuple(str(servers).split()), **v)  # type: ignore[arg-type]


# --- libldap's client settings -----------------------------------------------------------------------

# the ldap.conf keys we honour, and the environment variables that override them (libldap's LDAP<key>)
CLIENT_KEYS = ("TLS_CACERT", "TLS_CACERTDIR", "TLS_REQCERT", "NETWORK_TIMEOUT", "TIMEOUT")
DEFAULT_TIMEOUT = 10.0
_REQCERT = ("never", "allow", "try", "demand", "hard")


@dataclass(frozen=True)
class ClientSettings:
    """How we reach a directory: TLS trust and timeouts (seconds), from ldap.conf and LDAP* variables."""

    ca_file: str | None = None
    ca_dir: str | None = None
    verify: bool = True                 # TLS_REQCERT demand/hard/try (the default); never/allow do not check
    network_timeout: float = DEFAULT_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    problems: tuple[str, ...] = ()      # settings that were ignored, and why


def parse_ldap_conf(text: str) -> dict[str, str]:
    """ldap.conf lines `KEYWORD value` (keyword case-insensitive, # comments): the keys we honour."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, *value = line.split(None, 1)
        key = key.upper()
        if key in CLIENT_KEYS:
            out[key] = value[0].strip() if value else ""
    return out


def client_settings(conf_text: str | None, environ: Mapping[str, str]) -> ClientSettings:
    """Settings from ldap.conf text (None: no file) overridden by LDAP<KEY> variables, as libldap reads them
    (LDAPNOINIT turns both off)."""
    values: dict[str, str] = {}
    if "LDAPNOINIT" not in environ:
        if conf_text is not None:
            values.update(parse_ldap_conf(conf_text))
        for key in CLIENT_KEYS:
            if f"LDAP{key}" in environ:
                values[key] = environ[f"LDAP{key}"]
    problems: list[str] = []
    verify = True
    reqcert = values.get("TLS_REQCERT", "demand").strip().lower()
    if reqcert in _REQCERT:
        verify = reqcert not in ("never", "allow")
    else:
        problems.append(f'TLS_REQCERT "{reqcert}" is not one of {", ".join(_REQCERT)}: using demand')
    timeouts = {}
    for key in ("NETWORK_TIMEOUT", "TIMEOUT"):
        timeouts[key] = DEFAULT_TIMEOUT
        if key in values:
            try:
                seconds = float(values[key])
            except ValueError:
                seconds = -1.0
            if seconds > 0 and seconds < 1e6:
                timeouts[key] = seconds
            else:
                problems.append(f'{key} "{values[key]}" is not a positive number of seconds: using '
                                f"{DEFAULT_TIMEOUT:g}")
    return ClientSettings(ca_file=values.get("TLS_CACERT") or None, ca_dir=values.get("TLS_CACERTDIR") or None,
                          verify=verify, network_timeout=timeouts["NETWORK_TIMEOUT"], timeout=timeouts["TIMEOUT"],
                          problems=tuple(problems))
