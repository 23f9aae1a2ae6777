"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) without channel binding, as PostgreSQL speaks it.

Sans-I/O: ScramServer checks pooler clients, ScramClient logs in to PostgreSQL (password or pass-through keys).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field

from pgbouncer_py.auth.saslprep import saslprep

__all__ = [
    "MECHANISM",
    "ScramAuthFailed",
    "ScramClient",
    "ScramError",
    "ScramSecret",
    "ScramServer",
    "make_scram_secret",
    "parse_scram_secret",
    "scram_keys_from_password",
]

MECHANISM = "SCRAM-SHA-256"
KEY_LEN = 32  # SHA-256 digest size
NONCE_RAW_LEN = 18  # random bytes per nonce, base64-encoded to 24 characters (like PostgreSQL)
SALT_LEN = 16  # random salt bytes in secrets we generate (like PostgreSQL)
MAX_ITERATIONS = 2**31 - 1  # PostgreSQL keeps the count in a signed 32-bit int


_HEX = frozenset("0123456789abcdef")


def is_md5_secret(text: str) -> bool:
    """True if text has the form of a stored MD5 secret: 'md5' followed by 32 lowercase hex digits (SCRAM refuses
    such a secret; md5.py, which needs SCRAM's parser, takes this from here so that the imports go one way)."""
    return (
        isinstance(text, str)
        and len(text) == 35
        and text.startswith("md5")
        and _HEX.issuperset(text[3:])      # (one C call; a generator here stepped 32 times per md5 login)
    )


class ScramError(Exception):
    """A SCRAM exchange failed; str(e) is a short reason for the log."""


class ScramAuthFailed(ScramError):
    """The client's proof was well-formed but wrong (wrong password)."""


