"""PgBouncer-flavoured ini reader: sections, `;`/`#` comments, quoted keys and recursive %include.

Produces a flat list of IniLine records; it knows section names but not what settings mean.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

SECTIONS = ("pgbouncer", "databases", "users", "peers")
MAX_INCLUDE_DEPTH = 10  # files included inside included files, counting from the main file

_KEY_RE = re.compile(r"[A-Za-z0-9_.*-]*")
_INCLUDE_RE = re.compile(r"%include[ \t\f\v](.*)\Z", re.S)


class ConfigError(Exception):
    """A configuration problem; str() is PgBouncer's (first) log text, .messages all lines in order."""

    logfile: str | None = None   # load_config: the logfile setting read before the problem, if any

    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages: list[str] = list(messages)

    def __str__(self) -> str:
        return self.messages[0] if self.messages else ""

    def chained(self, message: str) -> ConfigError:
        """A copy with one more log line appended (used as the error bubbles out of %include files)."""
        return ConfigError(*self.messages, message)


@dataclass(frozen=True)
class IniLine:
    """One meaningful line. A section header has key None and value None.

    `includes` lists the (file, lineno) of the %include lines that led here, outermost first.
    """

    section: str | None
    key: str | None
    value: str | None
    file: str
    lineno: int
    includes: tuple[tuple[str, int], ...] = ()

    def error(self, *messages: str) -> ConfigError:
        """ConfigError for a problem on this line, chained out through the %include lines like PgBouncer."""
        err = ConfigError(*messages)
        for file, lineno in reversed(self.includes):
            err = err.chained(_include_failed(file, lineno))
        return err


def _include_failed(file: str, lineno: int) -> str:
    return f"error processing include file in configuration ({file}:{lineno}), stopping loading"


def _syntax_error(file: str, lineno: int) -> ConfigError:
    return ConfigError(f"syntax error in configuration ({file}:{lineno}), stopping loading")


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f'could not load file "{path}": {e.strerror}') from None
    return data.decode("utf-8", errors="surrogateescape")


def _parse_key(rest: str, file: str, lineno: int) -> tuple[str, str]:
    """Split `key = value` (key bare or quoted); returns (key, text after '=')."""
    if rest[:1] in ("'", '"'):
        q = rest[0]
        i, out = 1, []
        while True:
            j = rest.find(q, i)
            if j < 0:
                raise _syntax_error(file, lineno)
            out.append(rest[i:j])
            if rest[j + 1 : j + 2] == q:  # doubled quote = literal quote
                out.append(q)
                i = j + 2
                continue
            key, rest = "".join(out), rest[j + 1 :]
            break
    else:
        key = _KEY_RE.match(rest).group(0)
        rest = rest[len(key) :]
    rest = rest.lstrip()
    if not rest.startswith("="):
        raise _syntax_error(file, lineno)
    return key, rest[1:]


def _read(path: str, chain: tuple[tuple[str, int], ...], section: list[str | None]) -> Iterator[IniLine]:
    text = _read_text(path)
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.lstrip()
        if not line or line[0] in ";#":
            continue
        if line[0] == "[":
            end = line.find("]")
            if end < 0 or line[end + 1 :].strip():
                raise _syntax_error(path, lineno)
            name = line[1:end]
            if name not in SECTIONS:
                raise ConfigError(f'invalid section "{name}" in configuration ({path}:{lineno})')
            section[0] = name
            yield IniLine(name, None, None, path, lineno, chain)
            continue
        if line[0] == "%":
            m = _INCLUDE_RE.match(line.rstrip("\r"))
            fname = m.group(1).strip() if m else ""
            if not fname:
                raise _syntax_error(path, lineno)
            if len(chain) >= MAX_INCLUDE_DEPTH:
                raise ConfigError(f"include nesting level too deep ({path}:{lineno}), stopping loading")
            try:
                yield from _read(fname, (*chain, (path, lineno)), section)
            except ConfigError as e:
                raise e.chained(_include_failed(path, lineno)) from None
            continue
        key, value = _parse_key(line, path, lineno)
        yield IniLine(section[0], key, value.strip(), path, lineno, chain)


def iter_ini(path: str) -> Iterator[IniLine]:
    """Like read_ini, but lazily, so a caller sees errors in file order (as PgBouncer reports them)."""
    yield from _read(path, (), [None])


def read_ini(path: str) -> list[IniLine]:
    """Read `path` and everything it %includes (relative names against the CWD, like PgBouncer).

    Raises ConfigError with PgBouncer's texts for unreadable files, syntax errors, unknown sections
    and too-deep nesting. Keys outside any section come back with section None.
    """
    return list(iter_ini(path))
