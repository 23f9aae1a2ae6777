"""The Debian package end to end (root only): build the .deb (with a foreign python3 first in PATH), lintian it,
install it fresh and over Debian's pgbouncer, run the service through the init script against a real PostgreSQL,
reload, restart, stop, purge; and the way back to Debian's pgbouncer with the admin's configuration untouched.

The machine is left as found: Debian's pgbouncer is reinstalled (with its /etc files restored) if it was there.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pgbouncer_py.config.params import PARAMS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs packages: needs root"),
    pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("apt-get") is None, reason="needs dpkg and apt"),
]

ROOT = Path(__file__).resolve().parents[2]
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's python3, not a pyenv/venv one, builds the package
BUILD_DEPS = ["build-essential", "debhelper", "dh-python", "python3-all-dev", "python3-setuptools",
              "pybuild-plugin-pyproject", "fakeroot", "lintian", "man-db", "groff-base"]
RUN_DEPS = ["python3-cryptography", "python3-uvloop", "python3-aiodns", "python3-pampy", "postgresql-common",
            "postgresql", "postgresql-client"]
PIDFILE = Path("/var/run/postgresql/pgbouncer.pid")
LOGFILE = Path("/var/log/postgresql/pgbouncer.log")
INI = Path("/etc/pgbouncer/pgbouncer.ini")
USERLIST = Path("/etc/pgbouncer/userlist.txt")
# What the package owns outside the Python modules; all of it must be gone after a purge.
PACKAGE_PATHS = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer-py", "/etc/init.d/pgbouncer", "/etc/default/pgbouncer", str(INI), str(USERLIST),
                 "/lib/systemd/system/pgbouncer.service", "/usr/lib/python3/dist-packages/pgbouncer_py",
                 "/usr/share/man/man1/pgbouncer.1.gz", "/usr/share/man/man1/pgbouncer-py.1.gz",
                 "/usr/share/man/man5/pgbouncer.5.gz"]
SNAPSHOT_PATHS = ["etc/pgbouncer", "etc/default/pgbouncer", "etc/init.d/pgbouncer"]
# Two runs of this module at once (say a developer's and CI's) would undo each other's installs.
RUN_LOCK = "/var/lock/pgbouncer-py-test-deb.lock"
# Wait for other apt/dpkg users instead of failing on their lock.
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]


# --- helpers -----------------------------------------------------------------------------------------
def sh(cmd: list[str], *, check: bool = True, timeout: float = 300, cwd: str | Path | None = None,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command with a clean environment and no stdin (a dpkg conffile prompt fails instead of hanging)."""
    full_env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive",
                **(env or {})}
    res = subprocess.run(cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}\n--- stdout\n{res.stdout[-6000:]}\n"
                    f"--- stderr\n{res.stderr[-6000:]}", pytrace=False)
    return res


