"""scripts/test.sh gives the host back (root only): Debian's pgbouncer service, stopped and disabled while the suite
runs, is enabled and started again, and net.ipv4.tcp_migrate_req gets its old value (README.md, Tests).

Runs install-deps.sh's host_save_state / host_prepare_for_tests / host_restore against the real service, with the
sysctl replaced by a file; the service is left as it was found."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts and stops the pgbouncer service: needs root"),
]

ROOT = Path(__file__).resolve().parents[2]
PIDFILE = Path("/run/postgresql/pgbouncer.pid")
RUN_LOCK = "/var/lock/pgbouncer-py-test-deb.lock"  # the package test's: it swaps the same package
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


def sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], env=ENV, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def running() -> bool:
    try:
        pid = int(PIDFILE.read_text().strip())
        return Path(f"/proc/{pid}/exe").resolve() == Path("/usr/sbin/pgbouncer")
    except (OSError, ValueError):
        return False


def enabled() -> bool:
    return any(Path("/etc/rc2.d").glob("S??pgbouncer"))


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 15
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.1)


def debian_pgbouncer_installed() -> bool:
    res = sh("dpkg-query -W -f='${db:Status-Abbrev}' pgbouncer")
    try:
        native = Path("/usr/sbin/pgbouncer").read_bytes()[:4] == b"\x7fELF"
    except OSError:
        native = False
    return res.stdout.startswith("ii") and native and Path("/etc/init.d/pgbouncer").exists()


@pytest.fixture
def service_running_and_enabled(tmp_path):
    """Debian's service enabled and running (under the package test's lock); afterwards as it was found."""
    if shutil.which("update-rc.d") is None or Path("/run/systemd/system").is_dir():
        pytest.skip("checks the SysV service (no systemd as PID 1 here)")
    with open(RUN_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not debian_pgbouncer_installed():
            pytest.skip("needs Debian's pgbouncer package installed")
        was_running, was_enabled = running(), enabled()
        try:
            sh("update-rc.d pgbouncer enable")
            sh("/etc/init.d/pgbouncer start")
            wait_for(running, "Debian's pgbouncer service to start")
            yield
        finally:
            if not was_running:
                sh("/etc/init.d/pgbouncer stop")
            if not was_enabled:
                sh("update-rc.d pgbouncer disable")


def test_test_run_stops_the_service_and_the_sysctl_then_puts_them_back(service_running_and_enabled, tmp_path):
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    script = f"""
        source {ROOT}/scripts/install-deps.sh
        MIGRATE_REQ={sysctl}
        PKG_TEST_LOCK={tmp_path}/lock   # ours is held by this test
        host_save_state
        host_prepare_for_tests
        echo "during: $(cat {sysctl})"
        sleep 1
        if [ -s {PIDFILE} ] && kill -0 "$(cat {PIDFILE})" 2>/dev/null; then echo "during: running"; fi
        ls /etc/rc2.d | grep -q '^S..pgbouncer$' && echo "during: enabled"
        host_restore
    """
    res = sh(script)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "during: 1" in res.stdout
    assert "during: running" not in res.stdout
    assert "during: enabled" not in res.stdout
    assert "stopping Debian's pgbouncer service for the test run" in res.stderr
    assert sysctl.read_text().strip() == "0"
    wait_for(running, "the service to run again")
    assert enabled()
