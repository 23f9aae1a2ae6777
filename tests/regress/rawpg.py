"""A tiny raw-socket PostgreSQL client for fault-injection tests: build exact (or deliberately broken) packets,
log in with md5/cleartext/trust, and read what comes back without any client library smoothing it over."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from pathlib import Path

PROTO_V3 = 196608


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def startup(user: str, db: str, **extra: str) -> bytes:
    params = {"user": user, "database": db, **extra}
    body = struct.pack("!I", PROTO_V3) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def error_fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


class Conn:
    """One raw connection. read_msg() returns (type, body) or None at EOF."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_bytes(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_msg(self) -> tuple[bytes, bytes] | None:
        hdr = self.read_bytes(5)
        if hdr is None:
            return None
        length = struct.unpack("!I", hdr[1:])[0]
        body = self.read_bytes(length - 4)
        if body is None:
            return None
        return hdr[:1], body

    def read_until_error_or_eof(self) -> str | None:
        """The message of the first ErrorResponse (None if the connection ends without one)."""
        while True:
            m = self.read_msg()
            if m is None:
                return None
            if m[0] == b"E":
                return error_fields(m[1]).get("M")

    def is_closed(self, timeout: float = 10.0) -> bool:
        """True when the peer closes the connection within `timeout` (anything it sends is discarded)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def login(self, user: str, db: str, password: str | None, **extra: str) -> None:
        """Startup + auth; returns at the first ReadyForQuery, raises AssertionError on an error."""
        error = self.try_login(user, db, password, **extra)
        if error is not None:
            raise AssertionError(f"login failed: {error}")

    def try_login(self, user: str, db: str, password: str | None, **extra: str) -> dict[str, str] | None:
        """Startup + auth: None at the first ReadyForQuery, else the fields of the ErrorResponse (S, C, M...)."""
        self.send(startup(user, db, **extra))
        while True:
            m = self.read_msg()
            assert m is not None, "connection closed during login"
            t, body = m
            if t == b"E":
                return error_fields(body)
            if t == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 5:
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    self.send(msg(b"p", outer.encode() + b"\0"))
                elif code == 3:
                    self.send(msg(b"p", password.encode() + b"\0"))
                elif code != 0:
                    raise AssertionError(f"unsupported auth request {code}")
            elif t == b"Z":
                return None

    def simple_query(self, sql: str) -> list[tuple[bytes, bytes]]:
        """Run one simple query; every message up to ReadyForQuery."""
        self.send(query(sql))
        out = []
        while True:
            m = self.read_msg()
            assert m is not None, f"connection closed during {sql!r}"
            out.append(m)
            if m[0] == b"Z":
                return out

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER 0): the abrupt end of a crashed or unplugged client."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive_and_serving(pooler, timeout: float = 15.0) -> None:
    """The pooler process is the same and still answers a query through a real client."""
    import psycopg
    from pgutil import wait_until

    assert pooler.is_running(), "pooler process died"

    def ok():
        with psycopg.connect(pooler.dsn(), connect_timeout=5, autocommit=True) as c:
            return c.execute("select 1").fetchone()[0] == 1
    wait_until(ok, timeout=timeout, ignore=(psycopg.OperationalError,), message="a query through the pooler")
    assert pooler.is_running(), "pooler process died"
    log = pooler.log()
    for bad in ("Traceback", "internal error", "Exception in callback", "exception was never retrieved"):
        assert bad not in log, f"{bad!r} in the pooler log:\n{log[-3000:]}"


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
