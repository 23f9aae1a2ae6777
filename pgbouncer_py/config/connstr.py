"""The `key=value key='quoted '' value'` strings used by [databases], [users] and [peers] entries."""

from __future__ import annotations

import re

from .ini import ConfigError

_WS = " \t\n\r\f\v"
_ATOI_RE = re.compile(r"[ \t\n\r\f\v]*([+-]?\d+)")

SYNTAX_DB = "syntax error in connection string"
SYNTAX_USER = "syntax error in user settings"


def atoi(text: str) -> int:
    """C atoi(): leading blanks, optional sign, digits; anything else gives 0 (wrapped to 32 bits)."""
    m = _ATOI_RE.match(text)
    if not m:
        return 0
    v = int(m.group(1)) & 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


def parse_connstr(text: str, *, syntax_message: str = SYNTAX_DB) -> dict[str, str]:
    """Parse into an ordered dict (a repeated key keeps its last value).

    Keys end at blank or '='; values are either single-quoted ('' is a literal quote; anything glued
    after the closing quote is dropped) or run up to the next space (tabs belong to the value, as in
    PgBouncer). A key without '=' or an empty value is a syntax error.
    """
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WS:
            i += 1
        if i >= n:
            return out
        start = i
        while i < n and text[i] != "=" and text[i] not in _WS:
            i += 1
        key = text[start:i]
        while i < n and text[i] in _WS:
            i += 1
        if i >= n or text[i] != "=":
            raise ConfigError(syntax_message)
        i += 1
        while i < n and text[i] in _WS:
            i += 1
        if i >= n:
            raise ConfigError(syntax_message)
        if text[i] == "'":
            i += 1
            parts = []
            while True:
                j = text.find("'", i)
                if j < 0:
                    raise ConfigError(syntax_message)
                parts.append(text[i:j])
                if text[j + 1 : j + 2] == "'":
                    parts.append("'")
                    i = j + 2
                    continue
                i = j + 1
                break
            value = "".join(parts)
            while i < n and text[i] != " ":
                i += 1
        else:
            j = text.find(" ", i)
            j = n if j < 0 else j
            value, i = text[i:j], j
        if not value:
            raise ConfigError(syntax_message)
        out[key] = value
