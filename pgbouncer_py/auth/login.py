"""Client authentication: picks the method from auth_type (and the stored secret) and runs its exchange."""

import hashlib
import hmac
import os

from pgbouncer_py.auth import md5 as md5auth
from pgbouncer_py.auth import scram
from pgbouncer_py.log import log
from pgbouncer_py.objects import User, registry
from pgbouncer_py.proto import build
from pgbouncer_py.proto import constants as C
from pgbouncer_py.proto.messages import ProtocolError, parse_password, parse_sasl_initial_response

_MOCK_KEY = os.urandom(32)


def secret_kind(secret: str | None) -> str:
    if secret is None:
        return "none"
    if secret.startswith("SCRAM-SHA-256$") and scram.parse_scram_secret(secret) is not None:
        return "scram"
    if len(secret) == 35 and secret.startswith("md5"):
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


class Authenticator:
    """Runs one client's login exchange; calls client.auth_ok(user) or client.close(error)."""

    def __init__(self, client):
        self.client = client
        self.method = None
        self.user: User | None = None
        self.mock = False
        self.salt = b""
        self.scram_server = None
        self.scram_stage = 0
        self.fail_text = "password authentication failed"

    def cancel(self) -> None:
        self.client = None

    # --- choosing the method ---
    def start(self) -> None:
        client = self.client
        cfg = registry.cfg
        name = client.username
        if client.admin:
            if cfg.auth_type == "any":
                client.admin_level = 2
                self._ok(registry.users.get(name) or User(name))
                return
            if name == "pgbouncer" and client.is_unix and client.peer_uid == os.getuid():
                client.admin_level = 2
                self._ok(registry.users.get(name) or User(name))
                return
        else:
            if cfg.auth_type == "any":
                if client.db.forced_user is None:
                    client.close("bouncer config error", send_error=True)
                    return
                self._ok(registry.users.get(name) or User(name))
                return
        user = registry.users.get(name)
        secret = user.secret if user is not None else None
        if user is None or secret is None:
            log.info(f"{client.prefix()}no such user: {name}")
            self.mock = True
            user = None
        self.user = user
        method = cfg.auth_type
        if method in ("hba", "cert", "pam", "peer", "ldap"):
            client.close(f"auth_type={method} is not supported by this version of pgbouncer-py", send_error=True)
            return
        if method == "trust":
            if self.mock:
                client.close('"trust" authentication failed', send_error=True)
                return
            self._ok(user)
            return
        kind = secret_kind(secret)
        if method == "plain":
            self._ask_cleartext()
        elif method == "md5":
            if kind == "scram":
                self._ask_scram(secret)
            else:
                self._ask_md5()
        elif method == "scram-sha-256":
            if kind == "md5":
                # an md5 secret cannot be used for SCRAM: run the exchange and fail it
                self.mock = True
                self._ask_scram(None)
            else:
                self._ask_scram(secret)
        else:
            client.close(f"unsupported auth_type: {method}", send_error=True)

    def _ask_cleartext(self) -> None:
        self.method = "plain"
        self.client.transport.write(build.auth_request(C.AUTH_CLEARTEXT))

    def _ask_md5(self) -> None:
        self.method = "md5"
        self.salt = os.urandom(4)
        self.client.transport.write(build.auth_request(C.AUTH_MD5, self.salt))

    def _ask_scram(self, secret: str | None) -> None:
        self.method = "scram"
        self.fail_text = "SASL authentication failed"
        cfg = registry.cfg
        if secret is None or self.mock:
            # mock authentication: a secret nobody knows, with a salt that stays the same for a user name,
            # so unknown users look exactly like wrong passwords
            salt = hmac.new(_MOCK_KEY, self.client.username.encode(), hashlib.sha256).digest()[:16]
            secret = scram.make_scram_secret(_MOCK_KEY.hex(), cfg.scram_iterations, salt=salt)
        self.scram_secret_text = secret
        parsed = scram.parse_scram_secret(secret)
        self.scram_server = scram.ScramServer(parsed if parsed is not None else secret,
                                              iterations=cfg.scram_iterations)
        self.client.transport.write(build.auth_request(C.AUTH_SASL, b"SCRAM-SHA-256\0\0"))

    # --- messages from the client ---
    def message(self, mtype: int, body: bytes) -> None:
        if mtype != C.Q_PASSWORD:
            if mtype == C.Q_TERMINATE:
                self.client.close("client close request")
                return
            raise ProtocolError("expected password packet")
        if self.method == "plain":
            password = parse_password(body)
            self._check_password(password)
        elif self.method == "md5":
            password = parse_password(body)
            if self.mock or not md5auth.md5_verify(self.user.secret, self.user.name, self.salt, password):
                self._fail()
                return
            self._ok(self.user)
        elif self.method == "scram":
            self._scram_message(body)
        else:
            raise ProtocolError("unexpected password packet")

    def _check_password(self, password: str) -> None:
        if password == "":
            self.client.close("empty password returned by client", send_error=True)
            return
        if len(password) >= C.MAX_PASSWORD:
            self.client.close("password too long", send_error=True)
            return
        if self.mock or not check_cleartext(self.user.secret, self.user.name, password):
            self._fail()
            return
        if secret_kind(self.user.secret) == "scram":
            s = scram.parse_scram_secret(self.user.secret)
            self.user.scram_client_key, self.user.scram_server_key = scram.scram_keys_from_password(
                password, s.salt, s.iterations)
        self._ok(self.user)

    def _scram_message(self, body: bytes) -> None:
        try:
            if self.scram_stage == 0:
                mech, data = parse_sasl_initial_response(body)
                if mech != "SCRAM-SHA-256":
                    self.client.close("client selected an invalid SASL authentication mechanism", send_error=True)
                    return
                reply = self.scram_server.handle_client_first(data)
                self.scram_stage = 1
                self.client.transport.write(build.auth_request(C.AUTH_SASL_CONTINUE, reply))
            else:
                final = self.scram_server.handle_client_final(body)
                if self.mock:
                    self._fail()
                    return
                if self.user is not None and secret_kind(self.user.secret) == "scram":
                    self.user.scram_client_key = self.scram_server.client_key
                    self.user.scram_server_key = self.scram_server.server_key
                self.client.transport.write(build.auth_request(C.AUTH_SASL_FINAL, final))
                self._ok(self.user)
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

    def _ok(self, user: User) -> None:
        client = self.client
        if client is None:
            return
        if client.admin and client.admin_level == 0:
            cfg = registry.cfg
            if user.name in cfg.list_setting("admin_users"):
                client.admin_level = 2
            elif user.name in cfg.list_setting("stats_users"):
                client.admin_level = 1
            else:
                client.close("not allowed", send_error=True)
                return
        client.auth_ok(user)
