"""PostgreSQL MD5 password authentication: secrets, client responses and their verification.

Sans-I/O; secrets are 'md5' + hex(md5(password + user)), responses add the 4-byte salt.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from pgbouncer_py.auth.scram import is_md5_secret, parse_scram_secret

try:
    # CPython's own MD5 for the hash of every md5 login: ~2,300 instructions less than OpenSSL 3's (its per-call
    # set-up costs more than hashing one block); the same digest
    from _md5 import md5 as _md5
except ImportError:         # a Python built without it
    _md5 = hashlib.md5

__all__ = ["is_md5_secret", "md5_check", "md5_response", "md5_secret", "md5_verify"]


def _b(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogatepass")


def md5_secret(password: str | bytes, user: str | bytes) -> str:
    """The stored form of a password: 'md5' + hex(md5(password + user))."""
    return "md5" + hashlib.md5(_b(password) + _b(user)).hexdigest()


def md5_response(secret_or_password: str, user: str, salt: bytes) -> str:
    """What a client sends for AuthenticationMD5Password with this 4-byte salt.

    Takes a plain password, or an MD5 secret (then the first hashing step is already done).
    """
    if not isinstance(salt, bytes | bytearray) or len(salt) != 4:
        raise ValueError("MD5 salt must be 4 bytes")
    return "md5" + hashlib.md5(_first_step(secret_or_password, user) + bytes(salt)).hexdigest()


@functools.lru_cache(maxsize=1024)
def _first_step(secret_or_password: str, user: str) -> bytes:
    """The hex digest of md5(password + user) as bytes: the same for every login of a user (remembered)."""
    if is_md5_secret(secret_or_password):
        return secret_or_password[3:].encode("ascii")
    return md5_secret(secret_or_password, user)[3:].encode("ascii")


def md5_verify(stored: str, user: str, salt: bytes, response: str) -> bool:
    """Check a client's MD5 response against a stored plain password or MD5 secret (constant time).

    A SCRAM secret cannot verify an MD5 response: that raises ValueError (the caller must use SCRAM).
    """
    if stored.startswith("SCRAM-SHA-256$") and parse_scram_secret(stored) is not None:
        raise ValueError("cannot verify an MD5 response against a SCRAM secret")
    expected = md5_response(stored, user, salt).encode("ascii")
    if isinstance(response, bytes):
        got = response
    elif isinstance(response, str):
        got = response.encode("utf-8", "surrogatepass")
    else:
        return False
    return hmac.compare_digest(expected, got)


def md5_check(stored: str, user: str, salt: bytes, response: bytes) -> bool:
    """md5_verify for a client login, whose method chose MD5 because `stored` is not a SCRAM secret: `response` is
    the bytes the client sent, without the NUL (the answer is the same as md5_verify's on their text: anything
    but ASCII fails both). Three calls less per md5 login."""
    expected = b"md5" + _md5(_first_step(stored, user) + salt).hexdigest().encode("ascii")
    return hmac.compare_digest(expected, response)
