"""Encoders for the protocol messages the pooler originates itself (errors, auth, console rows)."""

import functools
import struct

_I32 = struct.Struct("!I")
_HDR = struct.Struct("!cI")


def msg(type_char: bytes, body: bytes = b"") -> bytes:
    return _HDR.pack(type_char, len(body) + 4) + body


def cstr(s: str | bytes) -> bytes:
    if isinstance(s, str):
        s = s.encode()
    return s + b"\0"


def _field(s: str) -> bytes:
    """An error/notice field: a C string, so text from a client is cut at a NUL it may carry (a raw NUL would
    end the field early and make the rest of the message garbage)."""
    return s.encode().split(b"\0", 1)[0] + b"\0"


def _fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + _field(message)
    if detail:
        body += b"D" + _field(detail)
    if hint:
        body += b"H" + _field(hint)
    return body + b"\0"


def error_response(message: str, sqlstate: str = "08P01", severity: str = "FATAL",
                   detail: str | None = None, hint: str | None = None) -> bytes:
    return msg(b"E", _fields(severity, sqlstate, message, detail, hint))


def notice_response(message: str, detail: str | None = None, sqlstate: str = "00000",
                    severity: str = "NOTICE") -> bytes:
    return msg(b"N", _fields(severity, sqlstate, message, detail, None))


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return msg(b"R", _I32.pack(code) + extra)


@functools.lru_cache(maxsize=4096)
def parameter_status(name: str, value: str) -> bytes:
    """Cached: every login sends the same dozen or so (name, value) pairs."""
    return msg(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return msg(b"K", struct.pack("!II", pid, key))


def ready_for_query(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def command_complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def empty_query_response() -> bytes:
    return msg(b"I")


def row_description(columns: list[tuple[str, int]]) -> bytes:
    """columns: (name, type oid); all values are sent in text format."""
    parts = [struct.pack("!H", len(columns))]
    for name, oid in columns:
        size = {23: 4, 20: 8}.get(oid, -1)
        parts.append(cstr(name) + struct.pack("!IhIhih", 0, 0, oid, size, -1, 0))
    return msg(b"T", b"".join(parts))


def data_row(values: list) -> bytes:
    parts = [struct.pack("!H", len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_I32.pack(len(b)) + b)
    return msg(b"D", b"".join(parts))


def negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    body = struct.pack("!II", newest_minor, len(unsupported)) + b"".join(cstr(o) for o in unsupported)
    return msg(b"v", body)


# --- frontend messages (the pooler as a client of PostgreSQL) ---

def startup_message(params: dict[str, str], version: int = 196608) -> bytes:
    body = _I32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!II", 8, 80877103)


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!III", 16, 80877102, pid) + struct.pack("!I", key)


def password_message(data: bytes) -> bytes:
    return msg(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return msg(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def terminate() -> bytes:
    return msg(b"X")


def sync() -> bytes:
    return msg(b"S")
