"""auth_file (userlist.txt) reader: `"user" "secret"` lines, `""` escapes, `;` comments.

Like PgBouncer, a malformed line is logged and stops parsing; the users read so far are kept.
"""

from __future__ import annotations

import re

from .ini import ConfigError

MAX_USERNAME = 128  # bytes, as written between the quotes (escapes included)
MAX_PASSWORD = 65531

_MD5_RE = re.compile(r"md5[0-9a-f]{32}\Z")
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_SCRAM_RE = re.compile(rf"SCRAM-SHA-256\$[0-9]+:{_B64}\${_B64}:{_B64}\Z")


def _closing_quote(text: str, i: int) -> int:
    """Index of the quote ending a field that starts at i ('""' is skipped as an escape); -1 if none."""
    while True:
        j = text.find('"', i)
        if j < 0:
            return -1
        if text[j + 1 : j + 2] == '"':
            i = j + 2
            continue
        return j


def _blen(s: str) -> int:
    return len(s.encode("utf-8", errors="surrogateescape"))


def parse_userlist(text: str, errors: list[str] | None = None) -> dict[str, str]:
    """user -> secret text. Problems are appended to `errors` (PgBouncer's log texts), not raised."""
    users: dict[str, str] = {}

    def fail(msg: str) -> dict[str, str]:
        if errors is not None:
            errors.append(msg)
        return users

    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return users
        if text[i] == ";":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text[i] != '"':
            return fail("broken auth file")
        ustart = i + 1
        uend = _closing_quote(text, ustart)
        if uend < 0:
            return fail("broken auth file")
        raw_user = text[ustart:uend]
        if _blen(raw_user) >= MAX_USERNAME:
            return fail("username too long in auth file")
        pq = text.find('"', uend + 1)  # the password's opening quote may be anywhere after
        if pq < 0:
            return fail("broken auth file")
        pstart = pq + 1
        pend = _closing_quote(text, pstart)
        if pend < 0:
            return fail("broken auth file")
        raw_pw = text[pstart:pend]
        if _blen(raw_pw) >= MAX_PASSWORD:
            return fail("password too long in auth file")
        users[raw_user.replace('""', '"')] = raw_pw.replace('""', '"')
        j = text.find("\n", pend + 1)  # rest of the line is ignored
        i = n if j < 0 else j


def load_auth_file(path: str, errors: list[str] | None = None) -> dict[str, str]:
    """Read and parse an auth_file; ConfigError if it cannot be opened."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"could not open auth_file {path}: {e.strerror}") from None
    return parse_userlist(data.decode("utf-8", errors="surrogateescape"), errors)


def secret_kind(secret: str) -> str:
    """'md5' for md5+32 hex digits, 'scram' for a well-formed SCRAM-SHA-256 secret, else 'plain'."""
    if _MD5_RE.match(secret):
        return "md5"
    if _SCRAM_RE.match(secret):
        return "scram"
    return "plain"
