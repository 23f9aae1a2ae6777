"""Decoders for the few messages the pooler inspects; every malformed input raises ProtocolError."""

import struct

from pgbouncer_py.proto import constants as C

_I32 = struct.Struct("!I")
_HDR = struct.Struct("!cI")


class ProtocolError(Exception):
    """A malformed packet; str(e) is PgBouncer's text for the client where one exists."""


def _cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("missing string terminator")
    try:
        return body[pos:end].decode(), end + 1
    except UnicodeDecodeError:
        return body[pos:end].decode("latin-1"), end + 1


def parse_startup_packet(pkt: bytes) -> tuple[int, dict[str, str] | tuple[int, int] | None]:
    """pkt is the whole packet including the length word. Returns (code, payload):
    protocol version -> dict of parameters; CANCEL -> (pid, key); SSL/GSSENC -> None."""
    if len(pkt) < 8:
        raise ProtocolError("bad startup packet")
    code = _I32.unpack_from(pkt, 4)[0]
    if code == C.CANCEL_REQUEST_CODE:
        if len(pkt) != 16:
            raise ProtocolError("bad cancel request")
        return code, struct.unpack_from("!II", pkt, 8)
    if code in (C.SSL_REQUEST_CODE, C.GSSENC_REQUEST_CODE):
        if len(pkt) != 8:
            raise ProtocolError("bad startup packet")
        return code, None
    if code >> 16 != 3:
        if code >> 16 == 2:
            raise ProtocolError("old V2 protocol not supported")
        raise ProtocolError("unsupported protocol version")
    if pkt[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    params: dict[str, str] = {}
    # the C strings after the version word (the last one ends at the packet's final NUL): name, value, ...;
    # an empty name, or a name that is the last string, is a layout error; an empty last string ends the list
    raw = bytes(pkt[8:-1])
    if raw.isascii():
        # the usual packet: decoded at once (a NUL splits no ASCII text), not string by string (~12 calls)
        strings = raw.decode().split("\0")
    else:
        strings = [_text(b) for b in raw.split(b"\0")]
    n = len(strings)
    i = 0
    while i < n:
        key = strings[i]
        if i == n - 1:
            if key:
                raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
            break
        if not key:
            raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
        params[key] = strings[i + 1]
        i += 2
    return code, params


def _text(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("latin-1")


OPTIONS_SYNTAX = "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed"


def parse_options(text: str):
    """The `options` startup parameter, read as PgBouncer 1.24 reads it: items `-c name=value`, `-cname=value` or
    `--name=value`, separated by one or more spaces (only spaces; leading ones are skipped, a trailing one is an
    error); in a value a backslash takes the next character as is (so `\\ ` is a space inside it, a final lone
    backslash is dropped). Yields (name, value) in order, so the caller can act on each before a later error;
    a malformed item raises ProtocolError(OPTIONS_SYNTAX)."""
    pos, n = 0, len(text)
    while pos < n:
        while pos < n and text[pos] == " ":
            pos += 1
        if text.startswith("-c", pos):
            pos += 2
            while pos < n and text[pos] == " ":
                pos += 1
        elif text.startswith("--", pos):
            pos += 2
        else:
            raise ProtocolError(OPTIONS_SYNTAX)
        eq = text.find("=", pos)
        if eq < 0:
            raise ProtocolError(OPTIONS_SYNTAX)
        name = text[pos:eq]
        pos = eq + 1
        value = []
        while pos < n and text[pos] != " ":
            if text[pos] == "\\":
                pos += 1
                if pos == n:
                    break
            value.append(text[pos])
            pos += 1
        yield name, "".join(value)


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body, keyed by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n and body[pos] != 0:
        code = chr(body[pos])
        value, pos = _cstr(body, pos + 1)
        fields[code] = value
    return fields


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _cstr(body, 0)
    value, _ = _cstr(body, pos)
    return name, value


def parse_auth_request(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise ProtocolError("bad auth packet")
    return _I32.unpack_from(body, 0)[0], body[4:]


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    return [m.decode("latin-1") for m in data.split(b"\0") if m]


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes]:
    mech, pos = _cstr(body, 0)
    if len(body) < pos + 4:
        raise ProtocolError("malformed SASLInitialResponse")
    n = _I32.unpack_from(body, pos)[0]
    pos += 4
    if n == 0xFFFFFFFF:
        return mech, b""
    if len(body) != pos + n:
        raise ProtocolError("malformed SASLInitialResponse")
    return mech, body[pos:pos + n]


def parse_password(body: bytes) -> str:
    if not body or body[-1] != 0:
        raise ProtocolError("malformed password packet")
    return body[:-1].decode("utf-8", "replace")


def parse_query(body: bytes) -> str:
    """A Query's text up to its first NUL, as PgBouncer reads it (what follows is ignored); no NUL at all is an
    incomplete query."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolError("incomplete query")
    return body[:end].decode("utf-8", "replace")


def parse_command_tag(body: bytes) -> str:
    return body.rstrip(b"\0").decode("latin-1")


class MessageReader:
    """Accumulates bytes and yields complete (type, body) messages; for the slow (login) paths only."""

    __slots__ = ("buf", "drop", "max_size", "oversize", "skip_oversize")

    def __init__(self, max_size: int = 2147483647, skip_oversize: bool = False):
        """skip_oversize: a message longer than max_size is read to its end and thrown away as it arrives, then
        reported as (type, None); otherwise it raises "packet too large"."""
        self.buf = bytearray()
        self.max_size = max_size
        self.skip_oversize = skip_oversize
        self.drop = 0
        self.oversize = 0

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> tuple[int, bytes | None] | None:
        buf = self.buf
        if self.drop:
            n = min(self.drop, len(buf))
            del buf[:n]
            self.drop -= n
            if self.drop:
                return None
            return self.oversize, None
        if len(buf) < 5:
            return None
        mtype, length = _HDR.unpack_from(buf, 0)
        if length < 4:
            raise ProtocolError("invalid packet length")
        if length > self.max_size:
            if not self.skip_oversize:
                raise ProtocolError("packet too large")
            self.oversize = mtype[0]
            self.drop = length + 1
            return self.next()
        if len(buf) < length + 1:
            return None
        body = bytes(buf[5:length + 1])
        del buf[:length + 1]
        return mtype[0], body

    def take_rest(self) -> bytes:
        rest = bytes(self.buf)
        self.buf.clear()
        return rest
