"""Half-open TCP: a peer that vanishes without FIN or RST (a pulled cable, a dead host) is found by the
pooler's TCP keepalive (tcp_keepalive/tcp_keepidle/tcp_keepintvl/tcp_keepcnt) and goes through the one exit
path, on the client side and on the server side (a server dying in the middle of a query); with data still
in flight to it, tcp_user_timeout is what ends it.

The root test blackholes one connection on the loopback with iptables while the unprivileged test (PostgreSQL
and the pooler refuse root) runs; the two talk through files: `ports` (the connection to blackhole) and `armed`."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pgutil import wait_until

DIR_ENV = "PGBPY_HALF_OPEN_DIR"
KEEPALIVE = {"pool_mode": "session", "tcp_keepalive": 1, "tcp_keepidle": 1, "tcp_keepintvl": 1, "tcp_keepcnt": 2}


def closing(reason: str, kind: str) -> str:
    return rf"{kind}-0x[0-9a-f]+: \S+ closing because: {reason} \(age=\d+s\)"


def _blackhole(d: Path, local_port: int, remote_port: int) -> None:
    # let the last segments be acknowledged first: with unacknowledged data in flight the kernel retransmits
    # instead of probing (that case is tcp_user_timeout's, not keepalive's)
    time.sleep(0.5)
    (d / "ports").write_text(f"{local_port} {remote_port}")
    wait_until(lambda: (d / "armed").exists(), 15, message="the root test to add the iptables rules")


@pytest.mark.skipif(not os.environ.get(DIR_ENV), reason="driven by test_half_open_with_iptables (root)")
@pytest.mark.parametrize("side", ["client", "server", "unacked"])
def test_half_open_peer_is_found_by_keepalive(pooler_factory, pg, side):
    d = Path(os.environ[DIR_ENV]) / side
    if side == "unacked":
        # data in flight to a vanished client: no keepalive probe is sent then; tcp_user_timeout (ms) ends it
        p = pooler_factory.start({"pool_mode": "session", "tcp_keepalive": 0, "tcp_user_timeout": 2000})
    else:
        p = pooler_factory.start(KEEPALIVE)
    conn = p.connect(autocommit=True)
    assert conn.execute("select 1").fetchone() == (1,)
    if side == "unacked":
        conn.execute("LISTEN half_open")
        with socket.socket(fileno=os.dup(conn.fileno())) as s:
            client_port = s.getsockname()[1]
        _blackhole(d, client_port, p.port)
        pg.psql("NOTIFY half_open, 'to nobody'", db="testdb")   # the pooler forwards it into the void
        t0 = time.monotonic()
        p.wait_for_log(closing("client unexpected eof", "C"), timeout=20)
        assert time.monotonic() - t0 < 15
        return
    if side == "client":
        with socket.socket(fileno=os.dup(conn.fileno())) as s:
            client_port = s.getsockname()[1]
        _blackhole(d, client_port, p.port)
        t0 = time.monotonic()
        p.wait_for_log(closing("client unexpected eof", "C"), timeout=20)
        assert time.monotonic() - t0 < 15
        wait_until(lambda: not [c for c in p.admin_dicts("SHOW CLIENTS") if c["database"] == "testdb"], 5)
        assert any(int(r["sv_idle"]) == 1 for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb")
        return
    got = {}

    def run():
        try:
            conn.execute("select pg_sleep(60)")
        except psycopg.Error as e:
            got["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: any(int(r["sv_active"]) for r in p.admin_dicts("SHOW POOLS") if r["database"] == "testdb"))
    server_port = int(p.admin_dicts("SHOW SERVERS")[0]["local_port"])
    _blackhole(d, server_port, pg.port)
    t0 = time.monotonic()
    t.join(20)
    assert "error" in got and time.monotonic() - t0 < 15, got
    p.wait_for_log(closing(r"server conn crashed\?", "S"))
    # the pool opens a new server connection for the next query
    with psycopg.connect(p.dsn(), autocommit=True) as again:
        assert again.execute("select 2").fetchone() == (2,)


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.root
def test_half_open_with_iptables():
    if os.geteuid() != 0:
        pytest.skip("adds iptables rules: root only")
    assert shutil.which("iptables"), "iptables is not installed (scripts/install-deps.sh installs it)"
    if _iptables("-L", "INPUT", "-n").returncode != 0:
        pytest.skip("iptables cannot change rules here (no CAP_NET_ADMIN)")
    user = os.environ.get("PGBTEST_USER", "pgbtest")
    pw = pwd.getpwnam(user)
    work = Path(tempfile.mkdtemp(prefix="pgbpy-halfopen-"))
    sides = ("client", "server", "unacked")
    for side in sides:
        (work / side).mkdir()
    for path in (work, *(work / side for side in sides)):
        os.chown(path, pw.pw_uid, pw.pw_gid)
    rules: list[list[str]] = []
    here = Path(__file__).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({DIR_ENV: str(work), "HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "TMPDIR": str(work),
                "PYTHONDONTWRITEBYTECODE": "1"})
    proc = subprocess.Popen(["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()],
                             sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             f"{here}::test_half_open_peer_is_found_by_keepalive"],
                            cwd=here.parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            for side in sides:
                d = work / side
                if (d / "ports").exists() and not (d / "armed").exists():
                    a, b = (d / "ports").read_text().split()
                    for sport, dport in ((a, b), (b, a)):
                        rule = ["INPUT", "-i", "lo", "-p", "tcp", "--sport", sport, "--dport", dport, "-j", "DROP"]
                        assert _iptables("-I", *rule).returncode == 0
                        rules.append(rule)
                    (d / "armed").write_text("")
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=30)[0]
    finally:
        for rule in rules:
            _iptables("-D", *rule)
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, out[-6000:]
    assert "3 passed" in out, out[-6000:]
