"""TCP options tuned on the listening socket, which accepted sockets inherit (net/listen.retune, netutil)."""

import socket
from types import SimpleNamespace

from pgbouncer_py import netutil
from pgbouncer_py.net import listen

OPTS = {"keepalive": (socket.SOL_SOCKET, socket.SO_KEEPALIVE), "idle": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "intvl": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), "cnt": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout": (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}


def _cfg(keepalive=1, idle=0, intvl=0, cnt=0, user_timeout=0, buffer=0):
    return SimpleNamespace(listen_addr="127.0.0.1", listen_port=0, so_reuseport=0, tcp_defer_accept=0,
                           listen_backlog=16, tcp_keepalive=keepalive, tcp_keepidle=idle, tcp_keepintvl=intvl,
                           tcp_keepcnt=cnt, tcp_user_timeout=user_timeout, tcp_socket_buffer=buffer)


def _options(sock) -> dict:
    return {name: sock.getsockopt(level, opt) for name, (level, opt) in OPTS.items()}


def _accept(lst):
    lst.sock.setblocking(True)
    client = socket.create_connection(lst.sock.getsockname()[:2])
    conn, _ = lst.sock.accept()
    return client, conn


def _fresh() -> dict:
    with socket.socket() as s:
        return _options(s)


def test_accepted_sockets_inherit_the_listeners_tuning_and_a_reload_changes_it():
    [lst] = listen.tcp_listeners(_cfg())
    c0, before = _accept(lst)          # accepted before the listener was tuned
    cfg = _cfg(keepalive=1, idle=77, intvl=13, cnt=5, user_timeout=4321)
    listen.retune(lst, cfg, before)
    assert lst.tuned_for is cfg
    c1, after = _accept(lst)
    want = {"keepalive": 1, "idle": 77, "intvl": 13, "cnt": 5, "user_timeout": 4321}
    assert _options(before) == want
    assert _options(after) == want     # no setsockopt on it: inherited
    # a reload switching it all off: the listener and a socket it had accepted with the old values go back to
    # the kernel's values, as tune_tcp on a fresh socket would leave them
    cfg2 = _cfg(keepalive=0)
    listen.retune(lst, cfg2, after)
    c2, later = _accept(lst)
    off = dict(_fresh(), keepalive=0)
    assert _options(after) == off
    assert _options(later) == off
    assert lst.tuned_for is cfg2
    for s in (c0, before, c1, after, c2, later, lst.sock):
        s.close()


def test_socket_buffers_stay_per_connection():
    [lst] = listen.tcp_listeners(_cfg())
    c, conn = _accept(lst)
    listen.retune(lst, _cfg(buffer=65536), conn)
    assert lst.tuned_for is None       # every connection is tuned on its own (tune_tcp)
    assert lst.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    for s in (c, conn, lst.sock):
        s.close()


def test_tcp_tuning_key_ignores_keepalive_details_when_keepalive_is_off():
    assert netutil.tcp_tuning(_cfg(keepalive=0, idle=5, user_timeout=9)) == (False, 0, 0, 0, 9)
    assert netutil.tcp_tuning(_cfg(keepalive=1, idle=5)) == (True, 5, 0, 0, 0)
