"""Holds many logged-in, idle PostgreSQL client connections open, for the pooler memory benchmark.

Driven over stdin by bench/run.py: `open N` grows the set to N connections, `quit` closes them all.
"""

import argparse
import asyncio
import base64
import functools
import hashlib
import hmac
import os
import resource
import struct
import sys
import time

PROTOCOL_3 = 196608
AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5 = 0, 3, 5
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12


class LoginError(Exception):
    """The server refused or broke off the login."""


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def md5_answer(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    outer = hashlib.md5(inner.encode() + salt).hexdigest()
    return message(b"p", b"md5" + outer.encode() + b"\0")


@functools.lru_cache(maxsize=8)
def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 once per salt: against a SCRAM secret the salt never changes, and the benchmark measures the pooler."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


class ScramClient:
    """Client side of SCRAM-SHA-256 (no channel binding), just enough to log in."""

    def __init__(self, password: str):
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = "n=,r=" + self.nonce
        self.server_signature = b""

    def first(self) -> bytes:
        data = ("n,," + self.first_bare).encode()
        body = b"SCRAM-SHA-256\0" + struct.pack("!i", len(data)) + data
        return message(b"p", body)

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        fields = dict(item.split("=", 1) for item in text.split(","))
        if not fields["r"].startswith(self.nonce):
            raise LoginError("SCRAM server nonce does not extend ours")
        salted = salted_password(self.password, base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=biws,r=" + fields["r"]
        auth_message = ",".join((self.first_bare, text, without_proof)).encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.server_signature = hmac.digest(server_key, auth_message, "sha256")
        return message(b"p", (without_proof + ",p=" + base64.b64encode(proof).decode()).encode())


async def read_message(reader, timeout: float | None) -> tuple[bytes, bytes]:
    """One backend message: (type byte, body). timeout None: the caller bounds the whole exchange (cheaper)."""
    if timeout is None:
        header = await reader.readexactly(5)
        return header[:1], await reader.readexactly(struct.unpack("!I", header[1:])[0] - 4)
    header = await asyncio.wait_for(reader.readexactly(5), timeout)
    body = await asyncio.wait_for(reader.readexactly(struct.unpack("!I", header[1:])[0] - 4), timeout)
    return header[:1], body


async def login(host: str, port: int, user: str, password: str, database: str, timeout: float):
    """Open one connection and log in; returns (reader, writer) once ReadyForQuery arrived."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    await authenticate(reader, writer, user, password, database, timeout)
    return reader, writer


async def authenticate(reader, writer, user: str, password: str, database: str, timeout: float | None) -> None:
    """Startup and authentication on an open connection, up to ReadyForQuery; closes it on failure."""
    try:
        writer.write(startup_packet(user, database))
        scram = None
        while True:
            kind, body = await read_message(reader, timeout)
            if kind == b"Z":
                return
            if kind == b"E":
                raise LoginError(body.replace(b"\0", b" ").decode(errors="replace").strip())
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code = struct.unpack("!I", body[:4])[0]
            if code == AUTH_OK:
                continue
            if code == AUTH_CLEARTEXT:
                writer.write(message(b"p", password.encode() + b"\0"))
            elif code == AUTH_MD5:
                writer.write(md5_answer(user, password, body[4:8]))
            elif code == AUTH_SASL:
                if b"SCRAM-SHA-256\0" not in body[4:]:
                    raise LoginError("server offers no SCRAM-SHA-256")
                scram = ScramClient(password)
                writer.write(scram.first())
            elif code == AUTH_SASL_CONTINUE and scram is not None:
                writer.write(scram.final(body[4:]))
            elif code == AUTH_SASL_FINAL and scram is not None:
                if body[4:] != b"v=" + base64.b64encode(scram.server_signature):
                    raise LoginError("SCRAM server signature mismatch")
            else:
                raise LoginError(f"unsupported authentication request {code}")
    except BaseException:
        writer.close()
        raise


class Holder:
    """The set of open idle connections."""

    def __init__(self, args):
        self.args = args
        self.conns = []

    async def grow(self, target: int) -> None:
        sem = asyncio.Semaphore(self.args.concurrency)
        a = self.args

        async def one():
            async with sem:
                for attempt in range(3):
                    try:
                        self.conns.append(await login(a.host, a.port, a.user, a.password, a.dbname, a.timeout))
                        return
                    except (TimeoutError, OSError):
                        if attempt == 2:
                            raise
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one() for _ in range(target - len(self.conns))))

    def close_all(self) -> None:
        for _, writer in self.conns:
            writer.close()
        self.conns.clear()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def serve(args) -> None:
    holder = Holder(args)
    loop = asyncio.get_running_loop()
    print(f"ready nofile={raise_nofile()}", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            holder.close_all()
            print("bye", flush=True)
            return
        if words[0] == "open":
            started = time.monotonic()
            try:
                await holder.grow(int(words[1]))
            except Exception as exc:  # reported to the driver, which records the error
                print(f"err {len(holder.conns)} {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
                continue
            print(f"ok {len(holder.conns)} {time.monotonic() - started:.3f}", flush=True)
        else:
            print(f"err {len(holder.conns)} unknown command {words[0]!r}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="bench")
    p.add_argument("--password", default="")
    p.add_argument("--dbname", default="bench")
    p.add_argument("--concurrency", type=int, default=64, help="logins in flight at once")
    p.add_argument("--timeout", type=float, default=30.0)
    asyncio.run(serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
