"""LDAP authentication (auth_type=ldap with auth_ldap_options, method ldap in auth_hba_file), done as PostgreSQL's
ldap method does it: bind as prefix+user+suffix, or search the user's DN and bind as it. The blocking exchange
runs in worker threads, every wait bounded by a timeout; ldap3 (python3-ldap3, optional) speaks LDAP."""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import queue
import re
import ssl
import threading
from dataclasses import dataclass

from pgbouncer_py.config import hba as hbaconf
from pgbouncer_py.config import ldapopts

LIBRARY_MISSING = ("LDAP authentication needs the python3-ldap3 package (python module ldap3), "
                   "which is not installed")
LDAP_CONF = "/etc/ldap/ldap.conf"
MAX_WORKERS = 8
STARTTLS_OID = "1.3.6.1.4.1.1466.20037"

# libldap's texts for the result codes a login meets (PostgreSQL and PgBouncer log these)
_RESULT_TEXT = {
    1: "Operations error", 2: "Protocol error", 3: "Time limit exceeded", 4: "Size limit exceeded",
    7: "Authentication method not supported", 8: "Strong(er) authentication required", 10: "Referral",
    11: "Administrative limit exceeded", 13: "Confidentiality required", 32: "No such object",
    34: "Invalid DN syntax", 48: "Inappropriate authentication", 49: "Invalid credentials",
    50: "Insufficient access", 51: "Server is busy", 52: "Server is unavailable",
    53: "Server is unwilling to perform", 80: "Other (e.g., implementation specific) error",
}

# how we reach directories (ldap.conf and LDAP* variables), read at startup and on RELOAD
_settings = ldapopts.ClientSettings()


def library_missing() -> bool:
    try:
        import ldap3  # noqa: F401
    except ImportError:
        return True
    return False


def read_client_settings(environ=os.environ) -> ldapopts.ClientSettings:
    """libldap's client settings: $LDAPCONF or /etc/ldap/ldap.conf, then the LDAP<KEY> variables."""
    path = environ.get("LDAPCONF") or LDAP_CONF
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text: str | None = f.read()
    except OSError:
        text = None
    return ldapopts.client_settings(text, environ)


@functools.lru_cache(maxsize=8)
def global_options(text: str) -> ldapopts.LdapConfig:
    """auth_ldap_options parsed (ValueError says what is wrong)."""
    return hbaconf.parse_ldap_options(text)


def configure(cfg, hba_rules) -> list[str]:
    """Startup and RELOAD: read the client settings; returns the problems to log (empty when none)."""
    global _settings
    _settings = read_client_settings()
    uses = cfg.auth_type == "ldap" or (cfg.auth_type == "hba" and hba_rules is not None
                                       and any(r.method == "ldap" for r in hba_rules.rules))
    if not uses:
        return []
    problems = [f"ldap.conf: {p}" for p in _settings.problems]
    if cfg.auth_type == "ldap":
        try:
            global_options(cfg.auth_ldap_options)
        except ValueError as e:
            problems.append(f"auth_ldap_options: {e}; LDAP logins will fail")
    if library_missing():
        problems.append(f"{LIBRARY_MISSING}; LDAP logins will fail")
    return problems


@dataclass(frozen=True)
class Outcome:
    ok: bool
    reason: str = ""        # why it failed, for the log
    level: str = "LOG"      # ERROR when pgbouncer-py's setup is at fault rather than the login


class _Failed(Exception):
    """Ends an exchange; str() is the log text, .level its level (ERROR for our own setup problems)."""

    def __init__(self, text: str, level: str = "LOG"):
        super().__init__(text)
        self.level = level


def _ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _result_text(conn) -> str:
    result = conn.result or {}
    code = result.get("result")
    text = _RESULT_TEXT.get(code) or result.get("description") or f"result code {code}"
    diag = result.get("message")
    return f"{text} (LDAP diagnostics: {diag})" if diag else text


