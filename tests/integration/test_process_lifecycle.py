"""Process life: -d and the pidfile, refusing a live pidfile or unix socket, logfile reopen (logrotate), sd_notify,
socket activation, and (as root) switching user after binding."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pgutil import clean_env, free_port, wait_until

PY = [sys.executable, "-m", "pgbouncer_py"]
REPO = Path(__file__).resolve().parents[2]


def run_py(args, timeout=20, env=None):
    return subprocess.run(PY + args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env or clean_env(), stdin=subprocess.DEVNULL)


def write_ini(path: Path, **settings) -> Path:
    body = "[databases]\ntestdb = host=127.0.0.1 port=1 dbname=testdb\n[pgbouncer]\n"
    body += "".join(f"{k} = {v}\n" for k, v in settings.items())
    path.write_text(body)
    return path


def test_daemon_needs_pidfile(tmp_path):
    ini = write_ini(tmp_path / "p.ini", listen_port=free_port(), unix_socket_dir="", auth_type="any")
    r = run_py(["-d", str(ini)])
    assert r.returncode == 1
    assert "daemon needs pidfile configured" in r.stderr


def test_daemon_writes_and_removes_pidfile(pooler_factory):
    p = pooler_factory.start(extra_args=["-d"])
    pidfile = Path(p.settings["pidfile"])
    pid = int(pidfile.read_text())
    assert pid == p.pid and pid != p.proc.pid
    assert p.connect().execute("select 1").fetchone() == (1,)
    p.stop()
    wait_until(lambda: not pidfile.exists(), 10, message="pidfile removal")


@pytest.mark.parametrize("live", [False, True])
def test_pidfile_stale_removed_live_refused(tmp_path, live):
    pidfile = tmp_path / "pgb.pid"
    if live:
        pidfile.write_text(f"{os.getpid()}\n")
    else:
        dead = subprocess.Popen(["true"])
        dead.wait()
        pidfile.write_text(f"{dead.pid}\n")
    sock_dir = tempfile.mkdtemp(prefix="pgbp")
    ini = write_ini(tmp_path / "p.ini", listen_port=free_port(), unix_socket_dir=sock_dir, auth_type="any",
                    pidfile=pidfile, logfile=tmp_path / "log")
    proc = subprocess.Popen(PY + [str(ini)], cwd=REPO, env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        if live:
            assert proc.wait(20) == 1
            assert f"pidfile '{pidfile}' exists, another instance running?" in proc.stderr.read()
            assert pidfile.read_text().strip() == str(os.getpid())
        else:
            wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(proc.pid), 20,
                       ignore=(FileNotFoundError,), message="new pidfile")
            assert "stale pidfile, removing" in (tmp_path / "log").read_text()
            wait_until(lambda: "process up" in (tmp_path / "log").read_text(), 20)   # signal handlers are in place
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unix_socket_in_use_refused(pooler_factory):
    p = pooler_factory.start()
    ini = write_ini(p.workdir / "second.ini", listen_addr="", listen_port=p.port, unix_socket_dir=p.unix_dir,
                    auth_type="any")
    r = run_py([str(ini)])
    assert r.returncode == 1
    assert "unix socket is in use, cannot continue" in r.stderr
    assert p.admin("show version")          # the first one still owns its socket


def test_logfile_reopened_on_sighup_and_append_mode(pooler_factory):
    p = pooler_factory.start()
    log = p.log_path
    rotated = log.with_suffix(".1")
    os.rename(log, rotated)                    # logrotate's create mode: rename, then SIGHUP
    p.reload()
    wait_until(lambda: log.exists() and "got SIGHUP" in log.read_text(), 10, ignore=(FileNotFoundError,),
               message="log lines in the new logfile")
    assert "got SIGHUP" not in rotated.read_text()
    # copytruncate: the file is truncated under the running process; append mode writes at the new end
    with open(log, "r+") as f:
        f.truncate(0)
    p.reload()
    wait_until(lambda: "got SIGHUP" in log.read_text(), 10, message="log line after truncation")
    assert not log.read_bytes().startswith(b"\0")


def test_verbose_levels(pooler_factory):
    p = pooler_factory.start(extra_args=["-v"])
    with socket.socket(socket.AF_UNIX) as s:          # a cancel request nobody owns: a DEBUG line
        s.connect(p.unix_socket_path)
        s.sendall((16).to_bytes(4, "big") + (80877102).to_bytes(4, "big") + bytes(8))
        s.settimeout(10)
        s.recv(1)
    p.wait_for_log(r" DEBUG .*cancel request")


def test_sd_notify_and_socket_activation(tmp_path):
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    ini = write_ini(tmp_path / "p.ini", listen_port=port, unix_socket_dir="", auth_type="any",
                    logfile=tmp_path / "log", admin_users="pgbouncer")
    env = clean_env({"NOTIFY_SOCKET": notify_path, "LISTEN_FDS": "1"})
    fd = lsock.fileno()
    # fd 3 = the listening socket, LISTEN_PID = the pooler's own pid (the shell execs it)
    cmd = ["sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh", *PY, str(ini)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, pass_fds=(3,), preexec_fn=lambda: os.dup2(fd, 3),
                            stderr=open(tmp_path / "err", "w"))
    try:
        msgs = []

        def until(state):
            while state not in msgs:
                try:
                    msgs.append(notify.recv(4096).decode())
                except TimeoutError:
                    log = tmp_path / "log"
                    text = log.read_text() if log.exists() else (tmp_path / "err").read_text()
                    raise AssertionError(f"no {state} in {msgs}; log:\n{text}") from None
        until("READY=1")
        assert "socket passed from service manager (fd 3)" in (tmp_path / "log").read_text()
        lsock.close()                          # only the pooler holds it now
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            body = b"\0\3\0\0user\0pgbouncer\0database\0pgbouncer\0\0"
            c.sendall(len(body + b"1234").to_bytes(4, "big") + body)
            assert c.recv(1) == b"R"
        proc.send_signal(signal.SIGHUP)
        until("RELOADING=1")
        msgs.clear()
        until("READY=1")
        proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


@pytest.mark.root
def test_root_refused_without_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("root only")
    ini = write_ini(tmp_path / "p.ini", listen_port=free_port(), unix_socket_dir="", auth_type="any")
    r = run_py([str(ini)], env=clean_env())
    assert r.returncode == 1
    assert "PgBouncer should not run as root" in r.stderr


@pytest.mark.root
@pytest.mark.parametrize("how", ["-u", "user="])
def test_root_switches_user_after_binding_privileged_port(how):
    if os.geteuid() != 0:
        pytest.skip("root only")
    user = os.environ.get("PGBTEST_USER", "pgbtest")
    pw = pwd.getpwnam(user)
    work = Path(tempfile.mkdtemp(prefix="pgbroot"))      # root-owned 0755: only root can create files here
    work.chmod(0o755)
    port = next(p for p in range(700, 1000) if _port_free(p))
    settings = {"listen_addr": "127.0.0.1", "listen_port": port, "unix_socket_dir": work, "auth_type": "any",
                "pidfile": work / "pgb.pid", "logfile": work / "pgb.log"}
    if how == "user=":
        settings["user"] = user
    ini = write_ini(work / "p.ini", **settings)
    args = (["-u", user] if how == "-u" else []) + ["-d", str(ini)]
    r = run_py(args, env=clean_env())
    assert r.returncode == 0, r.stderr
    pid = wait_until(lambda: int((work / "pgb.pid").read_text()), 20, ignore=(FileNotFoundError, ValueError))
    try:
        wait_until(lambda: "process up" in (work / "pgb.log").read_text(), 10, ignore=(FileNotFoundError,))
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(pw.pw_uid)] * 4      # real, effective, saved, fs
        sock = work / f".s.PGSQL.{port}"
        for path in (sock, work / "pgb.pid", work / "pgb.log"):
            assert path.stat().st_uid == pw.pw_uid, path
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 20)
        shutil.rmtree(work, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_sigterm_waits_for_clients(pooler_factory):
    p = pooler_factory.start({"pool_mode": "session"})
    conn = p.connect(autocommit=True)
    conn.execute("select 1")
    p.signal(signal.SIGTERM)
    p.wait_for_log("got SIGTERM, shutting down, waiting for clients")
    time.sleep(0.5)
    assert p.is_running()
    assert conn.execute("select 2").fetchone() == (2,)      # the session goes on
    conn.close()
    p.wait_for_log("client connections dropped, exiting")
    assert p.wait(10) == 0
