"""The table of every [pgbouncer] setting: type, default as SHOW CONFIG prints it, reloadability, docs.

SHOW CONFIG, the man page, the sample ini and RELOAD all read PARAMS; nothing else lists settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

# Kinds:
#   'str'   free text, '' when unset
#   'int'   C strtol(..., 0) semantics (0x.., 0.. octal, sign), stored in a 32-bit int like the C code
#   'bool'  parsed exactly like 'int' (the real binary accepts any integer, not yes/no); 0/1 by convention
#   'mode'  an int usually written in octal (unix_socket_mode); SHOW CONFIG prints it in decimal
#   'time'  seconds as a float (strtod, fractional allowed, negative rejected), kept at microsecond
#           precision and printed with C's %g
#   'enum'  one of `choices`, matched case-insensitively, stored in canonical lower case
KINDS = ("str", "int", "bool", "mode", "time", "enum")

_INT_RE = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
_DEC_FLOAT_RE = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
_HEX_FLOAT_RE = re.compile(r"\s*[+-]?0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)([pP][+-]?\d+)?\Z")
_LONG_MAX = 2**63 - 1
_USEC = 1_000_000


def parse_c_int(text: str) -> int:
    """strtol(text, &end, 0) with *end required to be NUL, then stored into a C int (wraps at 32 bits)."""
    m = _INT_RE.match(text)
    if not m:
        raise ValueError(text)
    sign, digits = m.groups()
    if digits[:2] in ("0x", "0X"):
        v = int(digits, 16)
    elif digits.startswith("0"):
        v = int(digits, 8) if len(digits) > 1 else 0
    else:
        v = int(digits)
    if sign == "-":
        v = -v
    v = max(-_LONG_MAX - 1, min(_LONG_MAX, v))  # strtol clamps to the long range
    v &= 0xFFFFFFFF  # ... and the C code keeps the low 32 bits
    return v - 2**32 if v >= 2**31 else v


def parse_c_time(text: str) -> float:
    """strtod seconds -> float seconds truncated to whole microseconds; negative or non-finite rejected."""
    if _DEC_FLOAT_RE.match(text):
        v = float(text)
    elif _HEX_FLOAT_RE.match(text):
        t = text.strip()
        neg = t.startswith("-")
        t = t.lstrip("+-")
        if "p" not in t.lower():
            t += "p0"
        v = float.fromhex(t)
        v = -v if neg else v
    else:
        raise ValueError(text)
    if not math.isfinite(v) or v < 0 or v * _USEC > _LONG_MAX:
        raise ValueError(text)
    return int(v * _USEC) / _USEC


def format_time(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: str  # exactly as SHOW CONFIG prints the default column
    reloadable: bool = True
    choices: tuple[str, ...] = ()
    doc: str = ""
    validator: Callable[[object], str | None] | None = None   # parsed value -> PgBouncer's complaint, or None

    def problem(self, value) -> str | None:
        """Why a parsed value is refused (load, RELOAD and SET log it), or None."""
        return self.validator(value) if self.validator is not None else None

    def parse(self, text: str):
        """Config-file / SET text -> python value; ValueError on a bad value."""
        k = self.kind
        if k == "str":
            return text
        if k in ("int", "bool", "mode"):
            return parse_c_int(text)
        if k == "time":
            return parse_c_time(text)
        if k == "enum":
            low = text.lower()
            if low in self.choices:
                return low
            raise ValueError(text)
        raise AssertionError(f"unknown kind {k}")

    def format(self, value) -> str:
        """Python value -> text as SHOW CONFIG prints the value column."""
        if self.kind == "time":
            return format_time(value)
        if self.kind in ("int", "bool", "mode"):
            return str(int(value))
        return str(value)

    @property
    def default_value(self):
        """The value a setting has when the file does not mention it."""
        if self.default == "" and self.kind != "str":
            return 0  # a C NULL default (verbose): shown empty, holds 0
        return self.parse(self.default)


POOL_MODES = ("session", "transaction", "statement")
AUTH_TYPES = ("any", "trust", "plain", "md5", "cert", "hba", "scram-sha-256", "pam", "ldap")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_AUTH_QUERY = (
    "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
    "FROM pg_authid WHERE rolname=$1 AND rolcanlogin"
)

_NR = False  # readability marker for no-reload rows


def _not_the_console(value) -> str | None:
    if value == "pgbouncer":
        return 'cannot use the reserved "pgbouncer" database as an auth_dbname'
    return None


_TABLE: list[Param] = [
    Param("admin_users", "str", "", doc="Comma-separated users allowed to run every admin console command."),
    Param("application_name_add_host", "bool", "0", doc="Append the client address and port to application_name at connect time."),
    Param("auth_dbname", "str", "", doc="Database whose pool runs auth_query lookups when a database entry names none.",
          validator=_not_the_console),
    Param("auth_file", "str", "", doc="File with user names and passwords or password hashes."),
    Param("auth_hba_file", "str", "", doc="HBA-style rules file consulted when auth_type is hba."),
    Param("auth_ident_file", "str", "", doc="Ident map file used by map= options in the HBA file."),
    Param("auth_ldap_options", "str", "", doc="LDAP options for auth_type ldap, written like the options of a pg_hba.conf ldap line (needs python3-ldap3)."),
    Param("auth_query", "str", _AUTH_QUERY, doc="Query run as auth_user to fetch a password hash for users not in auth_file."),
    Param("auth_type", "enum", "md5", choices=AUTH_TYPES, doc="How clients prove who they are."),
    Param("auth_user", "str", "", doc="User that connects to the server to run auth_query."),
    Param("autodb_idle_timeout", "time", "3600", doc="Seconds after which an unused database made from the * entry is dropped."),
    Param("cancel_wait_timeout", "time", "10", doc="Seconds a cancel request may wait for a server connection before it is dropped."),
    Param("client_idle_timeout", "time", "0", doc="Close client connections idle for longer than this many seconds (0 disables)."),
    Param("client_login_timeout", "time", "60", doc="Seconds a client has to finish logging in."),
    Param("client_tls13_ciphers", "str", "", doc="TLS 1.3 cipher suites offered to clients."),
    Param("client_tls_ca_file", "str", "", doc="CA certificates used to verify client certificates."),
    Param("client_tls_cert_file", "str", "", doc="Certificate presented to clients."),
    Param("client_tls_ciphers", "str", "default", doc="TLS 1.2 and older cipher list offered to clients."),
    Param("client_tls_dheparams", "str", "auto", doc="Diffie-Hellman parameters for client TLS (none, auto, legacy)."),
    Param("client_tls_ecdhcurve", "str", "auto", doc="Elliptic curve for ECDH key exchange with clients."),
    Param("client_tls_key_file", "str", "", doc="Private key for the client-facing certificate."),
    Param("client_tls_protocols", "str", "secure", doc="TLS protocol versions allowed for clients."),
    Param("client_tls_sslmode", "enum", "disable", choices=SSLMODES, doc="Whether and how strictly TLS is used for client connections."),
    Param("conffile", "str", "", doc="Path of the configuration file; changing it changes what the next RELOAD reads."),
    Param("default_pool_size", "int", "20", doc="Server connections allowed per user/database pair."),
    Param("disable_pqexec", "bool", "0", _NR, doc="Reject the simple query protocol, allowing only extended queries."),
    Param("dns_max_ttl", "time", "15", doc="Seconds a successful DNS answer is cached."),
    Param("dns_nxdomain_ttl", "time", "15", doc="Seconds a failed DNS lookup is cached."),
    Param("dns_zone_check_period", "time", "0", doc="Period for checking DNS zone serials (c-ares builds only; 0 disables)."),
    Param("idle_transaction_timeout", "time", "0", doc="Close clients that stay idle inside a transaction for this long (0 disables)."),
    Param("ignore_startup_parameters", "str", "", doc="Comma-separated startup parameters that are accepted and dropped."),
    Param("job_name", "str", "pgbouncer", _NR, doc="Name used for the service and in syslog identification."),
    Param("listen_addr", "str", "", _NR, doc="Comma-separated TCP addresses to listen on; * means all, empty means unix socket only."),
    Param("listen_backlog", "int", "128", _NR, doc="Backlog passed to listen()."),
    Param("listen_port", "int", "6432", _NR, doc="Port for TCP listening and for the unix socket name."),
    Param("log_connections", "bool", "1", doc="Log successful client logins."),
    Param("log_disconnections", "bool", "1", doc="Log client disconnections with the reason."),
    Param("log_pooler_errors", "bool", "1", doc="Log error messages the pooler sends to clients."),
    Param("log_stats", "bool", "1", doc="Write the periodic statistics line to the log."),
    Param("logfile", "str", "", doc="File to append log lines to."),
    Param("login_notify_message", "str", "", doc="Notice sent to each client right after it logs in."),
    Param("max_client_conn", "int", "100", doc="Most client connections accepted at once."),
    Param("max_db_client_connections", "int", "0", doc="Most client connections per database (0 means unlimited)."),
    Param("max_db_connections", "int", "0", doc="Most server connections per database across all its pools (0 means unlimited)."),
    Param("max_packet_size", "int", "2147483647", doc="Largest protocol packet accepted from a client or server."),
    Param("max_prepared_statements", "int", "200", doc="Prepared statements tracked per connection in transaction and statement mode (0 disables); covers protocol-level statements and, beyond PgBouncer, SQL PREPARE/EXECUTE/DEALLOCATE sent as simple queries."),
    Param("max_user_client_connections", "int", "0", doc="Most client connections per user (0 means unlimited)."),
    Param("max_user_connections", "int", "0", doc="Most server connections per user across all its pools (0 means unlimited)."),
    Param("min_pool_size", "int", "0", doc="Keep at least this many server connections open in each pool."),
    Param("peer_id", "int", "0", doc="This process's id among peered poolers (0 disables peering)."),
    Param("pidfile", "str", "", _NR, doc="File the process id is written to."),
    Param("pkt_buf", "int", "4096", _NR, doc="Size of the internal packet buffer."),
    Param("pool_idle_timeout", "time", "0", doc="Drop a pool that has had no clients and no servers for this long (0 disables)."),
    Param("pool_mode", "enum", "session", choices=POOL_MODES, doc="When a server connection goes back to the pool: session, transaction or statement."),
    Param("query_timeout", "time", "0", doc="Cancel queries running longer than this many seconds (0 disables)."),
    Param("query_wait_notify", "time", "5", doc="Send a notice to clients queued for a server for longer than this (0 disables)."),
    Param("query_wait_timeout", "time", "120", doc="Close clients that wait this long for a server connection (0 disables)."),
    Param("reserve_pool_size", "int", "0", doc="Extra server connections a pool may open when clients wait too long."),
    Param("reserve_pool_timeout", "time", "5", doc="Seconds a client must wait before the reserve pool is used."),
    Param("resolv_conf", "str", "", _NR, doc="Alternative resolv.conf for the DNS resolver (c-ares builds only)."),
    Param("sbuf_loopcnt", "int", "5", doc="Rounds of reading from one connection before others get a turn (0 means no limit)."),
    Param("scram_iterations", "int", "4096", doc="PBKDF2 iteration count for SCRAM secrets computed by the pooler."),
    Param("server_check_delay", "time", "30", doc="How long a released server may sit before it is health-checked again."),
    Param("server_check_query", "str", "", doc="Health-check query for idle servers; empty sends an empty query."),
    Param("server_connect_timeout", "time", "15", doc="Seconds allowed for a server connect and login."),
    Param("server_fast_close", "bool", "0", doc="Close servers of a pool being reconnected as soon as their transaction ends."),
    Param("server_idle_timeout", "time", "600", doc="Close server connections idle for longer than this (0 disables)."),
    Param("server_lifetime", "time", "3600", doc="Close a server connection after it has existed this long and is idle (0 disables)."),
    Param("server_login_retry", "time", "15", doc="Seconds to wait before retrying after a failed server login."),
    Param("server_reset_query", "str", "DISCARD ALL", doc="Query run when a server connection is released in session mode."),
    Param("server_reset_query_always", "bool", "0", doc="Run server_reset_query in every pool mode, not only session."),
    Param("server_round_robin", "bool", "0", doc="Reuse server connections in turn instead of most-recently-used first."),
    Param("server_tls13_ciphers", "str", "", doc="TLS 1.3 cipher suites offered to servers."),
    Param("server_tls_ca_file", "str", "", doc="CA certificates used to verify server certificates."),
    Param("server_tls_cert_file", "str", "", doc="Client certificate presented to servers."),
    Param("server_tls_ciphers", "str", "default", doc="TLS 1.2 and older cipher list offered to servers."),
    Param("server_tls_key_file", "str", "", doc="Private key for the certificate presented to servers."),
    Param("server_tls_protocols", "str", "secure", doc="TLS protocol versions allowed towards servers."),
    Param("server_tls_sslmode", "enum", "prefer", choices=SSLMODES, doc="Whether and how strictly TLS is used for server connections."),
    Param("service_name", "str", "", doc="Windows service name (alias of job_name); has no effect on Linux."),
    Param("so_reuseport", "bool", "0", _NR, doc="Set SO_REUSEPORT so several processes can share the listening port."),
    Param("stats_period", "int", "60", doc="Seconds between statistics averages and the stats log line."),
    Param("stats_users", "str", "", doc="Comma-separated users allowed read-only SHOW commands on the console."),
    Param("suspend_timeout", "time", "10", doc="Seconds to wait for buffers to flush on SUSPEND or online restart."),
    Param("syslog", "bool", "0", doc="Also send log lines to syslog."),
    Param("syslog_facility", "str", "daemon", doc="Syslog facility name."),
    Param("syslog_ident", "str", "pgbouncer", doc="Program name used in syslog lines."),
    Param("tcp_defer_accept", "int", "1", doc="TCP_DEFER_ACCEPT value for listening sockets."),
    Param("tcp_keepalive", "bool", "1", doc="Turn on TCP keepalive for all sockets."),
    Param("tcp_keepcnt", "int", "0", doc="TCP_KEEPCNT value (0 keeps the OS default)."),
    Param("tcp_keepidle", "int", "0", doc="TCP_KEEPIDLE value in seconds (0 keeps the OS default)."),
    Param("tcp_keepintvl", "int", "0", doc="TCP_KEEPINTVL value in seconds (0 keeps the OS default)."),
    Param("tcp_socket_buffer", "int", "0", doc="Socket send and receive buffer size (0 keeps the OS default)."),
    Param("tcp_user_timeout", "int", "0", doc="TCP_USER_TIMEOUT in milliseconds (0 keeps the OS default)."),
    Param("track_extra_parameters", "str", "IntervalStyle", _NR, doc="Comma-separated extra startup parameters tracked per client and synced to servers."),
    Param("transaction_timeout", "time", "0", doc="Close clients whose transaction lasts longer than this (0 disables)."),
    Param("unix_socket_dir", "str", "/tmp", _NR, doc="Directory for the unix socket; empty disables it, @name uses the abstract namespace."),
    Param("unix_socket_group", "str", "", _NR, doc="Group owning the unix socket."),
    Param("unix_socket_mode", "mode", "0777", _NR, doc="File mode of the unix socket."),
    Param("user", "str", "", _NR, doc="Operating system user to switch to after start."),
    Param("verbose", "int", "", doc="Log verbosity; each -v on the command line adds one."),
]

PARAMS: dict[str, Param] = {p.name: p for p in _TABLE}

# [pgbouncer] has no alternate spellings on Linux (service_name is a separate Windows-only key).
ALIASES: dict[str, str] = {}

# Settings hidden from SHOW CONFIG on Linux.
HIDDEN = frozenset({"service_name"})

# pgbouncer-py extensions (docs/extensions.md), not PgBouncer settings: PARAMS above stays PgBouncer's table.
# A config that sets none of them is read, and shown by SHOW CONFIG, exactly as PgBouncer would; their rows
# join SHOW CONFIG (in key order) only while the HTTP listener is turned on (http_listen_addr not empty).
EXTENSIONS: dict[str, Param] = {p.name: p for p in [
    Param("http_listen_addr", "str", "", _NR, doc="pgbouncer-py extension: comma-separated addresses (* for all) of "
          "the HTTP listener serving /metrics, /health and /ready; empty (the default) means no listener."),
    Param("http_listen_port", "int", "9127", _NR, doc="pgbouncer-py extension: TCP port of the HTTP listener."),
    Param("http_ready_check_servers", "bool", "0", doc="pgbouncer-py extension: /ready also requires that no "
          "database's most recent server login failed (a live server connection counts as a success)."),
]}
ALL_PARAMS: dict[str, Param] = {**PARAMS, **EXTENSIONS}