def _error_text(exc: BaseException, settings: ldapopts.ClientSettings) -> str:
    from ldap3.core import exceptions as lx
    # ldap3 wraps the cause in reprs of tuples: ("('socket ssl wrapping error: [SSL: ...] ... (_ssl.c:992)',)",)
    text = re.sub(r"\s*\(_ssl\.c:\d+$", "", str(exc).strip("()'\",\\ ")) or type(exc).__name__
    text = re.sub(r"^wrap socket error: ", "", text)
    text = re.sub(r"certificate \{.*\} doesn't match any name in \[(.*)\]", r"certificate does not match \1", text)
    if isinstance(exc, lx.LDAPSocketOpenError | ConnectionError):
        if "timed out" in text:
            text = f"no connection within {settings.network_timeout:g} s"
        return f"Can't contact LDAP server ({text})"
    if isinstance(exc, lx.LDAPResponseTimeoutError | TimeoutError) or "timed out" in text:
        return f"Timed out (no answer within {math.ceil(settings.timeout)} s)"
    return text


class _Exchange:
    """One login's LDAP conversation (blocking; a worker thread runs it)."""

    def __init__(self, ldap3, conf: ldapopts.LdapConfig, settings: ldapopts.ClientSettings):
        self.ldap3 = ldap3
        self.conf = conf
        self.settings = settings

    def connect(self, failing: str):
        """An open connection to the first ldapserver that answers, with StartTLS when ldaptls=1.
        `failing` is the log text when none can be reached (the reason is appended)."""
        ldap3, conf, st = self.ldap3, self.conf, self.settings
        last = ""
        for host in conf.servers:
            tls = None
            if conf.scheme == "ldaps" or conf.tls:
                try:
                    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if st.verify else ssl.CERT_NONE,
                                    ca_certs_file=st.ca_file, ca_certs_path=st.ca_dir,
                                    sni=None if _ip(host) else host)
                except ldap3.core.exceptions.LDAPException as e:
                    raise _Failed(f"{failing}: TLS setup failed: {e} (TLS_CACERT / TLS_CACERTDIR)",
                                  "ERROR") from None
            server = ldap3.Server(host, port=conf.effective_port(), use_ssl=conf.scheme == "ldaps", tls=tls,
                                  get_info=ldap3.NONE, connect_timeout=st.network_timeout)
            # ldap3 sets SO_RCVTIMEO from it, in whole seconds
            conn = ldap3.Connection(server, client_strategy=ldap3.SYNC, receive_timeout=max(1, math.ceil(st.timeout)),
                                    raise_exceptions=False, auto_referrals=False, read_only=True)
            try:
                conn.open()
            except (ldap3.core.exceptions.LDAPException, OSError) as e:
                last = _error_text(e, st)
                continue
            if conf.tls:
                self.start_tls(conn)
            return conn
        raise _Failed(f"{failing}: {last}")

    def start_tls(self, conn) -> None:
        """StartTLS (ldaptls=1). Over ldaps:// the request is sent all the same, as libldap does, and the
        directory refuses it (OpenLDAP: Operations error, TLS already started)."""
        try:
            if conn.server.ssl:
                conn.extended(STARTTLS_OID)
                reason = "TLS already started" if (conn.result or {}).get("result") == 0 else _result_text(conn)
            else:
                conn.start_tls()
                return
        except (self.ldap3.core.exceptions.LDAPException, OSError) as e:
            if (conn.result or {}).get("result", 0) != 0:
                reason = _result_text(conn)           # the directory refused StartTLS
            else:                                     # the TLS handshake failed: libldap says "Connect error"
                reason = f"Connect error ({_error_text(e, self.settings)})"
        self.close(conn)
        raise _Failed(f"could not start LDAP TLS session: {reason}")

    def bind(self, conn, dn: str, password: str | None) -> str | None:
        """None when the directory accepts dn/password, else why not."""
        ldap3 = self.ldap3
        try:
            if not dn and not password:
                conn.authentication, conn.user, conn.password = ldap3.ANONYMOUS, None, None
            elif not password:
                return "a DN without a password (an unauthenticated bind) is not sent by pgbouncer-py"
            else:
                conn.authentication, conn.user, conn.password = ldap3.SIMPLE, dn, password.encode()
            if conn.bind():
                return None
            return _result_text(conn)
        except (ldap3.core.exceptions.LDAPException, OSError) as e:
            return _error_text(e, self.settings)

    def search(self, conn, user: str) -> str:
        conf = self.conf
        ldap3 = self.ldap3
        server = conf.server_text
        filt = conf.search_filter(user)
        try:
            ok = conn.search(conf.basedn, filt, search_scope=ldap3.SUBTREE, attributes=ldap3.NO_ATTRIBUTES)
            reason = None if ok or (conn.result or {}).get("result") == 0 else _result_text(conn)
        except (ldap3.core.exceptions.LDAPException, OSError) as e:
            reason = _error_text(e, self.settings)
        if reason is not None:
            raise _Failed(f'could not search LDAP for filter "{filt}" on server "{server}": {reason}')
        dns = [e["dn"] for e in conn.response or () if e.get("type") == "searchResEntry"]
        if not dns:
            raise _Failed(f'LDAP user "{user}" does not exist; LDAP search for filter "{filt}" on server '
                          f'"{server}" returned no entries.')
        if len(dns) > 1:
            raise _Failed(f'LDAP user "{user}" is not unique; LDAP search for filter "{filt}" on server '
                          f'"{server}" returned {len(dns)} entries.')
        return dns[0]

    @staticmethod
    def close(conn) -> None:
        try:
            conn.unbind()
        except Exception:  # noqa: BLE001 - the connection is dropped either way
            pass


