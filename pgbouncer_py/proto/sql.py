"""Sans-I/O recognition of SQL-level PREPARE / EXECUTE / DEALLOCATE in a simple Query's text.

Only what the pooler needs: the command, the statement name (normalised as PostgreSQL does: unquoted names
folded to lower case, quoted names with "" undone, truncated to 63 bytes), where the name sits in the text
(it is the only part rewritten) and, for PREPARE, the rest of the statement, which is the sharing key.
A text that is not one of those commands gives None and goes to the server untouched."""

from dataclasses import dataclass

NAMEDATALEN = 64

_SPACE = frozenset(b" \t\n\r\f\v")
_IDENT_START = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_") | frozenset(range(0x80, 0x100))
_IDENT = _IDENT_START | frozenset(b"0123456789$")
_DOLLAR_TAG = _IDENT_START | frozenset(b"0123456789")
# first byte of a Query text that may begin one of the three commands (after optional blanks or comments)
FIRST_BYTES = frozenset(b"PpEeDd \t\n\r\f\v-/")
_KEYWORDS = (b"prepare", b"execute", b"deallocate")


class SqlError(Exception):
    """The text uses the commands in a way the pooler cannot rewrite safely; str(e) says why."""


@dataclass(frozen=True)
class Command:
    kind: str                  # "prepare", "execute", "deallocate" or "deallocate all"
    name: bytes = b""          # normalised statement name
    name_start: int = 0        # the name's span in the text (bytes), replaced when rewriting
    name_end: int = 0
    rest: bytes = b""          # PREPARE: text after the name up to the end of the statement (the sharing key)

    def rewrite(self, text: bytes, new_name: bytes) -> bytes:
        return text[:self.name_start] + new_name + text[self.name_end:]


def _skip_blank(s: bytes, i: int, n: int) -> int:
    """Skip white space and comments (-- to end of line, nested /* */). An unterminated comment runs to n."""
    while i < n:
        c = s[i]
        if c in _SPACE:
            i += 1
        elif c == 45 and i + 1 < n and s[i + 1] == 45:             # --
            j = s.find(b"\n", i)
            i = n if j < 0 else j + 1
        elif c == 47 and i + 1 < n and s[i + 1] == 42:             # /*
            depth = 1
            i += 2
            while i < n and depth:
                if s.startswith(b"/*", i):
                    depth += 1
                    i += 2
                elif s.startswith(b"*/", i):
                    depth -= 1
                    i += 2
                else:
                    i += 1
        else:
            break
    return i


def _word(s: bytes, i: int, n: int) -> int:
    while i < n and s[i] in _IDENT:
        i += 1
    return i


def might_start(s: bytes, i: int, n: int) -> bool:
    """HOT filter: can the Query text at s[i:n] be one of the three commands? True when unsure (cut text)."""
    i = _skip_blank(s, i, n)
    if i >= n:
        return True
    j = _word(s, i, min(n, i + 11))
    w = s[i:j].lower()
    if j >= n and any(k.startswith(w) for k in _KEYWORDS):
        return True
    return w in _KEYWORDS


def _name(s: bytes, i: int, n: int) -> tuple[bytes, int] | None:
    """An identifier at s[i]: (normalised name, end offset), or None when there is none."""
    if i >= n:
        return None
    c = s[i]
    if c == 34:                                                     # "quoted"
        out = bytearray()
        j = i + 1
        while True:
            k = s.find(b'"', j, n)
            if k < 0:
                return None
            out += s[j:k]
            if k + 1 < n and s[k + 1] == 34:
                out.append(34)
                j = k + 2
                continue
            end = k + 1
            break
        if not out:
            return None                                             # zero-length delimited identifier
        return _truncate(bytes(out)), end
    if c in _IDENT_START:
        if c in (85, 117) and s.startswith(b"&", i + 1):           # U&"..." identifiers
            raise SqlError("U& identifiers as prepared statement names are not supported")
        end = _word(s, i, n)
        return _truncate(s[i:end].lower() if s[i:end].isascii() else _fold_ascii(s[i:end])), end
    return None


