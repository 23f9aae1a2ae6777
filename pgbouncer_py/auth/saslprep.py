"""SASLprep (RFC 4013) of SCRAM passwords, with PostgreSQL's fallback rules.

Pure ASCII passes unchanged; a password that SASLprep rejects is used as its raw UTF-8 bytes.
"""

from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["saslprep", "saslprep_strict"]


def _prohibited(ch: str) -> bool:
    """RFC 4013 section 2.3 output prohibitions plus RFC 3454 A.1 (unassigned code points)."""
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep_strict(text: str) -> str | None:
    """Apply SASLprep to a non-empty string; None when the result would be prohibited or empty.

    Pure ASCII input is returned as is (PostgreSQL skips every step for it, control characters included).
    """
    if text.isascii():
        return text
    mapped = []
    for ch in text:
        if stringprep.in_table_c12(ch):
            mapped.append(" ")  # non-ASCII space -> SPACE
        elif stringprep.in_table_b1(ch):
            continue  # commonly mapped to nothing
        else:
            mapped.append(ch)
    if not mapped:
        return None  # PostgreSQL refuses an empty prepared password
    out = unicodedata.normalize("NFKC", "".join(mapped))
    if not out:
        return None
    if any(_prohibited(ch) for ch in out):
        return None
    has_randal = any(stringprep.in_table_d1(ch) for ch in out)
    if has_randal:
        if any(stringprep.in_table_d2(ch) for ch in out):
            return None
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            return None
    return out


def saslprep(password: str | bytes) -> bytes:
    """Bytes to feed into SCRAM's Hi(): the SASLprep'ed password, or its raw bytes if SASLprep fails.

    A str is encoded as UTF-8 (lone surrogates pass through via 'surrogatepass'); bytes that are not
    valid UTF-8 are used unchanged, as PostgreSQL does.
    """
    if isinstance(password, bytes):
        raw = password
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    else:
        text = password
        raw = password.encode("utf-8", "surrogatepass")
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
            return raw  # not valid UTF-8 as a byte string
    prepared = saslprep_strict(text)
    if prepared is None:
        return raw
    return prepared.encode("utf-8")
