"""Small socket helpers shared by client and server sides (peer names, keepalive, peer credentials)."""

import socket
import struct


def addr_of(transport, sock=None) -> tuple[str, int, bool]:
    """(address text, port, is_unix) of the peer; `sock`: transport's socket when the caller has it already."""
    if sock is None:
        sock = transport.get_extra_info("socket")
    peer = transport.get_extra_info("peername")
    if sock is not None and sock.family == socket.AF_UNIX:
        return "unix", 0, True
    if isinstance(peer, tuple) and len(peer) >= 2:
        return peer[0], peer[1], False
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # a TCP peer that reset before we asked has no name: it is still TCP, never a unix-socket client
        return ("::" if sock.family == socket.AF_INET6 else "0.0.0.0"), 0, False
    return "unix", 0, True


def local_addr_of(transport) -> tuple[str, int]:
    name = transport.get_extra_info("sockname")
    if isinstance(name, tuple) and len(name) >= 2:
        return name[0], name[1]
    return "unix", 0


def peer_cred(transport, sock=None) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a unix-socket peer, or None."""
    if sock is None:
        sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", data)
    except OSError:
        return None


def tune_tcp(transport, cfg, sock=None) -> None:
    """TCP keepalive, user timeout and buffer sizes from the config (asyncio and uvloop set TCP_NODELAY)."""
    if sock is None:
        sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        if cfg.tcp_keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if cfg.tcp_keepidle:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, int(cfg.tcp_keepidle))
            if cfg.tcp_keepintvl:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, int(cfg.tcp_keepintvl))
            if cfg.tcp_keepcnt:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, int(cfg.tcp_keepcnt))
        if cfg.tcp_user_timeout:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(cfg.tcp_user_timeout))
        if cfg.tcp_socket_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(cfg.tcp_socket_buffer))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(cfg.tcp_socket_buffer))
    except OSError:
        pass


# the per-connection TCP options an accepted socket inherits from its listening socket (Linux clones them), in the
# order of tcp_tuning()'s key after its first item (SO_KEEPALIVE)
_INHERITED = ((socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
              (socket.IPPROTO_TCP, socket.TCP_KEEPCNT), (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


def tcp_tuning(cfg) -> tuple:
    """What tune_tcp gives an accepted socket, but tcp_socket_buffer: (keepalive on, keepidle, keepintvl, keepcnt,
    user_timeout), 0 for "not set"."""
    on = bool(cfg.tcp_keepalive)
    return (on, int(cfg.tcp_keepidle) if on else 0, int(cfg.tcp_keepintvl) if on else 0,
            int(cfg.tcp_keepcnt) if on else 0, int(cfg.tcp_user_timeout))


def apply_tuning(sock, key: tuple, touched: set, defaults: tuple) -> None:
    """Put `key` (tcp_tuning) on a socket explicitly: SO_KEEPALIVE on or off, every other option set when it is
    not 0 and back to `defaults` (a fresh socket's values) when it is 0 but was set before (`touched`, updated)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if key[0] else 0)
    for i, (level, opt) in enumerate(_INHERITED):
        value = key[i + 1]
        if value:
            sock.setsockopt(level, opt, value)
            touched.add(i)
        elif i in touched:
            sock.setsockopt(level, opt, defaults[i])
            touched.discard(i)


def fresh_tcp_defaults(family) -> tuple:
    """The kernel's values of the _INHERITED options on a new socket of `family`."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        return tuple(s.getsockopt(level, opt) for level, opt in _INHERITED)


def format_addr(addr: str, port: int, is_unix: bool, pid: int | None = None) -> str:
    if is_unix:
        return f"unix({pid}):{port}" if pid else f"unix:{port}"
    if ":" in addr:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"
