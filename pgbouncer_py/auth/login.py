"""Client authentication: picks the method from auth_type (an auth_hba_file rule, the stored secret) and runs
its exchange; users missing from auth_file are looked up with auth_query; PAM and LDAP checks run in threads."""

import hashlib
import hmac
import os

from pgbouncer_py.auth import auth_query, cert, peer, scram
from pgbouncer_py.auth import ldap as ldapauth
from pgbouncer_py.auth import md5 as md5auth
from pgbouncer_py.auth import pam as pamauth
from pgbouncer_py.config import hba as hbaconf
from pgbouncer_py.log import log
from pgbouncer_py.objects import User, registry
from pgbouncer_py.proto import build
from pgbouncer_py.proto import constants as C
from pgbouncer_py.proto.messages import ProtocolError, parse_password, parse_sasl_initial_response

_MOCK_KEY = os.urandom(32)
_REPL_TEXT = {"none": "no", "physical": "yes", "logical": "database"}

# AuthenticationMD5Password up to its salt, built once (build.auth_request: two calls per md5 login)
_MD5_REQUEST_HEAD = build.auth_request(C.AUTH_MD5, b"\0\0\0\0")[:-4]
_SASL_REQUEST = build.auth_request(C.AUTH_SASL, b"SCRAM-SHA-256\0\0")
# AuthenticationSASLContinue / SASLFinal bodies up to their data: build.msg(b"R", head + data) is build.auth_request
# without its frame (2 per SCRAM login)
_SASL_CONTINUE_HEAD = build.auth_request(C.AUTH_SASL_CONTINUE)[5:]
_SASL_FINAL_HEAD = build.auth_request(C.AUTH_SASL_FINAL)[5:]

# failure texts sent to the client, as PgBouncer words them
FAIL_PASSWORD = "password authentication failed"
FAIL_SASL = "SASL authentication failed"
FAIL_TRUST = '"trust" authentication failed'
FAIL_CERT = "certificate authentication failed"
FAIL_PAM = "PAM authentication failed"
FAIL_LDAP = "LDAP authentication failed"
FAIL_PEER = "unix socket login rejected"
FAIL_REJECT = "login rejected"

# the rules in force (main.py loads them on start and RELOAD through load_auth_files)
hba_rules: hbaconf.HbaRules | None = None
ident_map: hbaconf.IdentMap | None = None
_file_keys: dict[str, tuple] = {}


def _stat_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_auth_files(cfg, *, startup: bool = False) -> None:
    """(Re)load auth_hba_file and auth_ident_file. A file that cannot be read or has bad lines is logged and
    the rules in force are kept (at startup there are none, so every hba login is rejected)."""
    global hba_rules, ident_map
    for setting, loader in (("auth_hba_file", hbaconf.load_hba_file), ("auth_ident_file", hbaconf.load_ident_file)):
        path = cfg.get(setting) or ""
        current = hba_rules if setting == "auth_hba_file" else ident_map
        if not path:
            new = None
        else:
            key = (path, _stat_key(path))
            if not startup and current is not None and _file_keys.get(setting) == key:
                continue
            try:
                new = loader(path)
            except (OSError, UnicodeDecodeError) as e:
                log.error(f"could not load {setting} {path}: {getattr(e, 'strerror', None) or e}")
                continue
            if new.errors:
                for text in new.errors:
                    log.error(f"{setting}: {text}")
                log.warning(f"{setting} {path} has errors, "
                            f"{'keeping the rules loaded before' if current is not None else 'no rules in force'}")
                continue
            for text in getattr(new, "warnings", ()):
                log.warning(f"{setting}: {text}")
            _file_keys[setting] = key
        if setting == "auth_hba_file":
            hba_rules = new
        else:
            ident_map = new
    for problem in ldapauth.configure(cfg, hba_rules):
        log.error(problem)


def config_error(cfg) -> str | None:
    """A startup problem of the auth settings (the pooler refuses to start), or None."""
    if cfg.auth_type == "cert" and cfg.client_tls_sslmode != "verify-full":
        return "auth_type=cert requires client_tls_sslmode=SSLMODE_VERIFY_FULL"
    return None