def authenticate(conf: ldapopts.LdapConfig, user: str, password: str,
                 settings: ldapopts.ClientSettings | None = None) -> Outcome:
    """Check user/password against the directory (blocking: call it from a worker thread)."""
    try:
        import ldap3
        import ldap3.core.exceptions  # noqa: F401
    except ImportError:
        return Outcome(False, LIBRARY_MISSING, "ERROR")
    if not conf.servers:
        return Outcome(False, "LDAP server not specified (ldapserver): finding servers through DNS SRV records "
                              "is not supported by pgbouncer-py", "ERROR")
    ex = _Exchange(ldap3, conf, settings or _settings)
    server = conf.server_text
    try:
        if conf.search_mode:
            problem = conf.user_name_problem(user)
            if problem:
                return Outcome(False, problem)
            binddn = conf.binddn or ""
            failing = f'could not perform initial LDAP bind for ldapbinddn "{binddn}" on server "{server}"'
            conn = ex.connect(failing)
            try:
                reason = ex.bind(conn, binddn, conf.bindpasswd)
                if reason is not None:
                    raise _Failed(f"{failing}: {reason}")
                dn = ex.search(conn, user)
            finally:
                ex.close(conn)
        else:
            dn = conf.bind_dn(user)
        failing = f'LDAP login failed for user "{dn}" on server "{server}"'
        conn = ex.connect(failing)
        try:
            reason = ex.bind(conn, dn, password)
        finally:
            ex.close(conn)
        if reason is not None:
            raise _Failed(f"{failing}: {reason}")
    except _Failed as e:
        return Outcome(False, str(e), e.level)
    except Exception as e:  # noqa: BLE001 - a library surprise fails this login only
        return Outcome(False, f"LDAP error: {type(e).__name__}: {e}", "ERROR")
    return Outcome(True)


# --- worker threads ---------------------------------------------------------------------------------

class _Workers:
    """Daemon threads that run blocking checks and hand the result to the event loop; a process that shuts
    down never waits for them. A check whose future was cancelled before it started is skipped."""

    def __init__(self, size: int):
        self.size = size
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0       # threads waiting for a job
        self.queued = 0     # jobs no thread has taken yet

    def submit(self, loop, fn, *args):
        fut = loop.create_future()
        with self.lock:
            self.queued += 1
            if self.queued > self.idle and self.threads < self.size:
                self.threads += 1
                threading.Thread(target=self._run, name=f"ldap-{self.threads}", daemon=True).start()
        self.jobs.put((loop, fut, fn, args))
        return fut

    def _run(self) -> None:
        while True:
            with self.lock:
                self.idle += 1
            loop, fut, fn, args = self.jobs.get()
            with self.lock:
                self.idle -= 1
                self.queued -= 1
            if fut.cancelled():
                continue
            try:
                outcome = ("result", fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the loop as the future's exception
                outcome = ("error", e)
            try:
                loop.call_soon_threadsafe(_settle, fut, outcome)
            except RuntimeError:   # the loop is closed: the process is exiting
                return


def _settle(fut, outcome) -> None:
    if fut.cancelled():
        return
    kind, value = outcome
    if kind == "result":
        fut.set_result(value)
    else:
        fut.set_exception(value)


_workers = _Workers(MAX_WORKERS)


def check_password(loop, conf: ldapopts.LdapConfig, user: str, password: str):
    """Start a check in a worker thread; returns an asyncio future with an Outcome (cancel it to drop it)."""
    return _workers.submit(loop, authenticate, conf, user, password, _settings)
