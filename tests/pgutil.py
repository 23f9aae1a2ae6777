"""Test helpers: a throwaway PostgreSQL cluster (PgCluster), a launcher for pgbouncer-py or Debian's
PgBouncer in front of it (PoolerFactory / Pooler), free ports and wait_until() polling."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from signal import SIGHUP, SIGKILL, SIGTERM, Signals
from typing import Any

# ---------------------------------------------------------------------------------------------------
# Fixed facts of the test cluster (tests may rely on every name and password here):
#
#   role        password       secret stored in pg_authid   notes
#   postgres    postgrespass   SCRAM-SHA-256                superuser; no password needed over the unix socket
#   md5user     md5pass        md5
#   scramuser   scrampass      SCRAM-SHA-256
#   trustuser   (none)         none                         can log in over the unix socket only (trust)
#
#   databases: postgres, testdb, otherdb, benchdb (pgbench tables: PgCluster.init_pgbench()).
#   Every role may create objects in schema public of testdb, otherdb and benchdb.
#   pg_hba.conf:  local all all trust / host all all 127.0.0.1/32 md5 / host all all ::1/128 md5
#   (method md5 lets a role whose secret is SCRAM authenticate with SCRAM).
#
# Pooler defaults (PoolerFactory.start): auth_type md5, an auth_file with the plaintext passwords above
# plus the console users below, admin_users = pgbouncer, stats_users = pgb_stats.
# ---------------------------------------------------------------------------------------------------
PASSWORDS: dict[str, str] = {"postgres": "postgrespass", "md5user": "md5pass", "scramuser": "scrampass"}
MD5_ROLE, SCRAM_ROLE, TRUST_ROLE = "md5user", "scramuser", "trustuser"
TEST_DATABASES = ("testdb", "otherdb", "benchdb")
ADMIN_USER, ADMIN_PASSWORD = "pgbouncer", "adminpass"
STATS_USER, STATS_PASSWORD = "pgb_stats", "statspass"
DEFAULT_USERLIST: dict[str, str] = {**PASSWORDS, ADMIN_USER: ADMIN_PASSWORD, STATS_USER: STATS_PASSWORD}

C_PGBOUNCER = os.environ.get("PGBOUNCER_C_BIN", "/usr/sbin/pgbouncer")
# The real PgBouncer 1.24.1 (Debian 13's binary) through the shared tool beside the repository
# (../shared/tools/pgbouncer-1.24; scripts/install-deps.sh unpacks it as root so the test user can run it).
PGB124 = os.environ.get("PGBOUNCER_124_BIN",
                        str(Path(__file__).resolve().parents[2] / "shared" / "tools" / "pgbouncer-1.24"))
# libpq environment that must not leak into the clients the tests run
_PG_ENV_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGPASSFILE",
                "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE", "PGAPPNAME", "PGCONNECT_TIMEOUT",
                "PGTARGETSESSIONATTRS", "PGREQUIRESSL", "PGGSSENCMODE", "PGCHANNELBINDING")

_DEFAULT = object()  # "use the password we know for this user"


class HarnessError(Exception):
    """A test fixture could not do its job (the message says why and carries the relevant log)."""


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str | Callable[[], str] = "condition", ignore: tuple[type[BaseException], ...] = ()):
    """Poll predicate() until it returns something truthy and return that; fail after `timeout` seconds.

    Exceptions listed in `ignore` count as "not yet" (the last one is reported on timeout)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ignore as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {text}{extra}")
        time.sleep(interval)


