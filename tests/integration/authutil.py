"""Helpers for the auth tests: the client-visible error text of a login, and a raw protocol client for the
cases libpq will not produce (empty password, malformed SASL)."""

from __future__ import annotations

import re
import socket
import struct

import psycopg


def login_result(dsn: str) -> str:
    """'OK <current_user>' or the pooler's FATAL message text."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return "OK " + conn.execute("select current_user").fetchone()[0]
    except psycopg.Error as e:
        m = re.search(r"(?:FATAL|ERROR):  (.*)", str(e))
        return m.group(1) if m else str(e).strip().splitlines()[-1]


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _read_msg(sock: socket.socket) -> tuple[bytes, bytes]:
    def exact(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out
    head = exact(5)
    return head[:1], exact(struct.unpack("!I", head[1:])[0] - 4)


def error_text(body: bytes) -> str:
    for field in body.split(b"\0"):
        if field[:1] == b"M":
            return field[1:].decode()
    return ""


def raw_login(host: str, port: int, user: str, db: str, answers: list[bytes], timeout: float = 10.0) -> str:
    """Start up over TCP and answer each authentication request with the next raw message from `answers`
    (full messages, type byte included). Returns 'OK', 'ERROR: text', or 'auth request N' when out of answers."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        answers = list(answers)
        while True:
            t, body = _read_msg(sock)
            if t == b"E":
                return "ERROR: " + error_text(body)
            if t == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 0:
                    return "OK"
                if code == 12:  # SASLFinal: wait for AuthenticationOk
                    continue
                if not answers:
                    return f"auth request {code}"
                sock.sendall(answers.pop(0))


def password_msg(data: bytes) -> bytes:
    return _msg(b"p", data)


def sasl_initial(mech: bytes, data: bytes) -> bytes:
    return _msg(b"p", mech + b"\0" + struct.pack("!i", len(data)) + data)
