"""so_reuseport groups: several processes on one port with peer_id and [peers]; cancel requests reach the process
that owns the session whichever process receives them; a rolling restart under pgbench load loses nothing."""

from __future__ import annotations

import hashlib
import shutil
import socket
import struct
import subprocess
import time

import pytest
from pgutil import clean_env, find_pg_bindir, free_port, short_tempdir, wait_until


class RawClient:
    """Just enough protocol 3 to log in with md5, keep the 8-byte cancel key and run one query."""

    def __init__(self, path_or_addr, user: str, password: str, db: str = "testdb"):
        family = socket.AF_UNIX if isinstance(path_or_addr, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path_or_addr)
        self.buf = b""
        body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self.key = None
        while True:
            t, m = self.message()
            if t == b"R" and struct.unpack("!I", m[:4])[0] == 5:
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
                pw = b"md5" + hashlib.md5(inner + m[4:8]).hexdigest().encode() + b"\0"
                self.sock.sendall(b"p" + struct.pack("!I", len(pw) + 4) + pw)
            elif t == b"K":
                self.key = m
            elif t == b"E":
                raise AssertionError(f"login failed: {m!r}")
            elif t == b"Z":
                return

    def message(self):
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= n + 1:
                    t, m, self.buf = self.buf[:1], self.buf[5:n + 1], self.buf[n + 1:]
                    return t, m
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data

    def send_query(self, sql: str) -> None:
        q = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)

    def result(self) -> str:
        """'ok' or the SQLSTATE of the error, once ReadyForQuery arrives."""
        state = "ok"
        while True:
            t, m = self.message()
            if t == b"E":
                state = next(f[1:].decode() for f in m.split(b"\0") if f[:1] == b"C")
            elif t == b"Z":
                return state


def send_cancel(path: str, key: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(struct.pack("!II", 16, 80877102) + key)
        s.settimeout(10)
        s.recv(1)       # the pooler closes the connection once it has handled the request


@pytest.fixture
def group(pooler_factory):
    """Start n so_reuseport processes on one port with peer ids 1..n; returns a starter."""
    port = free_port()
    dirs: list = []

    def start(n: int, **settings):
        while len(dirs) < n:
            dirs.append(short_tempdir("pgbpeer"))
        peers = {str(i + 1): f"host={d} port={port}" for i, d in enumerate(dirs)}
        out = []
        for i in range(n):
            ini = {"listen_port": port, "so_reuseport": 1, "peer_id": i + 1, "unix_socket_dir": str(dirs[i]), **settings}
            out.append(pooler_factory.start(ini, peers=peers))
        return out
    start.port = port
    start.dirs = dirs
    yield start
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("wrong", [1, 2])
def test_cancel_sent_to_the_wrong_process_cancels_the_right_query(group, wrong):
    procs = group(3)
    owner = procs[0]
    c = RawClient(owner.unix_socket_path, "md5user", "md5pass")
    assert len(c.key) == 8 and ((c.key[0] & 0x3F) << 8 | c.key[1]) == 1
    c.send_query("select pg_sleep(60)")
    time.sleep(0.5)
    t0 = time.monotonic()
    send_cancel(procs[wrong].unix_socket_path, c.key)
    assert c.result() == "57014"          # query_canceled
    assert time.monotonic() - t0 < 30
    procs[wrong].wait_for_log("")          # the forwarding process is still fine
    c.send_query("select 1")
    assert c.result() == "ok"


def test_cancel_with_exhausted_ttl_is_not_forwarded(group):
    procs = group(2)
    c = RawClient(procs[0].unix_socket_path, "md5user", "md5pass")
    c.send_query("select pg_sleep(2)")
    dead = bytes((c.key[0] & 0x3F,)) + c.key[1:]          # TTL 0: must not travel further
    send_cancel(procs[1].unix_socket_path, dead)
    assert c.result() == "ok"


def test_rolling_restart_under_pgbench_loses_nothing(group, pg, pooler_factory):
    pg.init_pgbench()
    a, b = group(2, pool_mode="transaction", default_pool_size=20, max_client_conn=200)
    env = clean_env({"PGPASSWORD": "md5pass"})
    cmd = [str(find_pg_bindir() / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(group.port), "-U", "md5user",
           "-c", "8", "-j", "2", "-C", "-T", "12", "-S", "benchdb"]
    bench = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    # replace a, then b, each by a fresh process with the same settings; SIGTERM = wait for clients
    for old in (a, b):
        idx = 0 if old is a else 1
        ini = {k: v for k, v in old.settings.items()}
        new = pooler_factory.start(ini, peers={str(i + 1): f"host={d} port={group.port}"
                                               for i, d in enumerate(group.dirs)})
        assert new.pid != old.pid
        old.signal(15)
        wait_until(lambda o=old: not o.is_running(), 30, message=f"old process {idx} to finish its clients")
        time.sleep(1.5)
    out, _ = bench.communicate(timeout=60)
    assert "number of failed transactions: 0" in out or "failed" not in out, out
    if _tcp_migrate_req():
        assert bench.returncode == 0, out
    else:
        # without net.ipv4.tcp_migrate_req the kernel resets handshakes still queued on a closing SO_REUSEPORT
        # listener: a pgbench client may then abort while connecting (never inside a transaction)
        aborts = [line for line in out.splitlines() if "aborted" in line and "Run was aborted" not in line]
        assert all("while establishing connection" in line for line in aborts), out
    done = int(next(line.split(":")[1] for line in out.splitlines() if "number of transactions actually processed"
                    in line).split("/")[0])
    assert done > 100, out


def _tcp_migrate_req() -> bool:
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            return f.read().strip() == "1"
    except OSError:
        return False