@dataclass(frozen=True)
class ScramSecret:
    """A stored SCRAM-SHA-256 verifier (the pg_authid.rolpassword form). `keyed`: HMAC-SHA-256 states keyed with
    stored_key and server_key (KeyedHmac), made for a parsed secret (parse_scram_secret keeps it), None else."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes
    keyed: tuple | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return (
            f"{MECHANISM}${self.iterations}:{_b64(self.salt)}${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


# ---------------------------------------------------------------------------------------------
# primitives


# base64.b64encode without its Python frame (5 calls per SCRAM login)
_b64encode = functools.partial(binascii.b2a_base64, newline=False)


def _b64(data: bytes) -> str:
    return _b64encode(data).decode("ascii")


def _b64decode(text: str | bytes) -> bytes | None:
    """Strict standard base64 (padding required, canonical encoding); None if invalid."""
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError:
        return None
    if not raw or len(raw) % 4:
        return None
    try:
        data = binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if _b64encode(data) != raw:
        return None  # non-canonical trailing bits
    return data


try:
    from _hashlib import hmac_digest as _hmac_digest  # what hmac.digest calls for a named digest
except ImportError:         # a Python built without OpenSSL
    _hmac_digest = hmac.digest
# OpenSSL's one-shot HMAC-SHA-256(key, msg): no Python HMAC object, and neither hmac.digest's frame nor one of our
# own (2 calls per SCRAM login of a client, 2 per SCRAM login to a server)
_hmac = functools.partial(_hmac_digest, digest="sha256")

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class KeyedHmac:
    """HMAC-SHA-256 with one key, for many messages: the SHA-256 states after the key's inner and outer pad blocks
    (RFC 2104) are made once and copied per message. OpenSSL 3's one-shot HMAC costs ~26,000 instructions (most
    of it fetching the algorithm), a copied state ~15,000 (bench/README.md, eleventh run): the stored secret's two
    HMACs are most of a SCRAM login's cryptography."""

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(block.translate(_IPAD))
        self.outer = hashlib.sha256(block.translate(_OPAD))

    def digest(self, msg: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(msg)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


try:
    # CPython's own SHA-256 for short one-shot hashes (H(ClientKey) of every SCRAM login): ~4,000 instructions less
    # than OpenSSL 3's, whose per-call set-up costs more than hashing one block; the same digest
    from _sha256 import sha256 as _sha256
except ImportError:         # a Python built without it
    _sha256 = hashlib.sha256


def _h(data: bytes) -> bytes:
    return _sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    if len(b) != n:
        raise ValueError("_xor: lengths differ")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def _parse_iterations(text: str | bytes) -> int | None:
    """Decimal digits only, 1..2**31-1; None otherwise."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not text or len(text) > 10 or not all("0" <= c <= "9" for c in text):
        return None
    value = int(text)
    if not 1 <= value <= MAX_ITERATIONS:
        return None
    return value


# RFC 5802 'printable' bytes: 0x21..0x7E except ','
_PRINTABLE = bytes(c for c in range(0x21, 0x7F) if c != 0x2C)


def _is_printable_nonce(nonce: bytes) -> bool:
    """RFC 5802 'printable': 0x21..0x7E except ','. (Deleting the printable bytes leaves nothing: one C call,
    not a generator step per byte, ~30 per SCRAM login.)"""
    return bool(nonce) and not nonce.translate(None, _PRINTABLE)


def _new_nonce() -> bytes:
    # (os.urandom is what secrets.token_bytes returns, without its two Python frames)
    return _b64encode(os.urandom(NONCE_RAW_LEN))


def _check_nonce_arg(nonce: bytes | None) -> bytes:
    if nonce is None:
        return _new_nonce()
    if not isinstance(nonce, bytes) or not _is_printable_nonce(nonce):
        raise ValueError("SCRAM nonce must be non-empty printable ASCII without ','")
    return nonce


def _is_extension(attr: bytes) -> bool:
    """attr-val = ALPHA "=" value (value may not contain NUL; ',' is already split off)."""
    return len(attr) >= 2 and (0x41 <= attr[0] <= 0x5A or 0x61 <= attr[0] <= 0x7A) and attr[1:2] == b"="


def _split(data: bytes, what: str) -> list[bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ScramError(f"malformed SCRAM message ({what} is not bytes)")
    data = bytes(data)
    if not data:
        raise ScramError(f"malformed SCRAM message (empty {what})")
    if b"\x00" in data:
        raise ScramError(f"malformed SCRAM message (NUL byte in {what})")
    return data.split(b",")


def _expect(parts: list[bytes], index: int, attr: bytes, what: str) -> bytes:
    if index >= len(parts) or not parts[index].startswith(attr + b"="):
        raise ScramError(f"malformed SCRAM message (expected attribute '{attr.decode()}' in {what})")
    return parts[index][len(attr) + 1 :]


def _check_extensions(parts: list[bytes], what: str) -> None:
    for attr in parts:
        if not _is_extension(attr):
            raise ScramError(f"malformed SCRAM message (garbage at end of {what})")


def _saslname(user: str) -> bytes:
    return user.encode("utf-8", "surrogatepass").replace(b"=", b"=3D").replace(b",", b"=2C")


# ---------------------------------------------------------------------------------------------
# secrets


def parse_scram_secret(text: str) -> ScramSecret | None:
    """Parse 'SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>'; None if it is not one.

    The last SECRET_CACHE_SIZE secrets are remembered (a ScramSecret is immutable, and a changed secret is another
    string): a login asks for its user's secret more than once, and every login of that user asks again."""
    if not isinstance(text, str) or not text.startswith(MECHANISM + "$"):
        return None
    return _parse_scram_secret(text)


SECRET_CACHE_SIZE = 256


@functools.lru_cache(maxsize=SECRET_CACHE_SIZE)
def _parse_scram_secret(text: str) -> ScramSecret | None:
    rest = text[len(MECHANISM) + 1 :]
    params, sep, keys = rest.partition("$")
    if not sep:
        return None
    iter_text, sep, salt_text = params.partition(":")
    if not sep:
        return None
    stored_text, sep, server_text = keys.partition(":")
    if not sep:
        return None
    iterations = _parse_iterations(iter_text)
    salt = _b64decode(salt_text)
    stored_key = _b64decode(stored_text)
    server_key = _b64decode(server_text)
    if iterations is None or not salt or stored_key is None or server_key is None:
        return None
    if len(stored_key) != KEY_LEN or len(server_key) != KEY_LEN:
        return None
    return ScramSecret(iterations, salt, stored_key, server_key, (KeyedHmac(stored_key), KeyedHmac(server_key)))


def scram_keys_from_password(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for a password, after PostgreSQL-style SASLprep."""
    if not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError("SCRAM iteration count must be between 1 and 2147483647")
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), bytes(salt), iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


def _secret_from_password(password: str, salt: bytes, iterations: int) -> ScramSecret:
    client_key, server_key = scram_keys_from_password(password, salt, iterations)
    return ScramSecret(iterations, bytes(salt), _h(client_key), server_key)


def make_scram_secret(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """A SCRAM-SHA-256 secret string for a password (random 16-byte salt unless given)."""
    if salt is None:
        salt = secrets.token_bytes(SALT_LEN)
    if not salt:
        raise ValueError("SCRAM salt must not be empty")
    return str(_secret_from_password(password, salt, iterations))


# ---------------------------------------------------------------------------------------------
# server side


class ScramServer:
    """Server side of SCRAM-SHA-256 (what the pooler plays towards clients).

    Only SCRAM-SHA-256 is advertised, so gs2 flags 'n' and 'y' are accepted and 'p' (channel binding)
    is refused. `secret` is a ScramSecret, a SCRAM secret string, or a plain password (a secret is then
    derived with `salt`, random by default, and `iterations`). An MD5 secret cannot do SCRAM and raises
    ScramError. After a successful proof, client_key/server_key hold the keys usable for pass-through.

    The secret of a plain password is derived (PBKDF2, milliseconds of CPU) only when the client's first
    message arrives, as PgBouncer does: a client that sends its startup packet and leaves costs nothing.
    """

    def __init__(self, secret: ScramSecret | str, *, iterations: int = 4096, nonce: bytes | None = None,
                 salt: bytes | None = None):
        self._password: str | None = None
        if isinstance(secret, ScramSecret):
            self._secret = secret
        elif isinstance(secret, str):
            parsed = parse_scram_secret(secret)
            if parsed is not None:
                self._secret = parsed
            elif is_md5_secret(secret):
                raise ScramError("cannot do SCRAM authentication: password is an MD5 secret")
            else:
                if not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
                    raise ValueError("SCRAM iteration count must be between 1 and 2147483647")
                if salt is not None and not salt:
                    raise ValueError("SCRAM salt must not be empty")
                self._secret = None
                self._password, self._salt, self._iterations = secret, salt, iterations
        else:
            raise TypeError("ScramServer secret must be a ScramSecret or a str")
        # a given nonce is checked now; a random one is drawn when the client's first message needs it
        self._server_nonce = _check_nonce_arg(nonce) if nonce is not None else None
        self._state = "init"
        self._gs2_header = b""
        self._nonce = b""
        self._client_first_bare = b""
        self._server_first = b""
        self.client_key: bytes | None = None
        self.server_key: bytes | None = None

    @property
    def secret(self) -> ScramSecret:
        """The verifier; derived from a plain password on first use."""
        if self._secret is None:
            salt = self._salt if self._salt is not None else secrets.token_bytes(SALT_LEN)
            self._secret = _secret_from_password(self._password, salt, self._iterations)
            self._password = None
        return self._secret

    def _fail(self, reason: str, cls: type[ScramError] = ScramError) -> ScramError:
        self._state = "failed"
        return cls(reason)

    def handle_client_first(self, data: bytes) -> bytes:
        """Parse client-first-message (the SASLInitialResponse payload); return server-first-message."""
        if self._state != "init":
            raise self._fail("SCRAM client-first-message out of order")
        try:
            parts = _split(data, "client-first-message")
            cbind = parts[0]
            if cbind.startswith(b"p="):
                raise ScramError(
                    "client requires SCRAM channel binding (SCRAM-SHA-256-PLUS), which is not supported"
                )
            if cbind not in (b"n", b"y"):
                raise ScramError("malformed SCRAM message (unexpected channel-binding flag)")
            if len(parts) < 2:
                raise ScramError("malformed SCRAM message (comma expected)")
            if parts[1]:
                if parts[1].startswith(b"a="):
                    raise ScramError("client uses authorization identity, but it is not supported")
                raise ScramError("malformed SCRAM message (unexpected attribute in gs2 header)")
            rest = parts[2:]
            if rest and rest[0].startswith(b"m="):
                raise ScramError("client requires an unsupported SCRAM extension")
            if len(rest) >= 2 and rest[0].startswith(b"n=") and rest[1].startswith(b"r="):
                client_nonce = rest[1][2:]      # the usual message (the checks of two _expect calls)
            else:
                _expect(rest, 0, b"n", "client-first-message")  # user name: PostgreSQL ignores it
                client_nonce = _expect(rest, 1, b"r", "client-first-message")
            if not _is_printable_nonce(client_nonce):
                raise ScramError("malformed SCRAM message (non-printable characters in nonce)")
            if len(rest) > 2:
                _check_extensions(rest[2:], "client-first-message")
        except ScramError as e:
            raise self._fail(str(e)) from None
        self._gs2_header = cbind + b",,"
        self._client_first_bare = b",".join(rest)
        if self._server_nonce is None:
            self._server_nonce = _new_nonce()
        self._nonce = client_nonce + self._server_nonce
        s = self.secret
        self._server_first = (
            b"r=" + self._nonce + b",s=" + _b64encode(s.salt) + b",i=" + str(s.iterations).encode()
        )
        self._state = "first"
        return self._server_first

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify client-final-message; return server-final-message ('v=...'). ScramError if wrong."""
        if self._state != "first":
            raise self._fail("SCRAM client-final-message out of order")
        try:
            parts = _split(data, "client-final-message")
            # the usual message starts c=<our gs2 header in base64>,r=<our nonce> (base64 has one canonical
            # form, which _b64decode insists on): known without two _expect and a _b64decode call
            if len(parts) < 2 or parts[0] != b"c=" + _b64encode(self._gs2_header) or \
                    parts[1] != b"r=" + self._nonce:
                cbind = _b64decode(_expect(parts, 0, b"c", "client-final-message"))
                if cbind is None:
                    raise ScramError("malformed SCRAM message (invalid channel-binding data)")
                if cbind != self._gs2_header:
                    raise ScramError("unexpected SCRAM channel-binding attribute in client-final-message")
                if _expect(parts, 1, b"r", "client-final-message") != self._nonce:
                    raise ScramError("SCRAM nonce mismatch")
            if len(parts) < 3 or not parts[-1].startswith(b"p="):
                raise ScramError("malformed SCRAM message (proof expected at end of client-final-message)")
            if len(parts) > 3:
                _check_extensions(parts[2:-1], "client-final-message")
            proof = _b64decode(parts[-1][2:])
            if proof is None or len(proof) != KEY_LEN:
                raise ScramError("malformed SCRAM message (malformed proof in client-final-message)")
        except ScramError as e:
            raise self._fail(str(e)) from None
        without_proof = bytes(data)[: -(len(parts[-1]) + 1)]
        auth_message = self._client_first_bare + b"," + self._server_first + b"," + without_proof
        s = self._secret        # (handle_client_first made it, if it was a password: no property call)
        keyed = s.keyed
        client_key = _xor(proof, keyed[0].digest(auth_message) if keyed else _hmac(s.stored_key, auth_message))
        if not hmac.compare_digest(_h(client_key), s.stored_key):
            raise self._fail("invalid SCRAM client proof (wrong password)", ScramAuthFailed)
        self.client_key = client_key
        self.server_key = s.server_key
        self._state = "done"
        return b"v=" + _b64encode(keyed[1].digest(auth_message) if keyed else _hmac(s.server_key, auth_message))


# ---------------------------------------------------------------------------------------------
# client side


class ScramClient:
    """Client side of SCRAM-SHA-256 (what the pooler plays towards PostgreSQL).

    Give either `password`, or pass-through keys `client_key` + `server_key` taken from a client's
    successful login against the same secret (then salt and iteration count from the server are not
    used). `user` goes into n= (escaped); PostgreSQL ignores it, and '' (like libpq) is fine.
    """

    def __init__(
        self,
        user: str = "",
        *,
        password: str | None = None,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        nonce: bytes | None = None,
    ):
        self.user = user
        have_keys = client_key is not None or server_key is not None
        if have_keys:
            if password is not None:
                raise ValueError("ScramClient takes either a password or client_key/server_key, not both")
            if client_key is None or server_key is None:
                raise ValueError("SCRAM pass-through needs both client_key and server_key")
            if len(client_key) != KEY_LEN or len(server_key) != KEY_LEN:
                raise ValueError("SCRAM keys must be 32 bytes")
        elif password is None:
            raise ValueError("ScramClient needs a password or client_key/server_key")
        elif parse_scram_secret(password) is not None:
            raise ScramError(
                "cannot do SCRAM authentication: password is SCRAM secret but client authentication "
                "did not provide SCRAM keys"
            )
        elif is_md5_secret(password):
            raise ScramError("cannot do SCRAM authentication: wrong password type")
        self._password = password
        self._client_key = bytes(client_key) if client_key is not None else None
        self._server_key = bytes(server_key) if server_key is not None else None
        self._client_nonce = _check_nonce_arg(nonce)
        self._client_first_bare = b"n=" + _saslname(user) + b",r=" + self._client_nonce
        self._state = "init"
        self._server_signature = b""

    def _fail(self, reason: str) -> ScramError:
        self._state = "failed"
        return ScramError(reason)

    def client_first(self) -> bytes:
        """client-first-message for SASLInitialResponse: 'n,,n=,r=<nonce>'."""
        if self._state != "init":
            raise self._fail("SCRAM client-first-message out of order")
        self._state = "first"
        return b"n,," + self._client_first_bare

    def client_final(self, server_first: bytes) -> bytes:
        """Answer server-first-message (AuthenticationSASLContinue) with client-final-message."""
        if self._state != "first":
            raise self._fail("SCRAM server-first-message out of order")
        try:
            parts = _split(server_first, "server-first-message")
            if parts[0].startswith(b"m="):
                raise ScramError("server requires an unsupported SCRAM extension")
            nonce = _expect(parts, 0, b"r", "server-first-message")
            if (
                len(nonce) <= len(self._client_nonce)
                or not nonce.startswith(self._client_nonce)
                or not _is_printable_nonce(nonce)
            ):
                raise ScramError("invalid SCRAM response (nonce mismatch)")
            salt = _b64decode(_expect(parts, 1, b"s", "server-first-message"))
            if not salt:
                raise ScramError("malformed SCRAM message (invalid salt)")
            iterations = _parse_iterations(_expect(parts, 2, b"i", "server-first-message"))
            if iterations is None:
                raise ScramError("malformed SCRAM message (invalid iteration count)")
            _check_extensions(parts[3:], "server-first-message")
        except ScramError as e:
            raise self._fail(str(e)) from None
        if self._client_key is not None and self._server_key is not None:
            client_key, server_key = self._client_key, self._server_key
        else:
            assert self._password is not None
            client_key, server_key = scram_keys_from_password(self._password, salt, iterations)
        without_proof = b"c=biws,r=" + nonce  # biws = base64("n,,")
        auth_message = self._client_first_bare + b"," + bytes(server_first) + b"," + without_proof
        proof = _xor(client_key, _hmac(_h(client_key), auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        self._state = "final"
        return without_proof + b",p=" + _b64encode(proof)

    def verify_server_final(self, data: bytes) -> None:
        """Check server-final-message (AuthenticationSASLFinal); ScramError unless the signature is right."""
        if self._state != "final":
            raise self._fail("SCRAM server-final-message out of order")
        try:
            parts = _split(data, "server-final-message")
            if parts[0].startswith(b"e="):
                reason = parts[0][2:].decode("ascii", "replace")
                raise ScramError(f"failed to verify server signature (server error: {reason})")
            value = _expect(parts, 0, b"v", "server-final-message")
            _check_extensions(parts[1:], "server-final-message")
            signature = _b64decode(value)
            if signature is None or len(signature) != KEY_LEN:
                raise ScramError("failed to verify server signature (malformed server-final-message)")
        except ScramError as e:
            raise self._fail(str(e)) from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise self._fail("invalid server signature")
        self._state = "done"
