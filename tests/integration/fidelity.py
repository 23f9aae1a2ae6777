"""Helpers for the drop-in fidelity tests: a raw login that reports the pooler's exact answer (message and
SQLSTATE, which libpq hides), and pooler log lines without the parts that differ between two runs."""

from __future__ import annotations

import hashlib
import re
import socket
import struct

from pgbouncer_py.auth.scram import ScramClient

PW = "password authentication failed"
SASL = "SASL authentication failed"
CONFIG_ERROR = "bouncer config error"
BINARIES = ["py", "c124"]


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _fields(body: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode(errors="replace") for p in body.split(b"\0") if p}


class _Sock:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the pooler")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self) -> tuple[bytes, bytes]:
        head = self.exact(5)
        return head[:1], self.exact(struct.unpack("!I", head[1:])[0] - 4)


def connect_socket(pooler, unix: bool = False, timeout: float = 10.0) -> socket.socket:
    if unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(pooler.unix_socket_path)
        return s
    return socket.create_connection((pooler.host, pooler.port), timeout=timeout)


def login(pooler, db: str, user: str, password: str | bytes | None = None, *, unix: bool = False,
          keep: bool = False, timeout: float = 10.0):
    """Log in with a raw client (cleartext, md5 or SCRAM as the pooler asks) and wait for ReadyForQuery.

    Returns "OK" or "<message> [<SQLSTATE>]"; with keep=True, ("OK", socket) so the caller holds the login open
    (then it must close the socket)."""
    sock = connect_socket(pooler, unix, timeout)
    s = _Sock(sock)
    try:
        params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        pw = password.encode() if isinstance(password, str) else password
        scram = None
        while True:
            t, body = s.read()
            if t == b"E":
                f = _fields(body)
                return f"{f.get('M', '')} [{f.get('C', '')}]"
            if t == b"Z":
                if keep:
                    return "OK", sock
                return "OK"
            if t != b"R":
                continue
            code = struct.unpack("!I", body[:4])[0]
            if code == 3:
                sock.sendall(_msg(b"p", (pw or b"") + b"\0"))
            elif code == 5:
                inner = hashlib.md5((pw or b"") + user.encode()).hexdigest()
                outer = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                sock.sendall(_msg(b"p", outer.encode() + b"\0"))
            elif code == 10:
                scram = ScramClient(password=(pw or b"").decode())
                first = scram.client_first()
                sock.sendall(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
            elif code == 11:
                sock.sendall(_msg(b"p", scram.client_final(body[4:])))
    except ConnectionError as e:
        return f"closed: {e}"
    finally:
        if not keep:
            sock.close()


_TS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[\d+\] ", re.M)
_PTR = re.compile(r"\b([CS])-0x[0-9a-f]+:")
_ADDR = re.compile(r"@(127\.0\.0\.1|unix(\(\d+\))?):\d+")
_AGE = re.compile(r"\(age=\d+s\)")


def log_lines(pooler, since: int = 0) -> list[str]:
    """The pooler's log lines from offset `since`, normalized (see normalize)."""
    return normalize(pooler.log()[since:])


def normalize(text: str) -> list[str]:
    """Log text as 'LEVEL message' lines with socket pointers, client ports and ages replaced by fixed text, so
    the lines of two poolers compare equal."""
    out = []
    for line in _TS.sub("", text).splitlines():
        line = _PTR.sub(r"\1-0x:", line)
        line = _ADDR.sub(lambda m: "@unix:PORT" if m.group(1).startswith("unix") else "@127.0.0.1:PORT", line)
        out.append(_AGE.sub("(age=0s)", line))
    return out