_port_lock = threading.Lock()
_ports_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, outside the kernel's ephemeral range (so outgoing connections
    do not grab it between this call and the bind), never the same one twice in a process."""
    with _port_lock:
        for _ in range(200):
            port = random.randint(20000, 32000)
            if port in _ports_given or port in (5432, 6432):
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _ports_given.add(port)
            return port
    raise HarnessError("no free TCP port found in 20000-32000")


def short_tempdir(prefix: str) -> Path:
    """A fresh directory with a short path (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def find_pg_bindir() -> Path:
    """PostgreSQL server binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/<v>/bin."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise HarnessError("PostgreSQL server binaries not found under /usr/lib/postgresql (apt install postgresql)")
    return found[-1].parent


def check_c_pgbouncer() -> None:
    """Fail loudly unless C_PGBOUNCER is a native executable (a package test may have put a launcher there)."""
    try:
        with open(C_PGBOUNCER, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise HarnessError(f"Debian's PgBouncer is not usable at {C_PGBOUNCER}: {exc} "
                           "(apt install pgbouncer; scripts/install-deps.sh does it)") from exc
    if magic != b"\x7fELF" or not os.access(C_PGBOUNCER, os.X_OK):
        raise HarnessError(f"{C_PGBOUNCER} is not Debian's PgBouncer binary (not an ELF executable): "
                           "reinstall the pgbouncer package, or point PGBOUNCER_C_BIN at the real one")


def check_pgbouncer_124() -> None:
    """Fail loudly unless the real PgBouncer 1.24.1 runs here (the shared tool, unpacked)."""
    try:
        out = subprocess.run([PGB124, "-V"], capture_output=True, text=True, timeout=120, env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"PgBouncer 1.24.1 is not usable through {PGB124}: {exc} "
                           "(scripts/install-deps.sh unpacks it; PGBOUNCER_124_BIN points elsewhere)") from exc
    if not out.stdout.startswith("PgBouncer 1.24"):
        raise HarnessError(f"{PGB124} -V did not report PgBouncer 1.24: {out.stdout!r} {out.stderr!r}")


def quote_connstr_value(value: Any) -> str:
    """Quote a value for a libpq / [databases] key=value string when it needs it."""
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connstr(**params: Any) -> str:
    """key=value string (libpq conninfo / PgBouncer [databases] syntax); None values are left out."""
    return " ".join(f"{k}={quote_connstr_value(v)}" for k, v in params.items() if v is not None)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without libpq variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _PG_ENV_VARS}
    env.update(extra or {})
    return env


def _tail(text: str, limit: int = 20000) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def running(cluster: PgCluster):
    """Start a cluster for the duration of a with-block (a fixture body); stop it even when start fails."""
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


class PgCluster:
    """A PostgreSQL cluster in a temp dir, run as the current (non-root) user; see the table above."""

    host = "127.0.0.1"

    def __init__(self, base_dir: Path, *, bindir: Path | None = None, port: int | None = None,
                 extra_conf: Mapping[str, Any] | None = None, hba: str | None = None):
        """extra_conf: more postgresql.conf settings (e.g. ssl); hba: pg_hba.conf text replacing the default."""
        self.extra_conf = dict(extra_conf or {})
        self.hba = hba
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self.socket_dir = short_tempdir("pgs")
        self.bindir = bindir or find_pg_bindir()
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.running = False
        self._pgbench_lock = threading.Lock()
        self._pgbench_scale = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> PgCluster:
        if os.geteuid() == 0:
            raise HarnessError("PostgreSQL refuses to run as root: run the tests through scripts/test.sh, "
                               "which runs them as an unprivileged user")
        self._run([self.bindir / "initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust", "--no-sync",
                   "-E", "UTF8", "--locale=C", "--no-instructions"], what="initdb")
        (self.data_dir / "pg_hba.conf").write_text(self.hba if self.hba is not None else
            "# written by tests/pgutil.py\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 md5\n"
            "host all all ::1/128 md5\n")
        for attempt in range(3):
            self._write_conf()
            proc = subprocess.run(
                [self.bindir / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data_dir, "-l", self.log_path],
                capture_output=True, text=True, env=clean_env({"LC_ALL": "C"}))
            if proc.returncode == 0:
                break
            log = self.log()
            if attempt < 2 and not self._fixed_port and "already in use" in log:
                self.port = free_port()
                continue
            raise HarnessError(f"PostgreSQL did not start (pg_ctl exit {proc.returncode}):\n{proc.stdout}"
                               f"{proc.stderr}\n--- {self.log_path} ---\n{_tail(log)}")
        self.running = True
        self._setup_roles()
        return self

    def _write_conf(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text().split("# --- tests/pgutil.py ---")[0]
        conf.write_text(text + "# --- tests/pgutil.py ---\n" + "".join(f"{k} = {v}\n" for k, v in {
            "listen_addresses": "'127.0.0.1'",
            "port": self.port,
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": 200,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'64MB'",
            "password_encryption": "'scram-sha-256'",
            "log_connections": "on",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "lc_messages": "'C'",
            **self.extra_conf,
        }.items()))

    def _setup_roles(self) -> None:
        sql = [
            f"ALTER ROLE postgres PASSWORD '{PASSWORDS['postgres']}'",
            "SET password_encryption = 'md5'",
            f"CREATE ROLE md5user LOGIN PASSWORD '{PASSWORDS['md5user']}'",
            "SET password_encryption = 'scram-sha-256'",
            f"CREATE ROLE scramuser LOGIN PASSWORD '{PASSWORDS['scramuser']}'",
            "CREATE ROLE trustuser LOGIN",
        ]
        sql += [f"CREATE DATABASE {db}" for db in TEST_DATABASES]
        self.psql(";\n".join(sql) + ";\n")
        for db in TEST_DATABASES:
            self.psql("GRANT ALL ON SCHEMA public TO PUBLIC", db=db)

    def allow_replication(self) -> None:
        """Accept replication connections over TCP (md5) too; added once, harmless to everything else."""
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text()
        line = "host replication all 127.0.0.1/32 md5\n"
        if line not in text:
            hba.write_text(text + line)
            self.query("select pg_reload_conf()")

    def stop(self) -> None:
        if self.running:
            self.running = False
            subprocess.run([self.bindir / "pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data_dir],
                           capture_output=True, env=clean_env())
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- clients --------------------------------------------------------------------------------
    def log(self, since: int = 0) -> str:
        """The server log (from character offset `since`)."""
        return _read(self.log_path)[since:]

    def server_connstr(self, db: str = "testdb", **extra: Any) -> str:
        """A [databases] entry pointing at this cluster over TCP (so the pooler authenticates with md5/SCRAM)."""
        return connstr(host=self.host, port=self.port, dbname=db, **extra)

    def dsn(self, db: str = "testdb", user: str = MD5_ROLE, password: Any = _DEFAULT, *, unix: bool = False,
            **extra: Any) -> str:
        """libpq conninfo for a direct connection (TCP by default, which needs the password)."""
        if password is _DEFAULT:
            password = None if unix else PASSWORDS.get(user)
        return connstr(host=self.socket_dir if unix else self.host, port=self.port, dbname=db, user=user,
                       password=password, **extra)

    def psql(self, sql: str, db: str = "postgres", user: str = "postgres", *, password: Any = _DEFAULT,
             tcp: bool = False, check: bool = True) -> str:
        """Run SQL (several statements allowed, each in its own transaction) through psql; returns stdout
        in unaligned tuples-only form (`|` between columns). Unix socket (trust) unless tcp=True."""
        if password is _DEFAULT:
            password = PASSWORDS.get(user)
        env = clean_env({"PGPASSWORD": password} if (tcp and password) else {})
        proc = subprocess.run(
            [self.bindir / "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", self.host if tcp else str(self.socket_dir), "-p", str(self.port), "-U", user, "-d", db, "-f", "-"],
            input=sql, capture_output=True, text=True, env=env, timeout=120)
        if check and proc.returncode != 0:
            raise HarnessError(f"psql as {user} on {db} failed (exit {proc.returncode}): {proc.stderr.strip()}\n"
                               f"SQL: {sql}")
        return proc.stdout.rstrip("\n")

    def query(self, sql: str, params: Sequence[Any] | None = None, db: str = "postgres",
              user: str = "postgres") -> list[tuple]:
        """Rows of one statement, run with psycopg over the unix socket in autocommit mode."""
        import psycopg

        with psycopg.connect(self.dsn(db, user, unix=True), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def init_pgbench(self, scale: int = 1) -> None:
        """Create (once per session) the pgbench tables in benchdb, usable by every role."""
        with self._pgbench_lock:
            if self._pgbench_scale >= scale:
                return
            self._run([self.bindir / "pgbench", "-i", "-q", "-s", str(scale), "-h", self.socket_dir,
                       "-p", str(self.port), "-U", "postgres", "benchdb"], what="pgbench -i")
            self.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC", db="benchdb")
            self._pgbench_scale = scale

    def _run(self, cmd: Sequence[Any], what: str) -> None:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=clean_env({"LC_ALL": "C"}))
        if proc.returncode != 0:
            raise HarnessError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


# ---------------------------------------------------------------------------------------------------
# Poolers
# ---------------------------------------------------------------------------------------------------
def _listening_inodes(port: int) -> set[str]:
    """Socket inodes of TCP listeners on `port` (IPv4 and IPv6), from /proc/net."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def listen_backlog(port: int) -> int:
    """The accept-queue limit the kernel has for the listening TCP socket on `port` (ss's Send-Q column)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])


def _unix_listening_inodes(path: str) -> set[str]:
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path:
            inodes.add(fields[6])
    return inodes


def _socket_inodes_of(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _ini_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def format_userlist(users: Mapping[str, str]) -> str:
    """auth_file text: one `"name" "secret"` line per user (a `"` inside is doubled)."""
    return "".join('"{}" "{}"\n'.format(u.replace('"', '""'), p.replace('"', '""')) for u, p in users.items())


class Pooler:
    """A running pooler process (pgbouncer-py or Debian's PgBouncer) started by PoolerFactory."""

    def __init__(self, *, name: str, binary: str, cmd: list[str], workdir: Path, ini_path: Path,
                 settings: dict[str, str], userlist: Mapping[str, str] | None):
        self.name = name
        self.binary = binary
        self.cmd = cmd
        self.workdir = workdir
        self.ini_path = ini_path
        self.settings = settings
        self.userlist = dict(userlist) if userlist is not None else {}
        self.stderr_path = workdir / "stderr.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._daemon_pid: int | None = None
        self._conns: list[Any] = []
        self.forced: str | None = None  # set by stop() when the first signal was not enough

    # -- settings-derived attributes ----------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self.settings.get("listen_port", 6432))

    @property
    def unix_dir(self) -> str | None:
        return self.settings.get("unix_socket_dir") or None

    @property
    def unix_socket_path(self) -> str | None:
        return f"{self.unix_dir}/.s.PGSQL.{self.port}" if self.unix_dir else None

    @property
    def log_path(self) -> Path:
        logfile = self.settings.get("logfile")
        return Path(logfile) if logfile else self.stderr_path

    @property
    def host(self) -> str:
        addr = self.settings.get("listen_addr", "").split(",")[0].strip()
        return "127.0.0.1" if addr in ("*", "0.0.0.0", "") else addr

    @property
    def pid(self) -> int | None:
        if self._daemon_pid is not None:
            return self._daemon_pid
        return self.proc.pid if self.proc else None

    # -- process control ------------------------------------------------------------------------
    def _launch(self) -> None:
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                env=clean_env({"PYTHONUNBUFFERED": "1"}), start_new_session=True)
        self.returncode = None
        self._daemon_pid = None

    def is_running(self) -> bool:
        if self._daemon_pid is not None:
            return _pid_alive(self._daemon_pid)
        return self.proc is not None and self.proc.poll() is None

    def _daemonized(self) -> bool:
        return any(a in ("-d", "--daemon") for a in self.cmd[:-1])

    def _adopt_daemon(self) -> bool:
        """After `-d`, the launched process exits 0 and the daemon's pid appears in the pidfile."""
        pidfile = self.settings.get("pidfile")
        if not pidfile:
            return False
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(Path(pidfile).read_text().strip())
            if _pid_alive(pid):
                self._daemon_pid = pid
                return True
        return False

    def listening(self) -> bool:
        """True when this process listens on its TCP port (if listen_addr is set) and unix socket (if set)."""
        pid = self.pid
        if pid is None:
            return False
        mine = _socket_inodes_of(pid)
        if self.settings.get("listen_addr") and not (_listening_inodes(self.port) & mine):
            return False
        if self.unix_socket_path and not (_unix_listening_inodes(self.unix_socket_path) & mine):
            return False
        return bool(mine)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait for the listeners and the `process up` log line (or the listeners for 1 s without it)."""
        deadline = time.monotonic() + timeout
        listening_since = None
        while True:
            if self._daemon_pid is None and self.proc is not None and self.proc.poll() is not None:
                if not (self._daemonized() and self.proc.returncode == 0):
                    self.returncode = self.proc.returncode
                    raise HarnessError(f"pooler {self.name} exited with code {self.proc.returncode} while starting\n"
                                       f"{self.describe()}")
                self._adopt_daemon()  # the daemon writes its pidfile a moment after the parent exits
            # a daemon binds before it forks: only the daemon's own pid (from its pidfile) counts as ready
            if (self._daemon_pid is not None or not self._daemonized()) and self.listening():
                listening_since = listening_since or time.monotonic()
                if "process up" in self.log() or time.monotonic() - listening_since > 1.0:
                    return
            else:
                listening_since = None
            if time.monotonic() > deadline:
                raise HarnessError(f"pooler {self.name} not ready after {timeout:g}s\n{self.describe()}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            raise HarnessError(f"pooler {self.name} was never started")
        os.kill(pid, sig)

    def reload(self) -> None:
        self.signal(SIGHUP)

    def wait(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to exit; its exit code (None for a daemon, which is not our child)."""
        if self._daemon_pid is not None:
            wait_until(lambda: not _pid_alive(self._daemon_pid), timeout, message=f"pooler {self.name} to exit")
            return None
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def stop(self, sig: int = SIGTERM, timeout: float = 10.0) -> int | None:
        """Stop it with `sig`; a second `sig` after `timeout`, then SIGKILL. Returns the exit code."""
        self.close_connections()
        if not self.is_running():
            if self.proc is not None and self._daemon_pid is None:
                self.returncode = self.proc.wait()
            return self.returncode
        for step, (s, t) in enumerate(((sig, timeout), (sig, 3.0), (SIGKILL, 10.0))):
            if step:
                self.forced = f"a second {Signals(s).name}" if step == 1 else "SIGKILL"
            with contextlib.suppress(ProcessLookupError):
                self.signal(s)
            try:
                return self.wait(t)
            except (subprocess.TimeoutExpired, AssertionError):
                continue
        raise HarnessError(f"pooler {self.name} (pid {self.pid}) survived SIGKILL")

    # -- logs ---------------------------------------------------------------------------------------
    def log(self) -> str:
        """Text of the logfile (or of stderr when no logfile is configured)."""
        return _read(self.log_path)

    def stderr(self) -> str:
        return _read(self.stderr_path)

    def log_mark(self) -> int:
        """Current end of the log, to pass as `since=` to wait_for_log()."""
        return len(self.log())

    def wait_for_log(self, regex: str, timeout: float = 10.0, since: int = 0) -> re.Match:
        """Wait until `regex` matches the log (from offset `since`); returns the match."""
        pattern = re.compile(regex, re.MULTILINE)
        return wait_until(lambda: pattern.search(self.log()[since:]), timeout,
                          message=lambda: f"/{regex}/ in the log of pooler {self.name}:\n{_tail(self.log()[since:], 5000)}")

    def describe(self) -> str:
        parts = [f"command: {' '.join(self.cmd)}", f"--- {self.ini_path} ---\n{_read(self.ini_path)}"]
        if self.log_path != self.stderr_path:
            parts.append(f"--- {self.log_path} ---\n{_tail(self.log())}")
        stderr = self.stderr()
        if self.log_path == self.stderr_path or stderr.strip() != self.log().strip():
            parts.append(f"--- stderr ---\n{_tail(stderr)}")
        return "\n".join(parts)

    # -- clients ------------------------------------------------------------------------------------
    def _password(self, user: str, password: Any) -> str | None:
        if password is not _DEFAULT:
            return password
        return self.userlist.get(user, PASSWORDS.get(user))

    def dsn(self, db: str = "testdb", user: str = MD5_ROLE, password: Any = _DEFAULT, *, unix: bool = False,
            **extra: Any) -> str:
        """libpq conninfo through the pooler (TCP, or its unix socket with unix=True)."""
        extra.setdefault("connect_timeout", 10)
        return connstr(host=self.unix_dir if unix else self.host, port=self.port, dbname=db, user=user,
                       password=self._password(user, password), **extra)

    def url(self, db: str = "testdb", user: str = MD5_ROLE, password: Any = _DEFAULT) -> str:
        """postgresql:// URL over TCP (for asyncpg and friends)."""
        from urllib.parse import quote

        pw = self._password(user, password)
        auth = quote(user, safe="") + (":" + quote(pw, safe="") if pw else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(db, safe='')}"

    def connect(self, db: str = "testdb", user: str = MD5_ROLE, password: Any = _DEFAULT, *, unix: bool = False,
                **kw: Any):
        """A psycopg (3) connection through the pooler; closed at teardown if still open."""
        import psycopg

        conn = psycopg.connect(self.dsn(db, user, password, unix=unix), **kw)
        self._conns.append(conn)
        return conn

    def connect2(self, db: str = "testdb", user: str = MD5_ROLE, password: Any = _DEFAULT, *, unix: bool = False,
                 **kw: Any):
        """A psycopg2 connection through the pooler; closed at teardown if still open."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(db, user, password, unix=unix), **kw)
        self._conns.append(conn)
        return conn

    async def aconnect(self, db: str = "testdb", user: str = MD5_ROLE, password: Any = _DEFAULT, **kw: Any):
        """An asyncpg connection through the pooler (TCP). The caller closes it."""
        import asyncpg

        kw.setdefault("timeout", 10)
        return await asyncpg.connect(host=self.host, port=self.port, user=user, database=db,
                                     password=self._password(user, password), **kw)

    def close_connections(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._conns.clear()

    def admin(self, sql: str, user: str = ADMIN_USER, password: Any = _DEFAULT, *, unix: bool = True,
              db: str = "pgbouncer") -> list[tuple]:
        """Run one console command (simple query protocol, psycopg2, autocommit); returns its rows.

        Default: user pgbouncer over the unix socket, which the console admits for the pooler's own OS user."""
        return self.admin_result(sql, user, password, unix=unix, db=db)[1]

    def admin_dicts(self, sql: str, user: str = ADMIN_USER, password: Any = _DEFAULT, *, unix: bool = True,
                    db: str = "pgbouncer") -> list[dict[str, Any]]:
        """Like admin(), one dict per row keyed by column name."""
        columns, rows = self.admin_result(sql, user, password, unix=unix, db=db)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def admin_result(self, sql: str, user: str = ADMIN_USER, password: Any = _DEFAULT, *, unix: bool = True,
                     db: str = "pgbouncer") -> tuple[list[str], list[tuple]]:
        """(column names, rows) of one console command."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(db, user, password, unix=unix))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
                if cur.description is None:
                    return [], []
                return [d.name for d in cur.description], cur.fetchall()
        finally:
            conn.close()

    def psql(self, *args: str, db: str = "testdb", user: str = MD5_ROLE, password: Any = _DEFAULT,
             unix: bool = False, input: str | None = None, timeout: float = 60.0,
             check: bool = False) -> subprocess.CompletedProcess:
        """Run the real psql against the pooler: `psql -X -h .. -p .. -U user -d db <args>`."""
        pw = self._password(user, password)
        env = clean_env({"PGPASSWORD": pw} if pw else {})
        env["PGCONNECT_TIMEOUT"] = "10"
        cmd = [str(find_pg_bindir() / "psql"), "-X", "-h", (self.unix_dir or "") if unix else self.host,
               "-p", str(self.port), "-U", user, "-d", db, *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"psql {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr}")
        return proc


class PoolerFactory:
    """Starts poolers for one test (fixture `pooler_factory`); stop_all() runs at teardown."""

    def __init__(self, pg: PgCluster | None, tmp_path: Path, *, python: str = sys.executable):
        self.pg = pg
        self.tmp_path = Path(tmp_path)
        self.python = python
        self.poolers: list[Pooler] = []
        self._socket_dirs: list[Path] = []
        self.pg_log_mark = len(pg.log()) if pg else 0

    def default_databases(self) -> dict[str, str]:
        if self.pg is None:
            return {}
        return {db: self.pg.server_connstr(db) for db in ("postgres", *TEST_DATABASES)}

    def start(self, ini_settings: Mapping[str, Any] | None = None, databases: Mapping[str, str] | str | None = None,
              users: Mapping[str, str] | str | None = None, userlist: Mapping[str, str] | str | None = None,
              hba: str | None = None, binary: str = "py", extra_args: Iterable[str] = (), wait: bool = True,
              timeout: float = 20.0, peers: Mapping[str, str] | str | None = None) -> Pooler:
        """Write an ini and start a pooler; with wait=True return once it is up (else right after exec).

        ini_settings: [pgbouncer] keys over the defaults (None as a value removes a default key).
        databases / users / peers: {name: "key=value ..."} or the raw section body; databases defaults to
          postgres, testdb, otherdb and benchdb of the `pg` cluster over TCP.
        userlist: {user: password-or-secret} or raw auth_file text; None = DEFAULT_USERLIST.
        hba: auth_hba_file text; sets auth_type = hba unless ini_settings says otherwise.
        binary: "py" (python -m pgbouncer_py), "c" (Debian 12's /usr/sbin/pgbouncer, 1.18) or "c124" (the real
          PgBouncer 1.24.1 through ../shared/tools/pgbouncer-1.24)."""
        if binary not in ("py", "c", "c124"):
            raise HarnessError(f"binary must be 'py', 'c' or 'c124', not {binary!r}")
        index = len(self.poolers)
        name = f"{binary}{index}"
        workdir = self.tmp_path / f"pooler-{name}"
        workdir.mkdir(parents=True, exist_ok=True)
        sockdir = short_tempdir("pgb")
        self._socket_dirs.append(sockdir)
        extra_args = list(extra_args)

        settings: dict[str, Any] = {
            "listen_addr": "127.0.0.1",
            "listen_port": free_port(),
            "unix_socket_dir": str(sockdir),
            "logfile": str(workdir / "pgbouncer.log"),
            "auth_type": "md5",
            "auth_file": str(workdir / "userlist.txt"),
            "admin_users": ADMIN_USER,
            "stats_users": STATS_USER,
        }
        if any(a in ("-d", "--daemon") for a in extra_args):
            settings["pidfile"] = str(workdir / "pgbouncer.pid")
        if hba is not None:
            (workdir / "hba.conf").write_text(hba)
            settings["auth_hba_file"] = str(workdir / "hba.conf")
            settings["auth_type"] = "hba"
        auto_port = "listen_port" not in (ini_settings or {})
        for key, value in (ini_settings or {}).items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        settings = {k: _ini_value(v) for k, v in settings.items()}

        if userlist is None:
            userlist = DEFAULT_USERLIST
        (workdir / "userlist.txt").write_text(userlist if isinstance(userlist, str) else format_userlist(userlist))

        sections = {"databases": self.default_databases() if databases is None else databases,
                    "users": users, "peers": peers}
        ini_path = workdir / "pgbouncer.ini"
        if binary == "py":
            cmd = [self.python, "-m", "pgbouncer_py", *extra_args, str(ini_path)]
        elif binary == "c124":
            check_pgbouncer_124()
            cmd = [PGB124, *extra_args, str(ini_path)]
        else:
            check_c_pgbouncer()
            cmd = [C_PGBOUNCER, *extra_args, str(ini_path)]
        pooler = Pooler(name=name, binary=binary, cmd=cmd, workdir=workdir, ini_path=ini_path, settings=settings,
                        userlist=None if isinstance(userlist, str) else userlist)
        self.poolers.append(pooler)

        for attempt in range(3):
            ini_path.write_text(self._render_ini(sections, settings))
            pooler._launch()
            if not wait:
                return pooler
            try:
                pooler.wait_ready(timeout)
                return pooler
            except HarnessError:
                log = pooler.log() + pooler.stderr()
                if auto_port and attempt < 2 and not pooler.is_running() and "in use" in log:
                    settings["listen_port"] = str(free_port())
                    continue
                with contextlib.suppress(HarnessError):
                    pooler.stop(SIGKILL, timeout=5)
                raise
        raise AssertionError("unreachable")

    __call__ = start

    @staticmethod
    def _render_ini(sections: Mapping[str, Mapping[str, str] | str | None], settings: Mapping[str, str]) -> str:
        out = ["; written by tests/pgutil.py\n"]
        for section, body in sections.items():
            if body is None:
                continue
            out.append(f"\n[{section}]\n")
            if isinstance(body, str):
                out.append(body if body.endswith("\n") or not body else body + "\n")
            else:
                out.extend(f"{k} = {v}\n" for k, v in body.items())
        out.append("\n[pgbouncer]\n")
        out.extend(f"{k} = {v}\n" for k, v in settings.items())
        return "".join(out)

    def failure_sections(self) -> list[tuple[str, str]]:
        """(title, text) report sections with every pooler's log and this test's PostgreSQL log."""
        sections = [(f"pooler {p.name} ({p.binary}) log: {p.log_path}", _tail(p.describe())) for p in self.poolers]
        if self.pg is not None:
            sections.append(("postgres log during this test", _tail(self.pg.log(self.pg_log_mark))))
        return sections

    def kill_all(self) -> None:
        """SIGKILL every running pooler at once (from any thread: the per-test time limit uses it)."""
        for pooler in self.poolers:
            with contextlib.suppress(Exception):
                if pooler.is_running():
                    pooler.signal(SIGKILL)

    def stop_all(self) -> list[str]:
        """Stop every pooler (SIGTERM, again, then SIGKILL); returns complaints about ones that had to be killed."""
        problems = []
        for pooler in self.poolers:
            try:
                pooler.stop(timeout=5.0)
                if pooler.forced:
                    problems.append(f"pooler {pooler.name} did not exit on SIGTERM; needed {pooler.forced}")
            except Exception as exc:  # keep stopping the others
                problems.append(f"pooler {pooler.name}: {exc}")
        for d in self._socket_dirs:
            shutil.rmtree(d, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------------------------------
# Fake peers
# ---------------------------------------------------------------------------------------------------
class SilentServer:
    """A TCP listener that accepts and never says a word (a hung PostgreSQL, LDAP directory, ...);
    .conns are the connections it accepted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()