def _fold_ascii(b: bytes) -> bytes:
    return bytes(c + 32 if 65 <= c <= 90 else c for c in b)


def _truncate(name: bytes) -> bytes:
    if len(name) < NAMEDATALEN:
        return name
    cut = NAMEDATALEN - 1
    while cut and (name[cut] & 0xC0) == 0x80:                      # keep whole UTF-8 characters
        cut -= 1
    return name[:cut]


def _statement_end(s: bytes, i: int, n: int, scs: bool) -> int:
    """Offset of the ';' ending the statement that continues at s[i] (or n), skipping strings and comments."""
    while i < n:
        c = s[i]
        if c == 59:                                                 # ;
            return i
        if c == 39:                                                 # '...'
            esc = not scs or (i > 0 and s[i - 1] in b"eE" and (i < 2 or s[i - 2] not in _IDENT))
            i += 1
            while i < n:
                d = s[i]
                if d == 92 and esc:
                    i += 2
                    continue
                if d == 39:
                    if i + 1 < n and s[i + 1] == 39:
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif c == 34:                                               # "identifier"
            k = s.find(b'"', i + 1, n)
            while k >= 0 and k + 1 < n and s[k + 1] == 34:
                k = s.find(b'"', k + 2, n)
            i = n if k < 0 else k + 1
        elif c == 36 and (i == 0 or s[i - 1] not in _IDENT):        # $tag$...$tag$ (not $1, not ident$)
            j = i + 1
            while j < n and s[j] in _DOLLAR_TAG:
                j += 1
            if j < n and s[j] == 36 and (j == i + 1 or s[i + 1] not in b"0123456789"):
                tag = s[i:j + 1]
                k = s.find(tag, j + 1, n)
                i = n if k < 0 else k + len(tag)
            else:
                i = j
        elif (c == 45 and s.startswith(b"--", i)) or (c == 47 and s.startswith(b"/*", i)):
            i = _skip_blank(s, i, n)
        elif c in _IDENT:
            i = _word(s, i, n)
        else:
            i += 1
    return n


def _only_blank_after(s: bytes, i: int, n: int) -> bool:
    while True:
        i = _skip_blank(s, i, n)
        if i < n and s[i] == 59:
            i += 1
            continue
        return i >= n


def parse(text: bytes, scs: bool = True) -> Command | None:
    """Recognise the command in a Query's text (without the trailing NUL).

    None: not PREPARE/EXECUTE/DEALLOCATE, or malformed enough that PostgreSQL rejects it before running
    anything (then the untouched text gets PostgreSQL's own syntax error). SqlError: a form the pooler
    cannot rewrite (several statements in one Query, U& names)."""
    n = len(text)
    i = _skip_blank(text, 0, n)
    j = _word(text, i, n)
    kw = text[i:j].lower()
    if kw not in _KEYWORDS:
        return None
    i = _skip_blank(text, j, n)
    if kw == b"deallocate":
        j = _word(text, i, n)
        if text[i:j].lower() == b"prepare":
            i = _skip_blank(text, j, n)
            j = _word(text, i, n)
        if text[i:j].lower() == b"all":
            return Command("deallocate all") if _only_blank_after(text, j, n) else None
    got = _name(text, i, n)
    if got is None:
        return None
    name, name_end = got
    end = _statement_end(text, name_end, n, scs)
    if not _only_blank_after(text, end, n):
        raise SqlError(f"{kw.decode().upper()} must be the only statement of its query string "
                       "with prepared statement tracking in transaction pooling")
    if kw == b"deallocate":
        return Command("deallocate", name, i, name_end) if _only_blank_after(text, name_end, n) else None
    body_end = end
    while body_end > name_end and text[body_end - 1] in _SPACE:
        body_end -= 1
    return Command(kw.decode(), name, i, name_end, text[name_end:body_end] if kw == b"prepare" else b"")
