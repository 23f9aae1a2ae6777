"""TCP and unix-socket listeners: listen_addr lists, '*', IPv6, unix_socket_mode/group, so_reuseport, backlog."""

import grp
import os
import socket
from dataclasses import dataclass

from pgbouncer_py import netutil
from pgbouncer_py.log import log


class ListenError(Exception):
    pass


@dataclass
class Listener:
    sock: socket.socket
    desc: str          # for the 'listening on ...' log line
    port: int
    unix: bool
    path: str = ""
    server: object = None
    path_ino: int = 0          # inode of the socket file we bound (so we never unlink a successor's)
    handover: object = None    # dup of sock kept open for an online restart after accepting stopped
    # TCP options tuned on the listening socket itself, so that accepted sockets inherit them (see retune)
    tuned_for: object = None   # the Config whose settings every socket accepted from now on has: no per-connection work
    tuned_key: tuple | None = None
    touched: set | None = None  # indexes of netutil._INHERITED set on the socket (None: unknown, adopted socket)


def _tcp_addrs(listen_addr: str, port: int) -> list[tuple]:
    addrs = []
    for item in [a.strip() for a in listen_addr.split(",") if a.strip()]:
        if item == "*":
            addrs += socket.getaddrinfo(None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        else:
            try:
                addrs += socket.getaddrinfo(item, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            except socket.gaierror as e:
                raise ListenError(f"could not resolve listen address {item}: {e}") from None
    seen, out = set(), []
    for a in addrs:
        if a[4] not in seen:
            seen.add(a[4])
            out.append(a)
    return out


def tcp_listeners(cfg) -> list[Listener]:
    result = []
    if not cfg.listen_addr:
        return result
    for family, stype, proto, _name, sockaddr in _tcp_addrs(cfg.listen_addr, cfg.listen_port):
        sock = socket.socket(family, stype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if cfg.so_reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if cfg.tcp_defer_accept and hasattr(socket, "TCP_DEFER_ACCEPT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, int(cfg.tcp_defer_accept))
            sock.bind(sockaddr)
            sock.listen(cfg.listen_backlog)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            host = sockaddr[0]
            addr = f"[{host}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{host}:{sockaddr[1]}"
            raise ListenError(f"bind(): {addr}: {e.strerror}") from None
        host = sockaddr[0]
        desc = f"[{host}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{host}:{sockaddr[1]}"
        result.append(Listener(sock, desc, cfg.listen_port, False, touched=set()))
    return result


def unix_listener(cfg) -> Listener | None:
    d = cfg.unix_socket_dir
    if not d:
        return None
    if d.startswith("@"):
        path = "\0" + d[1:] + f"/.s.PGSQL.{cfg.listen_port}"
        shown = d + f"/.s.PGSQL.{cfg.listen_port}"
    else:
        path = os.path.join(d, f".s.PGSQL.{cfg.listen_port}")
        shown = path
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                probe.close()
                if not cfg.so_reuseport:
                    raise ListenError("unix socket is in use, cannot continue")
            except OSError:
                probe.close()
                os.unlink(path)     # stale socket from a dead process
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if cfg.so_reuseport and not path.startswith("\0") and os.path.exists(path):
            os.unlink(path)
        sock.bind(path)
        if not path.startswith("\0"):
            os.chmod(path, cfg.unix_socket_mode)
            if cfg.unix_socket_group:
                try:
                    gid = grp.getgrnam(cfg.unix_socket_group).gr_gid
                    os.chown(path, -1, gid)
                except (KeyError, OSError) as e:
                    log.warning(f"unix_socket_group {cfg.unix_socket_group}: {e}")
        sock.listen(cfg.listen_backlog)
        sock.setblocking(False)
        ino = os.stat(path).st_ino if not path.startswith("\0") else 0
    except OSError as e:
        sock.close()
        raise ListenError(f"bind(): unix:{shown}: {e.strerror}") from None
    return Listener(sock, f"unix:{shown}", cfg.listen_port, True, path, path_ino=ino)


def unlink_if_ours(lst: Listener) -> None:
    """Remove the unix socket file at exit, unless another process (a so_reuseport successor) rebound it."""
    try:
        if not lst.path_ino or os.stat(lst.path).st_ino == lst.path_ino:
            os.unlink(lst.path)
    except OSError:
        pass


def chown_socket(lst: Listener, uid: int, gid: int) -> None:
    """Give the unix socket file to the user we switch to (group kept when unix_socket_group set it)."""
    if lst.unix and lst.path and not lst.path.startswith("\0"):
        try:
            st = os.stat(lst.path)
            os.chown(lst.path, uid, gid if st.st_gid == os.getegid() else -1)
        except OSError as e:
            log.warning(f"could not chown {lst.path}: {e.strerror}")


def adopt_socket(fd: int, cfg) -> Listener:
    """A listening socket inherited from systemd (LISTEN_FDS) or an online restart."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        path = sock.getsockname()
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        ino = 0
        if path and not path.startswith("\0"):
            try:
                ino = os.stat(path).st_ino
            except OSError:
                pass
        return Listener(sock, f"unix:{path}", cfg.listen_port, True, path, path_ino=ino)
    host, port = sock.getsockname()[:2]
    desc = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
    return Listener(sock, desc, port, False)


_defaults: dict = {}


def retune(lst: Listener, cfg, accepted=None) -> None:
    """Give a TCP listening socket the per-connection options of `cfg` (tcp_keepalive, tcp_keepidle, ...), which the
    sockets it accepts inherit (Linux), so that a connection needs no setsockopt of its own; `accepted`, a socket
    accepted before this call, is given them too. With tcp_socket_buffer set the buffers stay per connection
    (setting them on a socket locks their size: the listener keeps the kernel's autotuning)."""
    if lst.unix:
        return
    family = lst.sock.family
    defaults = _defaults.get(family)
    if defaults is None:
        defaults = _defaults[family] = netutil.fresh_tcp_defaults(family)
    if lst.touched is None:         # adopted: whatever an earlier process set is put back to the kernel's values
        lst.touched = set(range(len(defaults)))
    key = netutil.tcp_tuning(cfg)
    try:
        if accepted is not None:
            netutil.apply_tuning(accepted, key, set(lst.touched), defaults)
        if key != lst.tuned_key:
            netutil.apply_tuning(lst.sock, key, lst.touched, defaults)
            lst.tuned_key = key
    except OSError:
        lst.tuned_for = lst.tuned_key = None
        return
    lst.tuned_for = None if cfg.tcp_socket_buffer else cfg
