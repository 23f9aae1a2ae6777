"""A tiny HTTP/1.1 listener on the pooler's own event loop for the operator endpoints (pgbouncer-py extension):
GET and HEAD only, one request per connection, every connection bounded in size, time and number."""

import asyncio
import socket

from pgbouncer_py.log import log
from pgbouncer_py.net import listen

MAX_CONNECTIONS = 64        # open HTTP connections at once; more are answered 503 and closed
MAX_HEAD = 8192             # bytes of request line + headers
REQUEST_TIMEOUT = 5.0       # seconds to send the request head
LIFETIME = 30.0             # seconds a slow reader gets to take the answer
LINGER = 1.0                # seconds between checks that the answer has left, before closing

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}
TEXT = "text/plain; charset=utf-8"


def response(status: int, body: bytes, content_type: str = TEXT, *, head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def parse_request_line(head: bytes) -> tuple[int, str, str]:
    """(0, method, path) for a request we can answer, else (status, '', reason). Sans-I/O."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return 400, "", "malformed request line"
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return (505, "", "HTTP version not supported") if version.startswith(b"HTTP/") else \
            (400, "", "malformed request line")
    try:
        path = target.decode("ascii").split("?", 1)[0]
    except UnicodeDecodeError:
        return 400, "", "non-ASCII request target"
    if not path.startswith("/"):
        return 400, "", "request target is not a path"
    if method not in (b"GET", b"HEAD"):
        return 405, "", "only GET and HEAD are served"
    return 0, method.decode(), path


class HttpConnection(asyncio.Protocol):
    """One client of the HTTP listener: read the request head, answer, close."""

    def __init__(self, server: "HttpServer"):
        self.server = server
        self.transport = None
        self.buf = b""
        self.answered = False
        self.timer = None
        self.deadline = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        if len(self.server.conns) >= MAX_CONNECTIONS:
            self.answered = True
            self._send(response(503, b"too many connections\n"), linger=False)
            return
        self.server.conns.add(self)
        self.timer = loop.call_later(REQUEST_TIMEOUT, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return      # the rest of a request we already answered: read and dropped, so closing sends no reset
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            end = self.buf.find(b"\n\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._answer(431, b"request head too large\n")
            return
        if end > MAX_HEAD:
            self._answer(431, b"request head too large\n")
            return
        status, method, path = parse_request_line(self.buf[:end])
        if status:
            self._answer(status, path.encode() + b"\n")
            return
        try:
            code, ctype, body = self.server.handle(path)
        except Exception as e:                 # a bug in an endpoint must not reach the loop
            log.error(f"internal error in HTTP endpoint {path}: {e!r}")
            code, ctype, body = 500, TEXT, b"internal error\n"
        self._answer(code, body, ctype, head_only=method == "HEAD")

    def eof_received(self):
        if not self.answered:
            self._answer(400, b"incomplete request\n")
        return False            # close once the answer is flushed

    def _answer(self, status: int, body: bytes, ctype: str = TEXT, *, head_only: bool = False) -> None:
        self.answered = True
        self._send(response(status, body, ctype, head_only=head_only))

    def _send(self, data: bytes, *, linger: bool = True) -> None:
        """Write the answer and end our side; without `linger` close at once (connections over the limit)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(data)
        if not linger:
            t.close()
            return
        if t.can_write_eof():
            t.write_eof()       # the client sees the end; what it still sends is dropped until it closes
        if self.timer is not None:
            self.timer.cancel()
        self.deadline = asyncio.get_running_loop().time() + LIFETIME
        self.timer = asyncio.get_running_loop().call_later(LINGER, self._linger)

    def _linger(self) -> None:
        """Close once the answer has left (a slow reader gets until LIFETIME, then the connection is aborted)."""
        self.timer = None
        t = self.transport
        if t is None:
            return
        loop = asyncio.get_running_loop()
        if t.get_write_buffer_size() == 0:
            t.close()
        elif loop.time() >= self.deadline:
            t.abort()
        else:
            self.timer = loop.call_later(LINGER, self._linger)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.answered:
            self._answer(408, b"request not received in time\n")

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.conns.discard(self)
        self.transport = None


class HttpServer:
    """The listening sockets and their connections; `routes` maps a path to fn() -> (status, content type, body)."""

    def __init__(self, routes: dict):
        self.routes = routes
        self.conns: set[HttpConnection] = set()
        self.servers: list = []
        self.descs: list[str] = []

    def handle(self, path: str) -> tuple[int, str, bytes]:
        fn = self.routes.get(path)
        if fn is None:
            return 404, TEXT, b"not found; try /metrics, /health or /ready\n"
        return fn()

    async def start(self, addr: str, port: int, reuseport: bool, backlog: int = 128) -> None:
        """Bind every address of `addr` (comma list, * for all), listening with `backlog` (listen_backlog);
        OSError or ListenError when one fails."""
        loop = asyncio.get_running_loop()
        socks = []
        try:
            for family, stype, proto, _name, sockaddr in listen._tcp_addrs(addr, port):
                sock = socket.socket(family, stype, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuseport:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(sockaddr)
                except OSError as e:
                    host = f"[{sockaddr[0]}]" if family == socket.AF_INET6 else sockaddr[0]
                    raise OSError(e.errno, f"bind(): {host}:{sockaddr[1]}: {e.strerror}") from None
                sock.listen(backlog)
                sock.setblocking(False)
                host = f"[{sockaddr[0]}]" if family == socket.AF_INET6 else sockaddr[0]
                self.descs.append(f"{host}:{sock.getsockname()[1]}")
            for sock in socks:
                # asyncio and uvloop listen() again on a served socket, with 100 unless told: keep the backlog
                self.servers.append(await loop.create_server(lambda: HttpConnection(self), sock=sock,
                                                             backlog=backlog))
        except BaseException:
            for srv in self.servers:
                srv.close()
            for sock in socks:
                sock.close()
            self.servers = []
            self.descs = []
            raise

    def close(self) -> None:
        for srv in self.servers:
            srv.close()
        self.servers = []
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        self.conns.clear()
