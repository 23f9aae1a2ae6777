"""scripts/demo.sh, the README's first command: it shows pooling at work (SHOW POOLS, tps straight to PostgreSQL vs
through the pooler on a connect-per-transaction workload) and leaves nothing behind, also when interrupted.

Run as the unprivileged test user on a machine where PostgreSQL is installed (DEMO_NO_INSTALL=1: the demo must
not want anything more); the root variant checks that a run as root hands PostgreSQL and the pooler to an
existing account and changes nothing of the host (users, sysctl, services)."""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pgutil import find_pg_bindir, short_tempdir

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.sh"
POOL_SIZE = 5  # default_pool_size in the demo's pgbouncer.ini


def _have_postgresql() -> bool:
    try:
        bindir = find_pg_bindir()
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        return False
    return all((bindir / b).exists() for b in ("initdb", "pg_ctl", "postgres", "psql", "pgbench"))


pytestmark = [
    pytest.mark.skipif(not _have_postgresql() or not os.path.exists("/usr/bin/python3"),
                       reason="needs PostgreSQL's server and client programs and /usr/bin/python3"),
    # the demo starts its own pooler whatever the suite's scanner: test.sh's second, pure-Python pass skips it
    pytest.mark.skipif(os.environ.get("PGBOUNCER_PY_PURE") == "1", reason="runs once, in the first pass"),
]


@pytest.fixture
def tmpdir_short():
    """TMPDIR for the demo (its PostgreSQL puts a unix socket there: the path must be short)."""
    path = short_tempdir("demo-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo_env(tmpdir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmpdir or "/tmp"), "LANG": "C.UTF-8",
           "DEMO_SECONDS": "2", "DEMO_CLIENTS": "4", "DEMO_NO_INSTALL": "1", **extra}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def work_dir(output: str) -> str:
    m = re.search(r"^### a throwaway PostgreSQL .*: (\S+)/data, port (\d+)$", output, re.M)
    assert m, output
    return m[1]


def ports(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"^### (?:a throwaway PostgreSQL|the pooler on port) .*?port (\d+)", output,
                                       re.M)]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (the demo's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def assert_nothing_left(output: str) -> None:
    work = work_dir(output)
    assert f"demo: stopped PostgreSQL and the pooler, removed {work}" in output
    assert not os.path.exists(work)
    assert processes_mentioning(work) == []
    assert [p for p in ports(output) if not port_is_free(p)] == []


def result_rows(output: str) -> dict[str, tuple[int, int, int]]:
    """The result table: route -> (tps, connections, server sessions)."""
    rows = {}
    for route in ("straight to PostgreSQL", "through the pooler"):
        m = re.search(rf"^{route}\s+(\d+)\s+(\d+)\s+(\d+)$", output, re.M)
        assert m, output
        rows[route] = (int(m[1]), int(m[2]), int(m[3]))
    return rows


def pools_table(output: str, heading: str) -> list[list[str]]:
    block = output.split(f"### SHOW POOLS {heading}", 1)[1].split("\n###", 1)[0]
    return [line.split() for line in block.splitlines()[1:] if line.strip()]


def check_demo_output(output: str) -> None:
    assert "process up: PgBouncer" in output
    assert re.search(r"^ demo\s+\| demo\s+\|\s+\d+ \|\s+100000$", output, re.M), output  # psql through the pooler
    for heading in ("before the workload", "during the workload", "after the workload"):
        table = pools_table(output, heading)
        assert table[0][:4] == ["database", "user", "cl_active", "cl_waiting"], table
        demo = next(row for row in table if row[0] == "demo")
        assert demo[-1] == "transaction"
        assert int(demo[4]) + int(demo[5]) + int(demo[6]) <= POOL_SIZE  # sv_active + sv_idle + sv_used
    after = next(row for row in pools_table(output, "after the workload") if row[0] == "demo")
    assert after[2:4] == ["0", "0"] and int(after[5]) >= 1  # no client left, server connections kept
    rows = result_rows(output)
    direct, pooled = rows["straight to PostgreSQL"], rows["through the pooler"]
    # every direct connection started a server session; the pooled ones shared the pool's few
    assert direct[2] >= direct[1] > 0
    assert pooled[1] > 0 and pooled[2] <= POOL_SIZE
    assert pooled[0] > direct[0], rows


@pytest.mark.timeout(120)
def test_demo_shows_pooling_and_leaves_nothing_behind(tmpdir_short: Path):
    res = subprocess.run(["bash", str(DEMO)], env=demo_env(tmpdir_short), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=110, start_new_session=True)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert "missing Debian packages" not in output
    check_demo_output(output)
    assert_nothing_left(output)
    assert list(tmpdir_short.iterdir()) == []


def test_demo_names_the_missing_packages_and_the_command(tmpdir_short: Path):
    res = subprocess.run(["bash", str(DEMO)], env=demo_env(tmpdir_short, PG_BINDIR="/nonexistent"),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert res.stdout.splitlines()[0] == "demo: missing Debian packages: postgresql postgresql-client"
    assert "apt-get install --no-install-recommends postgresql postgresql-client'" in res.stdout
    assert list(tmpdir_short.iterdir()) == []


def run_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read the demo's output until a line contains `marker`; return what was read."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout}s:\n{out.decode(errors='replace')}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"the demo ended before {marker!r}:\n{out.decode(errors='replace')}"
            out += chunk
    return out.decode(errors="replace")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("marker", ["straight to PostgreSQL (port", "through the pooler (port"])
def test_demo_interrupted_leaves_nothing_behind(tmpdir_short: Path, marker: str):
    """^C at a terminal: SIGINT to the whole foreground process group, here half a second into a 4 s pgbench run
    (straight to PostgreSQL: pgbench in the foreground; through the pooler: in the background)."""
    proc = subprocess.Popen(["bash", str(DEMO)], env=demo_env(tmpdir_short, DEMO_SECONDS="4"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        head = run_until(proc, marker, 90)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = head + rest.decode(errors="replace")
    assert proc.returncode == 130, output
    assert "### result" not in output
    assert_nothing_left(output)
    assert list(tmpdir_short.iterdir()) == []


# --- as root -----------------------------------------------------------------------------------------------
def _host_state() -> dict[str, str]:
    """What the demo must never change: accounts, the sysctl the test installer sets, the services' links."""
    state = {}
    for f in ("/etc/passwd", "/etc/group", "/etc/shadow"):
        state[f] = hashlib.sha256(Path(f).read_bytes()).hexdigest()
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    state["tcp_migrate_req"] = migrate.read_text() if migrate.exists() else ""
    state["rc links"] = " ".join(sorted(str(p) for p in Path("/etc").glob("rc?.d/*")))
    state["policy-rc.d"] = str(os.path.exists("/usr/sbin/policy-rc.d"))
    return state


@pytest.mark.root
@pytest.mark.timeout(120)
@pytest.mark.skipif(os.geteuid() != 0, reason="runs the demo as root")
def test_demo_as_root_runs_as_an_existing_user_and_changes_nothing():
    user = "postgres"
    before = _host_state()
    res = subprocess.run(["bash", str(DEMO)], env=demo_env(DEMO_USER=user), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=110, start_new_session=True)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert f"they run as the existing user '{user}'" in output
    check_demo_output(output)
    assert_nothing_left(output)
    assert _host_state() == before