def pkg_status(name: str) -> str:
    """'ii', 'rc', ... from dpkg, or '' when dpkg does not know the package."""
    res = sh(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", name], check=False)
    return res.stdout.strip() if res.returncode == 0 else ""


def apt_install(packages: list[str]) -> None:
    missing = [p for p in packages if pkg_status(p) != "ii"]
    if not missing:
        return
    cmd = [*APT, "install", "-y", "--no-install-recommends", *missing]
    if sh(cmd, check=False, timeout=900).returncode != 0:
        sh([*APT, "update"], timeout=900)
        sh(cmd, timeout=600)


def wait_until(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(0.1)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_pid() -> int:
    """The pid in the service's pidfile, 0 when there is none (yet)."""
    try:
        return int(PIDFILE.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def psql(sql: str, *, db: str, user: str, password: str | None = None, host: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    """psql against the pooler on port 6432, run as OS user postgres."""
    cmd = ["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-p", "6432", "-U", user, "-d", db, "-c", sql]
    if host:
        cmd[7:7] = ["-h", host]
    env = {"PGPASSWORD": password} if password else {}
    return sh(cmd, env={**env, "PGCONNECT_TIMEOUT": "5"}, check=check, timeout=30)


def query_eventually(sql: str, **kw) -> str:
    """Retry until the pooler answers (it may still be binding right after start)."""
    last = []

    def attempt():
        res = psql(sql, check=False, **kw)
        last[:] = [res]
        return res.stdout.strip() if res.returncode == 0 else None

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = attempt()
        if out is not None:
            return out
        time.sleep(0.2)
    pytest.fail(f"no answer to {sql!r} ({kw}): {last[0].stderr if last else ''}\n--- {LOGFILE}:\n"
                f"{LOGFILE.read_text()[-3000:] if LOGFILE.exists() else '(none)'}", pytrace=False)


def connect_tcp(db: str):
    """A psycopg connection to the pooler over TCP as postgres/postgres, or None without psycopg."""
    try:
        import psycopg
    except ImportError:
        return None
    return psycopg.connect(host="localhost", port=6432, dbname=db, user="postgres", password="postgres",
                           autocommit=True, connect_timeout=5)


def owner_mode(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777


def service(action: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(["service", "pgbouncer", action], check=check, timeout=120)


def stop_leftover_pooler() -> None:
    """Stop a pooler this module started and left running (never some other process)."""
    if Path("/etc/init.d/pgbouncer").exists():
        sh(["/etc/init.d/pgbouncer", "stop"], check=False, timeout=120)
    pid = read_pid()
    if pid and pid_alive(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == "pgbouncer":
        os.kill(pid, 9)
    PIDFILE.unlink(missing_ok=True)


def rc_links() -> list[str]:
    """The init script's rc?.d links and the systemd enablement link, relative to /."""
    links = [str(p)[1:] for p in Path("/etc").glob("rc?.d/[SK]??pgbouncer")]
    wants = "etc/systemd/system/multi-user.target.wants/pgbouncer.service"
    return sorted(links + ([wants] if os.path.lexists("/" + wants) else []))


def assert_purged() -> None:
    assert pkg_status("pgbouncer-py") in ("", "un", "pn")
    left = [p for p in PACKAGE_PATHS if os.path.lexists(p)]
    assert left == []
    links = sorted(str(p) for p in Path("/etc").glob("rc?.d/*pgbouncer"))
    assert links == []
    # After an install over Debian's pgbouncer, that package stays in config-files state and dpkg keeps the
    # (then empty) directory it registered until pgbouncer itself is purged.
    assert not Path("/etc/pgbouncer").exists() or os.listdir("/etc/pgbouncer") == []


def back_to_debian_pgbouncer(c_deb: Path) -> None:
    """The way back documented in packaging/README.md and docs/migrating.md: install Debian's pgbouncer keeping
    the admin's configuration (apt removes pgbouncer-py, which conflicts with it), then purge pgbouncer-py."""
    sh([*APT, "install", "-y", "-o", "Dpkg::Options::=--force-confold", str(c_deb)], timeout=600)
    assert pkg_status("pgbouncer") == "ii"
    assert pkg_status("pgbouncer-py") == "rc"
    sh([*APT, "purge", "-y", "pgbouncer-py"], timeout=600)
    assert pkg_status("pgbouncer-py") in ("", "un", "pn")
    assert Path("/usr/sbin/pgbouncer").read_bytes()[:4] == b"\x7fELF"
    assert not os.path.lexists("/usr/bin/pgbouncer-py")
    assert not Path("/usr/lib/python3/dist-packages/pgbouncer_py").exists()
    # the C package's own init script is in place, executable, and its rc links are there
    init = Path("/etc/init.d/pgbouncer")
    init_md5 = sh(["md5sum", str(init)]).stdout.split()[0]
    assert f"/etc/init.d/pgbouncer {init_md5}" in sh(["dpkg-query", "-W", "-f=${Conffiles}", "pgbouncer"]).stdout
    assert init.stat().st_mode & 0o111
    assert [link for link in rc_links() if link.startswith("etc/rc2.d/")] != []


def run_debian_pgbouncer_service() -> int:
    """Start the service, return the pid of Debian's binary running it (the caller stops it)."""
    service("start")
    pid = wait_until(read_pid, what="pidfile")
    assert os.readlink(f"/proc/{pid}/exe") == "/usr/sbin/pgbouncer"
    return pid


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_lock():
    """Serialize whole runs of this module on the machine."""
    with open(RUN_LOCK, "w") as f:
        deadline = time.monotonic() + 1200
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run of {__name__} still holds {RUN_LOCK}", pytrace=False)
                time.sleep(1)
        yield
        fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def workdir(run_lock):
    path = Path(tempfile.mkdtemp(prefix="pgbdeb-"))
    path.chmod(0o755)  # lintian runs as nobody, PostgreSQL as postgres
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def deb(workdir: Path) -> Path:
    """Build the binary package from a copy of the source tree (the repository stays clean)."""
    apt_install(BUILD_DEPS + RUN_DEPS)
    src = workdir / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", ".venv", "*.egg-info", ".pybuild", ".pytest_cache", ".ruff_cache", "build", "dist"))
    for generated in ("debian/pgbouncer-py", "debian/.debhelper", "debian/build-man"):
        shutil.rmtree(src / generated, ignore_errors=True)
    # A python3 (and python3.11) earlier in PATH that is not Debian's, as a pyenv or a venv puts there: the build
    # must not use it (debian/rules runs Debian's /usr/bin/python3 whatever PATH says).
    fake = workdir / "foreign-python"
    fake.mkdir()
    for name in ("python3", "python3.11"):
        (fake / name).write_text("#!/bin/sh\necho \"foreign $0 used by the build\" >&2\nexit 97\n")
        (fake / name).chmod(0o755)
    sh(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, timeout=600, env={"PATH": f"{fake}:{SAFE_PATH}"})
    debs = sorted(workdir.glob("pgbouncer-py_*.deb"))
    assert len(debs) == 1, debs
    debs[0].chmod(0o644)
    return debs[0]


@pytest.fixture(scope="module")
def machine(workdir: Path):
    """Remember Debian's pgbouncer and its /etc files; put everything back afterwards."""
    before = pkg_status("pgbouncer")
    version = sh(["dpkg-query", "-W", "-f=${Version}", "pgbouncer"], check=False).stdout.strip() if before else ""
    cdir = workdir / "c-deb"
    cdir.mkdir()
    cached = [p for p in Path("/var/cache/apt/archives").glob("pgbouncer_*.deb")
              if version and p.name.startswith(f"pgbouncer_{version.split(':')[-1]}_")]
    if cached:
        shutil.copy(cached[0], cdir)
    else:
        spec = f"pgbouncer={version}" if before == "ii" else "pgbouncer"
        if sh([*APT, "download", spec], cwd=cdir, check=False).returncode != 0:
            sh([*APT, "update"], timeout=900)
            sh([*APT, "download", spec], cwd=cdir)
    c_deb = next(cdir.glob("pgbouncer_*.deb"))
    c_deb.chmod(0o644)
    cdir.chmod(0o755)
    snapshot = [p for p in SNAPSHOT_PATHS if os.path.lexists("/" + p)] + rc_links()
    backup = workdir / "etc-backup.tar"
    if snapshot:
        sh(["tar", "-cpf", str(backup), "-C", "/", *snapshot])
    log_existed = LOGFILE.exists()
    # Each dpkg run would otherwise rebuild the whole man-db index (slow on a loaded machine); `man` reads
    # the pages without it.
    man_auto_update = Path("/var/lib/man-db/auto-update")
    man_auto_update_existed = man_auto_update.exists()
    man_auto_update.unlink(missing_ok=True)
    yield {"c_deb": c_deb}

    stop_leftover_pooler()
    if pkg_status("pgbouncer-py"):
        sh([*APT, "purge", "-y", "pgbouncer-py"], check=False, timeout=900)
    if pkg_status("pgbouncer"):
        sh([*APT, "purge", "-y", "pgbouncer"], check=False, timeout=900)
    shutil.rmtree("/etc/pgbouncer", ignore_errors=True)
    if before == "ii":
        sh([*APT, "install", "-y", str(c_deb)], timeout=600)
        if snapshot:
            for link in rc_links():  # enabled/disabled as before, whatever update-rc.d chose now
                os.unlink("/" + link)
            sh(["tar", "-xpf", str(backup), "-C", "/"])
    if not log_existed:
        LOGFILE.unlink(missing_ok=True)
    if man_auto_update_existed:
        man_auto_update.touch()


@pytest.fixture(scope="module")
def cluster(workdir: Path):
    """A PostgreSQL cluster run by user postgres, reachable only over its Unix socket in `dir`."""
    apt_install(RUN_DEPS)
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
    pgdir = workdir / "pg"
    pgdir.mkdir()
    shutil.chown(pgdir, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_pg = ["runuser", "-u", "postgres", "--"]
    sh([*as_pg, str(bindir / "initdb"), "-D", str(pgdir / "data"), "-U", "postgres", "--auth=trust", "--no-sync",
        "-E", "UTF8", "--locale=C"])
    with open(pgdir / "data" / "postgresql.conf", "a") as f:
        f.write(f"listen_addresses = ''\nport = {port}\nunix_socket_directories = '{pgdir}'\nfsync = off\n")
    sh([*as_pg, str(bindir / "pg_ctl"), "start", "-w", "-D", str(pgdir / "data"), "-l", str(pgdir / "log")])
    yield {"dir": str(pgdir), "port": port}
    sh([*as_pg, str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(pgdir / "data")], check=False)


# --- tests -------------------------------------------------------------------------------------------
def test_lintian_reports_no_errors_or_warnings(deb: Path):
    res = sh(["runuser", "-u", "nobody", "--", "env", "HOME=/tmp", "lintian", "--info", "--pedantic",
              "--show-overrides", str(deb)], check=False, cwd="/tmp")
    print(res.stdout, res.stderr)
    bad = [line for line in res.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert bad == [], res.stdout
    assert res.returncode == 0, res.stdout + res.stderr


def test_fresh_install_conffiles_man_pages_service_and_purge(deb: Path, machine):
    if pkg_status("pgbouncer"):
        sh([*APT, "purge", "-y", "pgbouncer"], timeout=900)
    shutil.rmtree("/etc/pgbouncer", ignore_errors=True)

    sh([*APT, "install", "-y", str(deb)], timeout=600)
    assert pkg_status("pgbouncer-py") == "ii"
    for installed, shipped, expected in [
        (INI, "packaging/pgbouncer.ini", ("postgres", "postgres", 0o640)),
        (USERLIST, "packaging/userlist.txt", ("postgres", "postgres", 0o640)),
        (Path("/etc/default/pgbouncer"), "packaging/pgbouncer.default", ("root", "root", 0o644)),
        (Path("/etc/init.d/pgbouncer"), "packaging/pgbouncer.init", ("root", "root", 0o755)),
    ]:
        assert installed.read_bytes() == (ROOT / shipped).read_bytes(), installed
        assert owner_mode(installed) == expected, installed
    assert sorted(Path("/etc").glob("rc2.d/S*pgbouncer")) != []
    version = sh(["runuser", "-u", "postgres", "--", "/usr/sbin/pgbouncer", "-V"]).stdout
    assert version.startswith("PgBouncer ")
    # /usr/bin/pgbouncer-py: the same program under its own name (README's examples call it)
    assert os.path.realpath("/usr/bin/pgbouncer-py") == "/usr/sbin/pgbouncer"
    assert sh(["runuser", "-u", "postgres", "--", "pgbouncer-py", "-V"]).stdout == version
    usage = sh(["pgbouncer-py", "--help"]).stdout
    assert usage.startswith("/usr/bin/pgbouncer-py is a connection pooler for PostgreSQL.\n")
    # the package is built with the compiled scanner, and Debian's python3 loads it
    code = "from pgbouncer_py.proto import scan; print(scan.COMPILED, scan.server_scan.__module__)"
    assert sh(["/usr/bin/python3", "-c", code], cwd="/").stdout.split() == ["True", "pgbouncer_py.proto._scan"]

    man_env = {"MANPAGER": "cat", "MANWIDTH": "100"}
    page1 = sh(["man", "--warnings", "pgbouncer"], env=man_env)
    assert page1.stderr == ""
    for heading in ("SYNOPSIS", "OPTIONS", "SIGNALS", "ADMIN CONSOLE", "SHOW VERSION"):
        assert heading in page1.stdout
    assert sh(["man", "--warnings", "pgbouncer-py"], env=man_env).stdout == page1.stdout
    for doc in ("migrating.md", "config.md", "console.md"):
        assert list(Path("/usr/share/doc/pgbouncer-py").glob(doc + "*")) != [], doc
    page5 = sh(["man", "--warnings", "5", "pgbouncer"], env=man_env)
    assert page5.stderr == ""
    words = set(re.findall(r"[a-z0-9_]+", page5.stdout))
    assert [name for name in PARAMS if name not in words] == []

    # The default configuration runs as is: the postgres user reaches the admin console.
    service("start")
    assert "PgBouncer" in query_eventually("SHOW VERSION", db="pgbouncer", user="pgbouncer")
    service("stop")

    sh([*APT, "purge", "-y", "pgbouncer-py"], timeout=600)
    assert_purged()


def test_install_over_debian_pgbouncer_then_service_lifecycle_and_back(deb: Path, machine, cluster):
    # Debian's PgBouncer, freshly installed, with a working configuration.
    for package in ("pgbouncer-py", "pgbouncer"):
        if pkg_status(package):
            sh([*APT, "purge", "-y", package], timeout=900)
    shutil.rmtree("/etc/pgbouncer", ignore_errors=True)
    sh([*APT, "install", "-y", str(machine["c_deb"])], timeout=600)
    db_line = f"host={cluster['dir']} port={cluster['port']}"
    ini_text = re.sub(r"^\[databases\][ \t]*$", f"[databases]\npostgres = {db_line}", INI.read_text(), count=1,
                      flags=re.M)
    assert ini_text != INI.read_text()
    INI.write_text(ini_text)
    with USERLIST.open("a") as f:
        f.write('"postgres" "postgres"\n')
    service("start")
    assert query_eventually("SELECT 1+2", db="postgres", user="postgres", password="postgres") == "3"
    # apt's removal of pgbouncer stops it through invoke-rc.d, which a policy-rc.d (as in containers) may
    # forbid: stop it here so the result does not depend on that.
    service("stop")
    wait_until(lambda: not read_pid() or not pid_alive(read_pid()), what="C pgbouncer exit")
    admin_files = {p: (p.read_bytes(), owner_mode(p)) for p in (INI, USERLIST)}

    # Our package replaces it and keeps the admin's files untouched.
    res = sh([*APT, "install", "-y", str(deb)], timeout=600)
    assert "conffile prompt" not in res.stdout + res.stderr
    assert pkg_status("pgbouncer-py") == "ii"
    assert pkg_status("pgbouncer") in ("", "rc")
    assert {p: (p.read_bytes(), owner_mode(p)) for p in (INI, USERLIST)} == admin_files
    leftovers = [n for n in os.listdir("/etc/pgbouncer") + os.listdir("/etc/default")
                 if ".dpkg-" in n or ".pgbouncer-py-keep" in n]
    assert leftovers == []
    assert Path("/etc/init.d/pgbouncer").read_bytes() == (ROOT / "packaging/pgbouncer.init").read_bytes()
    assert Path("/usr/sbin/pgbouncer").read_text().startswith("#!/usr/bin/python3\n")

    # start
    service("start")
    assert service("status", check=False).returncode == 0
    pid = wait_until(read_pid, what="pidfile")
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "pgbouncer"
    assert Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert "PgBouncer" in query_eventually("SHOW VERSION", db="pgbouncer", user="pgbouncer")
    assert query_eventually("SELECT 1+2", db="postgres", user="postgres", password="postgres") == "3"
    assert query_eventually("SELECT 2+2", db="postgres", user="postgres", password="postgres",
                            host="localhost") == "4"
    assert LOGFILE.exists() and LOGFILE.stat().st_size > 0

    # reload: a database added to the file becomes reachable, same process
    INI.write_text(INI.read_text().replace(
        "[databases]\n", f"[databases]\nreloaded = {db_line} dbname=postgres\n", 1))
    service("reload")
    assert query_eventually("SELECT current_database()", db="reloaded", user="postgres",
                            password="postgres") == "postgres"
    assert read_pid() == pid and pid_alive(pid)

    # restart: online restart (-R), a new process takes over. A failure here is reported at the end, after
    # stop and purge have been checked too.
    restart_failure = None
    running_pid = pid
    client = connect_tcp("reloaded")  # a client connected across the restart keeps its session
    res = service("restart", check=False)
    try:
        if client is not None:
            assert client.execute("SELECT 40+2").fetchone()[0] == 42, "client session lost in online restart"
        assert res.returncode == 0, f"service pgbouncer restart exited {res.returncode}"
        assert "could not contact" not in res.stdout + res.stderr
        running_pid = wait_until(lambda: read_pid() not in (0, pid) and read_pid(), what="new pid after restart")
        wait_until(lambda: not pid_alive(pid), what="old process exit after online restart")
        assert pid_alive(running_pid)
        assert query_eventually("SELECT 1+2", db="reloaded", user="postgres", password="postgres") == "3"
    except Exception as e:  # noqa: BLE001 - any failure of this step is reported after stop and purge
        restart_failure = f"online restart: {e!r}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
        running_pid = read_pid() or pid
    finally:
        if client is not None:
            client.close()

    # stop
    service("stop")
    wait_until(lambda: not pid_alive(running_pid), what="exit after stop")
    assert not PIDFILE.exists()
    assert service("status", check=False).returncode != 0
    assert psql("SELECT 1", db="postgres", user="postgres", password="postgres", check=False).returncode != 0

    # Back to Debian's pgbouncer: the admin's files (as the reload step above left them) untouched, its service
    # runs them.
    admin_files = {p: (p.read_bytes(), owner_mode(p)) for p in (INI, USERLIST)}
    links = rc_links()
    back_to_debian_pgbouncer(machine["c_deb"])
    assert {p: (p.read_bytes(), owner_mode(p)) for p in (INI, USERLIST)} == admin_files
    assert rc_links() == links
    run_debian_pgbouncer_service()
    try:
        assert query_eventually("SELECT 1+2", db="postgres", user="postgres", password="postgres") == "3"
    finally:
        service("stop")
    assert {p: (p.read_bytes(), owner_mode(p)) for p in (INI, USERLIST)} == admin_files
    if restart_failure:
        pytest.fail(restart_failure, pytrace=False)


def test_back_to_debian_pgbouncer_after_a_fresh_install(deb: Path, machine):
    if pkg_status("pgbouncer"):
        sh([*APT, "purge", "-y", "pgbouncer"], timeout=900)
    shutil.rmtree("/etc/pgbouncer", ignore_errors=True)
    sh([*APT, "install", "-y", str(deb)], timeout=600)
    INI.write_text(INI.read_text() + "; edited by the admin\n")
    admin_files = {p: (p.read_bytes(), owner_mode(p)) for p in (INI, USERLIST)}

    back_to_debian_pgbouncer(machine["c_deb"])
    assert {p: (p.read_bytes(), owner_mode(p)) for p in (INI, USERLIST)} == admin_files
    run_debian_pgbouncer_service()
    service("stop")
