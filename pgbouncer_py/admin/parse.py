"""Console command text, parsed without I/O: the command word and argument, SET, SHUTDOWN, PAUSE ... TIMEOUT, and
the error a command answers with (AdminError)."""

import re

_WORD = r'(?:[0-9a-z_]+|"[^"]*")'
_CMD_RE = re.compile(rf"^\s*({_WORD})(?:\s+({_WORD}))?\s*(?:;\s*)?$", re.IGNORECASE)
_SET_RE = re.compile(r"^\s*set\s+([0-9a-z_]+|\"[^\"]*\")\s*(?:=|\s+to\s+)\s*('(?:[^']|'')*'|[^\s;']+)\s*(?:;\s*)?$",
                     re.IGNORECASE | re.DOTALL)
_SHUTDOWN_RE = re.compile(r"^\s*shutdown(?:\s+(wait_for_servers|wait_for_clients))?\s*(?:;\s*)?$", re.IGNORECASE)
# pgbouncer-py extension (docs/extensions.md): PAUSE [db] TIMEOUT seconds [FORCE]
_PAUSE_TIMEOUT_RE = re.compile(rf"^\s*pause(?:\s+({_WORD}))?\s+timeout\s+([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                               r"(?:\s+(force))?\s*(?:;\s*)?$", re.IGNORECASE)

class AdminError(Exception):
    """An error answered to the console client as ERROR 08P01 (the session goes on)."""

    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message)
        self.sqlstate = sqlstate


def unquote(word: str | None) -> str | None:
    if word is None:
        return None
    if word.startswith('"') and word.endswith('"'):
        return word[1:-1]
    return word.lower()


def parse_command(sql: str) -> tuple[str, str | None] | None:
    m = _CMD_RE.match(sql)
    if m is None:
        return None
    return unquote(m.group(1)), unquote(m.group(2))


def parse_set(sql: str) -> tuple[str, str] | None:
    m = _SET_RE.match(sql)
    if m is None:
        return None
    key = unquote(m.group(1))
    val = m.group(2)
    if val.startswith("'"):
        val = val[1:-1].replace("''", "'")
    return key, val


def parse_pause_timeout(sql: str) -> tuple[str | None, float, bool] | None:
    """(database or None, seconds, force) for PAUSE [db] TIMEOUT n [FORCE], else None."""
    m = _PAUSE_TIMEOUT_RE.match(sql)
    if m is None:
        return None
    return unquote(m.group(1)), float(m.group(2)), m.group(3) is not None


def parse_shutdown(sql: str) -> str | None:
    """'' for plain SHUTDOWN, the mode in lower case, or None when it is not a SHUTDOWN."""
    m = _SHUTDOWN_RE.match(sql)
    if m is None:
        return None
    return (m.group(1) or "").lower()