def secret_kind(secret: str | None) -> str:
    if secret is None:
        return "none"
    if secret.startswith("SCRAM-SHA-256$") and scram.parse_scram_secret(secret) is not None:
        return "scram"
    if md5auth.is_md5_secret(secret):
        return "md5"
    return "plain"


def check_cleartext(secret: str, user: str, password: str) -> bool:
    kind = secret_kind(secret)
    if kind == "plain":
        return hmac.compare_digest(secret.encode(), password.encode())
    if kind == "md5":
        return hmac.compare_digest(secret, md5auth.md5_secret(password, user))
    s = scram.parse_scram_secret(secret)
    client_key, server_key = scram.scram_keys_from_password(password, s.salt, s.iterations)
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), s.stored_key) and \
        hmac.compare_digest(server_key, s.server_key)


def _remember_scram_keys(user: User, password: str) -> None:
    """A right cleartext password for a SCRAM secret: keep the keys a SCRAM server login needs."""
    if secret_kind(user.secret) == "scram":
        s = scram.parse_scram_secret(user.secret)
        user.scram_client_key, user.scram_server_key = scram.scram_keys_from_password(
            password, s.salt, s.iterations)


class Authenticator:
    """Runs one client's login exchange; calls client.auth_ok(user) or client.close(error)."""

    # defaults at class level: a login sets only what its method needs
    method = None               # exchange in progress: plain, md5, scram, pam, pam-wait
    kind = None                 # auth method chosen: trust, plain, md5, scram-sha-256, cert, peer, pam
    rule = None                 # the matching auth_hba_file rule
    user: User | None = None
    mock = False
    salt = b""
    scram_server = None
    scram_stage = 0
    lookup = None
    ldap_check = None           # the LDAP check in a worker thread (a future)
    fail_text = FAIL_PASSWORD
    fail_log = "password authentication failed"     # ERROR line of a failed SCRAM exchange

    def __init__(self, client):
        self.client = client

    def cancel(self) -> None:
        self.client = None
        if self.lookup is not None:
            self.lookup.cancel()
            self.lookup = None
        if self.ldap_check is not None:
            self.ldap_check.cancel()
            self.ldap_check = None

    # --- choosing the method ---
    def start(self) -> None:
        client = self.client
        cfg = registry.cfg
        name = client.username
        if client.admin:
            if cfg.auth_type == "any":
                client.admin_level = 2
                self._admit_and_ok(registry.users.get(name) or User(name))
                return
            if name == "pgbouncer" and client.is_unix and client.peer_uid == os.getuid():
                client.login_user = name
                log.info(f"{client.prefix()}pgbouncer access from unix socket")
                client.admin_level = 2
                self._admit_and_ok(registry.users.get(name) or User(name), count_user=False)
                return
        elif cfg.auth_type == "any":
            if client.db.forced_user is None and not client.db.fake:
                log.error(f"{client.prefix()}auth_type=any requires forced user")
                client.close("bouncer config error", send_error=True)
                return
            self._admit_and_ok(registry.users.get(name) or User(name))
            return
        kind = cfg.auth_type
        if kind == "hba":
            rules = hba_rules
            rule = None
            if rules is not None:
                rule = rules.match(conn_type="local" if client.is_unix else "host", tls=bool(client.tls),
                                   addr=None if client.is_unix else client.addr, database=client.dbname,
                                   user=name, replication=client.replication != "none")
            if rule is None:
                log.info(f"{client.prefix()}no matching auth_hba_file rule")
                client.close(FAIL_REJECT, send_error=True)
                return
            self.rule = rule
            kind = "plain" if rule.method == "password" else rule.method
        if kind == "reject":
            client.close(FAIL_REJECT, send_error=True)
            return
        self.kind = kind
        if kind in ("pam", "ldap"):
            self._ask_cleartext(kind)
            return
        user = registry.users.get(name)
        if user is not None and (user.secret is None or user.dynamic):
            user = None           # no auth_file secret (a [users] entry, a PAM login): unknown here
        # a user missing from auth_file is looked up with auth_query for this database (the console: in the global
        # auth_dbname) on every login, so password changes apply; an unknown database has no auth_query
        if user is None and not client.db.fake and auth_query.settings_for(client.db, cfg)[0]:
            self.lookup = auth_query.Lookup(self, client, name)
            self.lookup.start()
            return
        self._with_user(user)

    # --- auth_query answers (auth_query.Lookup calls these) ---
    def query_result(self, user: User | None) -> None:
        self.lookup = None
        if self.client is None:
            return
        if user is None:
            log.info(f"{self.client.prefix()}login failed: db={self.client.dbname}")
            self.client.close("no such user", send_error=True)
            return
        self._with_user(user)

    def query_failed(self, text: str, sqlstate: str = "08P01") -> None:
        self.lookup = None
        if self.client is not None:
            self.client.close(text, send_error=True, sqlstate=sqlstate)

    # --- the user is known (or not): run the method ---
    def _with_user(self, user: User | None) -> None:
        client = self.client
        secret = user.secret if user is not None else None
        if user is None or secret is None:
            log.info(f"{client.prefix()}no such user: {client.username}")
            self.mock = True
            user = None
        self.user = user
        if not self._admit(user):
            return
        kind = self.kind
        mapname = self.rule.options.get("map") if self.rule is not None else None
        if kind == "trust":
            if self.mock:
                client.close(FAIL_TRUST, send_error=True)
                return
            self._ok(user)
            return
        if kind == "peer":
            system_user = peer.os_user_name(client.peer_uid) if client.is_unix else None
            if self.mock or not peer.peer_allowed(system_user, client.username, mapname, ident_map):
                log.info(f"{client.prefix()}peer authentication failed (system user {system_user})")
                client.close(FAIL_PEER, send_error=True)
                return
            self._ok(user)
            return
        if kind == "cert":
            peer_cert = getattr(client, "peer_cert", None) if client.tls else None
            if self.mock or not cert.cert_allowed(peer_cert, client.username, mapname, ident_map):
                log.info(f"{client.prefix()}certificate authentication failed "
                         f"(CN {cert.cert_common_name(peer_cert)})")
                client.close(FAIL_CERT, send_error=True)
                return
            self._ok(user)
            return
        if secret == "":
            # an empty stored password never authenticates anybody
            self.mock = True
        # the stored secret parsed once here, None when it is no SCRAM secret (secret_kind and _ask_scram parsed
        # it three times per SCRAM login)
        parsed = scram.parse_scram_secret(secret)
        if kind == "plain":
            self._ask_cleartext("plain")
        elif kind == "md5":
            if parsed is not None:
                self._ask_scram(secret, parsed)
            else:       # (the md5 request written here: a method for it was a frame per login)
                self.method = "md5"
                self.salt = os.urandom(4)
                client.transport.write(_MD5_REQUEST_HEAD + self.salt)
        elif kind == "scram-sha-256":
            if parsed is None and md5auth.is_md5_secret(secret):
                # an md5 secret cannot do SCRAM: run the exchange and fail it
                self.mock = True
                self.fail_log = "SCRAM authentication failed: user has MD5 secret"
            self._ask_scram(secret, parsed)
        else:
            client.close(f"auth_type={kind} is not supported by pgbouncer-py", send_error=True)

    def _ask_cleartext(self, method: str) -> None:
        self.method = method
        if method == "pam":
            self.fail_text = FAIL_PAM
        elif method == "ldap":
            self.fail_text = FAIL_LDAP
        self.client.transport.write(build.auth_request(C.AUTH_CLEARTEXT))

    def _ask_scram(self, secret: str | None, parsed: scram.ScramSecret | None) -> None:
        self.method = "scram"
        self.fail_text = FAIL_SASL
        cfg = registry.cfg
        if secret is None or self.mock:
            # mock authentication: a secret nobody knows, with a salt that stays the same for a user name,
            # so unknown users look exactly like wrong passwords
            # (random keys, not PBKDF2 of a password: no proof can match them, and a storm of unknown user
            # names costs no more CPU than one of known ones)
            salt = hmac.digest(_MOCK_KEY, self.client.username.encode(), "sha256")[:16]
            self.scram_server = scram.ScramServer(scram.ScramSecret(cfg.scram_iterations, salt, os.urandom(32),
                                                                    os.urandom(32)))
        else:
            self.scram_server = scram.ScramServer(parsed if parsed is not None else secret,
                                                  iterations=cfg.scram_iterations)
        self.client.transport.write(_SASL_REQUEST)

    # --- messages from the client ---
    def message(self, mtype: int, body: bytes | None) -> None:
        if mtype != C.Q_PASSWORD:
            if mtype == C.Q_TERMINATE:
                self.client.close("client close request")
                return
            raise ProtocolError("expected password packet")
        if body is None:
            # longer than any password: read to its end and discarded, it fails like a wrong password
            self._fail()
            return
        if self.method == "md5":            # the usual methods first
            if not body or body[-1] != 0:
                raise ProtocolError("malformed password packet")        # (parse_password's check)
            if self.mock or not md5auth.md5_check(self.user.secret, self.user.name, self.salt, body[:-1]):
                self._fail()
                return
            self._ok(self.user)
        elif self.method == "scram":
            self._scram_message(body)
        elif self.method == "plain":
            password = self._password(body)
            if password is not None:
                self._check_password(password)
        elif self.method == "pam":
            password = self._password(body)
            if password is not None:
                self._start_pam(password)
        elif self.method == "ldap":
            password = self._password(body)
            if password is not None:
                self._start_ldap(password)
        else:
            raise ProtocolError("unexpected password packet")

    def _password(self, body: bytes) -> str | None:
        password = parse_password(body)
        if password == "":
            self.client.close("empty password returned by client", send_error=True)
            return None
        if len(password.encode()) >= C.MAX_PASSWORD:
            self._fail()          # as PgBouncer: no hint that the length was the problem
            return None
        return password

    def _check_password(self, password: str) -> None:
        if self.mock or not check_cleartext(self.user.secret, self.user.name, password):
            self._fail()
            return
        _remember_scram_keys(self.user, password)
        self._ok(self.user)

    # --- PAM ---
    def _start_pam(self, password: str) -> None:
        self.method = "pam-wait"
        try:
            fut = pamauth.check_password(registry.loop, self.client.username, password)
        except RuntimeError as e:
            log.error(f"{self.client.prefix()}PAM check could not start: {e}")
            self._fail()
            return
        fut.add_done_callback(lambda f: self._pam_done(f, password))

    def _pam_done(self, fut, password: str) -> None:
        client = self.client
        if client is None:
            return
        try:
            ok = fut.result()
        except Exception as e:  # a broken PAM stack fails this login only
            log.error(f"{client.prefix()}PAM error: {e}")
            ok = False
        if not ok:
            self._fail()
            return
        self._ok_with_password(password)

    def _ok_with_password(self, password: str) -> None:
        """PAM or LDAP accepted the password: the server login uses it too."""
        name = self.client.username
        user = registry.users.get(name)
        if user is None:
            user = registry.users[name] = User(name)
            user.dynamic = True
        if user.secret != password:
            user.secret = password
            user.scram_client_key = user.scram_server_key = None
        self._admit_and_ok(user)

    # --- LDAP ---
    def _start_ldap(self, password: str) -> None:
        client = self.client
        self.method = "ldap-wait"
        try:
            conf = self.rule.ldap if self.rule is not None else \
                ldapauth.global_options(registry.cfg.auth_ldap_options)
        except ValueError as e:
            log.error(f"{client.prefix()}auth_ldap_options: {e}")
            self._fail()
            return
        self.ldap_check = ldapauth.check_password(registry.loop, conf, client.username, password)
        self.ldap_check.add_done_callback(lambda f: self._ldap_done(f, password))

    def _ldap_done(self, fut, password: str) -> None:
        self.ldap_check = None
        client = self.client
        if client is None or fut.cancelled():
            return
        try:
            outcome = fut.result()
        except Exception as e:  # a broken LDAP library fails this login only
            outcome = ldapauth.Outcome(False, f"LDAP error: {e}", "ERROR")
        if not outcome.ok:
            log.write(outcome.level, f"{client.prefix()}{outcome.reason}")
            self._fail()
            return
        user = registry.users.get(client.username)
        if self.rule is not None and user is not None and not user.dynamic and user.secret is not None:
            # an auth_hba_file ldap rule for a user of auth_file: its secret stays what the user's other rules
            # check and what the server login uses (a SCRAM one gets its keys when this is its password)
            if check_cleartext(user.secret, user.name, password):
                _remember_scram_keys(user, password)
            self._ok(user)
            return
        self._ok_with_password(password)

    # --- SCRAM ---
    def _scram_message(self, body: bytes) -> None:
        try:
            if self.scram_stage == 0:
                mech, data = parse_sasl_initial_response(body)
                if mech != "SCRAM-SHA-256":
                    self.client.close("client selected an invalid SASL authentication mechanism", send_error=True)
                    return
                reply = self.scram_server.handle_client_first(data)
                self.scram_stage = 1
                self.client.transport.write(build.msg(b"R", _SASL_CONTINUE_HEAD + reply))
            else:
                final = self.scram_server.handle_client_final(body)
                if self.mock:
                    log.error(f"{self.client.prefix()}{self.fail_log}")
                    self._fail()
                    return
                if self.user is not None and scram.parse_scram_secret(self.user.secret) is not None:
                    # pass-through: the server login can now use these keys, without any password
                    self.user.scram_client_key = self.scram_server.client_key
                    self.user.scram_server_key = self.scram_server.server_key
                # AuthenticationSASLFinal goes out with what follows it (AuthenticationOk and the welcome, or
                # the error): one write
                self._ok(self.user, head=build.msg(b"R", _SASL_FINAL_HEAD + final))
        except scram.ScramAuthFailed:
            log.error(f"{self.client.prefix()}{self.fail_log}")
            self._fail()
        except scram.ScramError as e:
            log.debug(f"{self.client.prefix()}SCRAM failed: {e}")
            self._fail()
        except ProtocolError:
            self._fail()

    # --- outcomes ---
    def _fail(self) -> None:
        client = self.client
        if client is None:
            return
        client.close(self.fail_text, send_error=True)

    def _admit(self, user: User | None, count_user: bool = True) -> bool:
        """Before the exchange, once the user is known (None: unknown, mock authentication follows): the user's
        client limit and count, the "login attempt" line, and for the console whether this user may use it."""
        client = self.client
        cfg = registry.cfg
        if user is not None:
            client.login_user = user.name
            if count_user and not client.count_user(user.account):
                return False
        else:
            client.login_user = client.username
        if cfg.log_connections:         # (log.write: log.info's frame less)
            log.write("LOG", f"{client.prefix()}login attempt: db={client.dbname} user={client.username} "
                     f"tls={client.tls or 'no'} replication={_REPL_TEXT[client.replication]}")
        if client.admin and client.admin_level == 0 and user is not None:
            if user.name in cfg.list_setting("admin_users"):
                client.admin_level = 2
            elif user.name in cfg.list_setting("stats_users"):
                client.admin_level = 1
            else:
                client.close("not allowed", send_error=True)
                return False
        return True

    def _admit_and_ok(self, user: User, count_user: bool = True) -> None:
        """A login that needs no exchange (auth_type=any, the console's own OS user)."""
        if self._admit(user, count_user):
            self._ok(user)

    def _ok(self, user: User, head: bytes = b"") -> None:
        """The exchange succeeded. Only now is an unknown or disabled database named to the client. `head`: the
        last message of the exchange (SASLFinal), sent before anything else."""
        client = self.client
        if client is None:
            return
        db = client.db
        if head and (db.fake or db.disabled and not client.admin or client.admin and client.admin_level == 0):
            client.transport.write(head)        # before the error below
            head = b""
        if db.fake:
            log.info(f"{client.prefix()}login failed: db={client.dbname} user={client.username}")
            client.close(f"no such database: {client.dbname}", send_error=True)
            return
        if db.disabled and not client.admin:
            client.close(f'database "{client.dbname}" is disabled', send_error=True)
            return
        if client.admin and client.admin_level == 0:
            client.close("not allowed", send_error=True)
            return
        client.auth_ok(user, head=head)
