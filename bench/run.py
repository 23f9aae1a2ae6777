#!/usr/bin/env python3
"""Benchmark harness: direct PostgreSQL vs Debian's PgBouncer vs pgbouncer-py, interleaved run by run.

Starts its own PostgreSQL cluster, runs the pgbench matrix, idle-client memory, many-active-client tests and
connection storms (bench/storm.py), prints a table of ratios pgbouncer-py / PgBouncer and writes JSON lines. See bench/README.md.
"""

import argparse
import base64
import fnmatch
import glob
import hashlib
import hmac
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import storm

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BENCH_USER = "pgbtest"
DB_USER, DB_PASSWORD, DB_NAME = "bench", "benchpw", "bench"
NOFILE_WANTED = 65536
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
POOLER_LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "py": "pgbouncer-py"}


# ---------------------------------------------------------------- what is run


@dataclass(frozen=True)
class Test:
    """One pgbench invocation shape; run against each pooler in each of its pool modes."""

    name: str
    clients: int
    select_only: bool = True
    protocol: str = "simple"
    connect: bool = False  # -C: a new connection per transaction
    modes: tuple = ("session", "transaction")
    direct: bool = True  # also run straight against PostgreSQL
    procs: int = 1  # pooler processes sharing the port (so_reuseport)
    group: str = "pgbench"


def build_tests(args) -> list[Test]:
    tests = []
    for clients in (10, 100):
        for proto in ("simple", "extended", "prepared"):
            tests.append(Test(f"S-{proto}-c{clients}", clients, protocol=proto))
    tests.append(Test("S-C-c10", 10, connect=True))
    tests.append(Test("tpcb-c10", 10, select_only=False))
    for clients in args.active_clients:
        tests.append(Test(f"active-S-c{clients}", clients, modes=("transaction",), direct=False, group="active"))
    if args.reuseport > 1:
        tests.append(Test(f"S-simple-c100-reuseport{args.reuseport}", 100, modes=("transaction",), direct=False,
                          procs=args.reuseport, group="reuseport"))
    return [t for t in tests if selected(args.only, t.name, t.group)]


def selected(only: list[str], name: str, group: str) -> bool:
    return not only or any(fnmatch.fnmatch(name, pat) or pat in (name, group) for pat in only)


# Targets of issues 11 (transaction path) and 20 (-C): (predicate on test/mode) -> (max cpu ratio, min tps ratio)
def target_for(test: Test, mode: str):
    if test.group != "pgbench":
        return None
    if test.connect:
        return (1.4, 0.9)
    if mode == "transaction" and test.clients in (10, 100):
        return (1.3, 0.9)
    return None


IDLE_TARGET_BYTES = 2 * 1024  # per idle logged-in client at 10,000 clients, pgbouncer-py (issue 20)


# ---------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_ticks(pid: int) -> int:
    """utime+stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def proc_cpu_ns(pid: int) -> int:
    """CPU time of a process's live threads in ns (/proc/PID/task/*/schedstat): finer than proc_cpu_ticks."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def proc_rss_parts(pid: int) -> dict:
    """RssAnon/RssFile/RssShmem from /proc/PID/status, in bytes."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, value = line.split(":")
                parts[key.lower().replace("rss", "rss_") + "_bytes"] = int(value.split()[0]) * 1024
    return parts


def raise_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Lift the soft fd limit to the hard one (as root, first try to lift the hard one to `wanted`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass  # no CAP_SYS_RESOURCE (a container): keep the hard limit we have
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def find_pg_bindir(given: str | None) -> Path:
    if given:
        return Path(given)
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.path.exists(os.path.join(cand, "initdb")):
            return Path(cand)
    pg_config = shutil.which("pg_config")
    if pg_config:
        return Path(subprocess.check_output([pg_config, "--bindir"], text=True).strip())
    raise SystemExit("cannot find PostgreSQL binaries (initdb); pass --pg-bindir")


def userlist_secret(kind: str) -> str:
    """The password of DB_USER as auth_file holds it: 'plain' text, an 'md5' secret or a 'scram' secret."""
    if kind == "md5":
        return "md5" + hashlib.md5((DB_PASSWORD + DB_USER).encode()).hexdigest()
    if kind == "scram":
        salt, iterations = os.urandom(16), 4096
        salted = hashlib.pbkdf2_hmac("sha256", DB_PASSWORD.encode(), salt, iterations)
        client_key, server_key = (hmac.digest(salted, k, "sha256") for k in (b"Client Key", b"Server Key"))
        b64 = (base64.b64encode(x).decode() for x in (salt, hashlib.sha256(client_key).digest(), server_key))
        return "SCRAM-SHA-256${}:{}${}:{}".format(iterations, *b64)
    return DB_PASSWORD


def client_env() -> dict:
    env = dict(os.environ)
    env.update(PGPASSWORD=DB_PASSWORD, PGCONNECT_TIMEOUT="5", PGAPPNAME="bench")
    return env


# ---------------------------------------------------------------- PostgreSQL


class Cluster:
    """A throwaway PostgreSQL cluster with pgbench tables, on a free port."""

    def __init__(self, bindir: Path, base: Path, scale: int, max_connections: int):
        self.bindir, self.base, self.scale = bindir, base, scale
        self.datadir, self.port = base / "pgdata", free_port()
        self.max_connections = max_connections
        self.started = False

    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    def psql(self, sql: str, db: str = DB_NAME, port: int | None = None, host: str = "127.0.0.1") -> str:
        out = subprocess.run([self.bin("psql"), "-X", "-At", "-h", host, "-p", str(port or self.port), "-U", DB_USER,
                              "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql],
                             env=client_env(), capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def start(self) -> None:
        log(f"initdb + start PostgreSQL on port {self.port} (scale {self.scale})")
        subprocess.run([self.bin("initdb"), "-D", str(self.datadir), "-U", DB_USER, "-A", "trust", "--no-sync",
                        "-E", "UTF8", "--locale=C"], check=True, capture_output=True)
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(f"""
# bench/run.py: a throwaway cluster; durability off so the disk does not dominate
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.base}'
max_connections = {self.max_connections}
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
""")
        subprocess.run([self.bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.base / "postgres.log"), "-w",
                        "-t", "60", "start"], check=True, capture_output=True)
        self.started = True
        self.psql(f"ALTER ROLE {DB_USER} PASSWORD '{DB_PASSWORD}'", db="postgres")
        self.psql(f"CREATE DATABASE {DB_NAME}", db="postgres")
        subprocess.run([self.bin("pgbench"), "-i", "-q", "-s", str(self.scale), "-h", "127.0.0.1", "-p",
                        str(self.port), "-U", DB_USER, DB_NAME], check=True, capture_output=True, env=client_env())

    def reset_tpcb(self) -> None:
        """What pgbench does before a TPC-B-like run when not given -n, done directly on PostgreSQL."""
        self.psql("VACUUM pgbench_branches")
        self.psql("VACUUM pgbench_tellers")
        self.psql("TRUNCATE pgbench_history")

    def stop(self) -> None:
        if self.started:
            subprocess.run([self.bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
                           capture_output=True)
            self.started = False


# ---------------------------------------------------------------- poolers


def render_ini(*, listen_port: int, pg_port: int, mode: str, pool_size: int, rundir: Path, userlist: Path,
               auth_type: str, reuseport: bool, peer_id: int = 0, peers: dict | None = None,
               extra: list[str] = ()) -> str:
    """The one ini both poolers read; only listen_port, pidfile, logfile, unix_socket_dir and peers differ."""
    lines = [
        "[databases]",
        f"{DB_NAME} = host=127.0.0.1 port={pg_port} dbname={DB_NAME}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {listen_port}",
        f"unix_socket_dir = {rundir}",
        f"pidfile = {rundir / 'pooler.pid'}",
        f"logfile = {rundir / 'pooler.log'}",
        f"auth_type = {auth_type}",
        f"auth_file = {userlist}",
        f"admin_users = {DB_USER}",
        f"pool_mode = {mode}",
        f"default_pool_size = {pool_size}",
        "max_client_conn = 12000",
        "ignore_startup_parameters = extra_float_digits",
    ]
    if reuseport:
        lines.append("so_reuseport = 1")
    if peer_id:
        lines.append(f"peer_id = {peer_id}")
    lines.extend(extra)
    if peers:
        lines += ["", "[peers]"] + [f"{pid} = host={host} port={listen_port}" for pid, host in peers.items()]
    return "\n".join(lines) + "\n"


def pooler_command(kind: str, ini: Path, args) -> list[str]:
    cmd = [args.pgbouncer, str(ini)] if kind == "pgbouncer" else [args.py_python, "-m", "pgbouncer_py", str(ini)]
    if args.callgrind:
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={ini.parent / 'callgrind.out'}", *cmd]
    return cmd


def callgrind_total(pid: int, rundir: Path, zero: bool = False) -> int:
    """Instructions the pooler under callgrind executed since its counters were last zeroed (then zero them)."""
    before = set(rundir.glob("callgrind.out.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, timeout=120, check=True)
    deadline = time.monotonic() + 60
    while True:
        new = set(rundir.glob("callgrind.out.*")) - before
        if new:
            dump = max(new, key=lambda f: f.stat().st_mtime)
            totals = [line for line in dump.read_text(errors="replace").splitlines()
                      if line.startswith(("totals:", "summary:"))]
            if totals:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no dump in {rundir}")
        time.sleep(0.2)
    dump.unlink()
    if zero:
        subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, timeout=120, check=True)
    return int(totals[0].split()[1])


def snapshot_pgbouncer(binary: str, base: Path) -> tuple[str, str]:
    """Copy the PgBouncer binary into the run directory, so that a package swapped mid-run changes nothing.

    Refuses anything that is not a native executable (e.g. pgbouncer-py's `pgbouncer` launcher installed
    over Debian's). Returns (path of the copy, version line)."""
    path = shutil.which(binary) or binary
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SystemExit(f"cannot read PgBouncer binary {path}: {exc}") from exc
    if magic != b"\x7fELF":
        raise SystemExit(f"{path} is not a native executable (pgbouncer-py's launcher installed over PgBouncer?); "
                         "pass --pgbouncer with the real binary")
    copy = base / "bin" / "pgbouncer"
    copy.parent.mkdir()
    shutil.copy2(path, copy)
    version = subprocess.run([str(copy), "-V"], capture_output=True, text=True, timeout=10).stdout
    return str(copy), (version.splitlines() or ["?"])[0]


def pgbouncer_supports_peers(binary: str) -> bool:
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stdout
        major, minor = (int(x) for x in out.split()[1].split(".")[:2])
        return (major, minor) >= (1, 19)
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return False


class PoolerGroup:
    """One pooler kind in one pool mode: one process, or several sharing a port with so_reuseport."""

    def __init__(self, kind: str, mode: str, procs: int, pool_size: int, base: Path, cluster: Cluster, args,
                 tag: str = "", auth_type: str | None = None, userlist: str | None = None):
        self.kind, self.mode, self.procs = kind, mode, procs
        self.cluster, self.args = cluster, args
        # bench/metrics_cost.py builds its own args without userlist
        self.auth_type, self.userlist = auth_type or args.auth_type, userlist or getattr(args, "userlist", "plain")
        self.port = free_port()
        self.dir = base / f"{kind}-{mode}-{procs}{tag}"
        self.pool_size = pool_size
        self.popen: list[subprocess.Popen] = []
        self.rundirs: list[Path] = []

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        userlist = self.dir / "userlist.txt"
        userlist.write_text(f'"{DB_USER}" "{userlist_secret(self.userlist)}"\n')
        use_peers = self.procs > 1 and (self.kind == "py" or self.args.pgbouncer_peers)
        peers = {i + 1: str(self.dir / f"p{i + 1}") for i in range(self.procs)} if use_peers else None
        env = dict(os.environ, PYTHONPATH=str(self.args.py_src), PYTHONDONTWRITEBYTECODE="1")
        for i in range(self.procs):
            rundir = self.dir / f"p{i + 1}"
            rundir.mkdir(exist_ok=True)
            ini = rundir / "pooler.ini"
            ini.write_text(render_ini(listen_port=self.port, pg_port=self.cluster.port, mode=self.mode,
                                      pool_size=self.pool_size, rundir=rundir, userlist=userlist,
                                      auth_type=self.auth_type, reuseport=self.procs > 1,
                                      peer_id=(i + 1) if peers else 0, peers=peers, extra=self.args.ini))
            with open(rundir / "stderr.log", "ab") as err:
                self.popen.append(subprocess.Popen(pooler_command(self.kind, ini, self.args), cwd=rundir, env=env,
                                                   stdin=subprocess.DEVNULL, stdout=err, stderr=err))
            self.rundirs.append(rundir)
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        if self.args.callgrind:
            timeout = 300.0          # Python's start-up alone takes ~30 s under valgrind
        deadline = time.monotonic() + timeout
        pending = list(range(self.procs))
        last = ""
        while pending:
            self.check_alive()
            i = pending[0]
            host = "127.0.0.1" if self.procs == 1 else str(self.rundirs[i])
            try:
                self.cluster.psql("SELECT 1", port=self.port, host=host)
                pending.pop(0)
                continue
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not accept logins within {timeout:.0f}s: {last}")
            time.sleep(0.1)

    def warm_up(self) -> None:
        """Fill the pool with server connections before anything is measured (untimed pgbench pass)."""
        clients = min(100, self.pool_size * self.procs)
        cmd = [self.cluster.bin("pgbench"), "-n", "-S", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER,
               "-c", str(clients), "-j", str(max(1, min(self.args.jobs, clients))), "-t", "5", DB_NAME]
        env = client_env()
        if self.args.callgrind:  # logins under valgrind take seconds when the pooler runs PBKDF2
            env["PGCONNECT_TIMEOUT"] = "120"
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if out.returncode:
            raise RuntimeError(f"warm-up pgbench on {self.kind} failed: {out.stderr.strip()[-300:]}")

    def check_alive(self) -> None:
        for p, rundir in zip(self.popen, self.rundirs, strict=True):
            if p.poll() is not None:
                why = tail(rundir / "stderr.log") or tail(rundir / "pooler.log")
                raise RuntimeError(f"{self.kind} process exited with {p.returncode}: {why}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.popen]

    def cpu_ticks(self) -> int:
        return sum(proc_cpu_ticks(pid) for pid in self.pids)

    def cpu_ns(self) -> int:
        return sum(proc_cpu_ns(pid) for pid in self.pids)

    def rss(self) -> int:
        return sum(proc_rss(pid) for pid in self.pids)

    def rss_parts(self) -> dict:
        total: dict = {}
        for pid in self.pids:
            for k, v in proc_rss_parts(pid).items():
                total[k] = total.get(k, 0) + v
        return total

    def stop(self) -> None:
        for p in self.popen:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.popen:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.popen.clear()
        self.rundirs.clear()


# ---------------------------------------------------------------- pgbench


def parse_pgbench(out: str) -> dict:
    res = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("tps = "):
            res["tps"] = float(line.split()[2])
        elif line.startswith("latency average = "):
            res["latency_ms"] = float(line.split()[3])
        elif line.startswith("number of transactions actually processed:"):
            res["transactions"] = int(line.split(":")[1].split("/")[0].strip())
        elif line.startswith("number of failed transactions:"):
            res["failed"] = int(line.split(":")[1].split()[0])
        elif line.startswith("average connection time = "):
            res["connection_ms"] = float(line.split()[4])
    return res


def pgbench_command(cluster: Cluster, port: int, test: Test, args, transactions: int = 0) -> list[str]:
    jobs = max(1, min(args.jobs, test.clients))
    transactions = transactions or args.transactions
    cmd = [cluster.bin("pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER,
           "-c", str(test.clients), "-j", str(jobs), "-M", test.protocol]
    if test.select_only:
        cmd.append("-S")
    if test.connect:
        cmd.append("-C")
    if transactions:
        cmd += ["-t", str(max(2, transactions // test.clients))]
    else:
        cmd += ["-T", str(args.duration)]
    return cmd + [DB_NAME]


def run_counted(cluster: Cluster, target, test: Test, args) -> dict:
    """--callgrind: the pooler's instructions per transaction, from two pgbench runs of different lengths (their
    difference cancels what does not grow with transactions: pgbench's logins, the janitor's ticks)."""
    pid, rundir = target.pids[0], target.rundirs[0]
    counts = []
    for share in (4, 1):
        if not test.select_only:
            cluster.reset_tpcb()
        callgrind_total(pid, rundir, zero=True)
        cmd = pgbench_command(cluster, target.port, test, args, max(2 * test.clients, args.transactions // share))
        out = subprocess.run(cmd, capture_output=True, text=True, env=client_env(), timeout=3600)
        res = parse_pgbench(out.stdout)
        if out.returncode or not res.get("transactions"):
            return {"ok": False, "error": f"pgbench exit {out.returncode}: {out.stderr.strip()[-300:]}"}
        counts.append((res["transactions"], callgrind_total(pid, rundir)))
    (t1, i1), (t2, i2) = counts
    return {"ok": True, "tps": None, "transactions": t2, "instructions": i2,
            "instr_per_txn": round((i2 - i1) / (t2 - t1)) if t2 > t1 else None}


def run_pgbench(cluster: Cluster, target, test: Test, args) -> dict:
    """One pgbench run against `target` (a PoolerGroup, or None for PostgreSQL itself)."""
    if args.callgrind and target is not None:
        return run_counted(cluster, target, test, args)
    if not test.select_only:
        cluster.reset_tpcb()
    if target is not None:
        target.check_alive()
    port = target.port if target else cluster.port
    cmd = pgbench_command(cluster, port, test, args)
    timeout = (args.duration if not args.transactions else 10) + 120 + test.clients / 20
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks0 = target.cpu_ticks() if target else 0
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=client_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"pgbench timed out after {timeout:.0f}s"}
    wall = time.monotonic() - t0
    ticks1 = target.cpu_ticks() if target else 0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = parse_pgbench(out.stdout)
    res["wall_s"] = round(wall, 3)
    res["pgbench_cpu_us"] = round((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * 1e6)
    if out.returncode or "tps" not in res or not res.get("transactions"):
        lines = out.stderr.strip().splitlines()
        if not lines and not out.returncode:
            lines = [f"no transaction completed in {wall:.0f} s (all {test.clients} clients still logging in?)"]
        err = " | ".join((lines or ["no output"])[-3:])
        return {"ok": False, "error": f"pgbench exit {out.returncode}: {err}", **res}
    res["ok"] = True
    if target is not None:
        res["cpu_us"] = round((ticks1 - ticks0) * 1e6 / CLK_TCK)
        res["cpu_us_per_txn"] = round(res["cpu_us"] / res["transactions"], 2)
    return res


# ---------------------------------------------------------------- idle clients


class IdleClients:
    """The separate process that holds idle logged-in connections (bench/idle_clients.py)."""

    def __init__(self, port: int, args):
        self.proc = subprocess.Popen(
            [args.client_python, str(BENCH_DIR / "idle_clients.py"), "--port", str(port), "--user", DB_USER,
             "--password", DB_PASSWORD, "--dbname", DB_NAME],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        self.proc.stdout.readline()

    def open(self, total: int) -> tuple[bool, str]:
        self.proc.stdin.write(f"open {total}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        return line.startswith("ok "), line

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def settle_rss(group: PoolerGroup, seconds: float = 1.0) -> int:
    """RSS once it stopped moving (the pooler may still be finishing logins)."""
    deadline = time.monotonic() + seconds * 5
    prev = group.rss()
    while time.monotonic() < deadline:
        time.sleep(seconds / 4)
        cur = group.rss()
        if cur == prev:
            return cur
        prev = cur
    return prev


def run_idle(kind: str, run: int, cluster: Cluster, base: Path, args, emit) -> None:
    group = PoolerGroup(kind, "transaction", 1, 20, base, cluster, args, tag=f"-idle{run}")
    try:
        group.start()
    except RuntimeError as exc:
        emit({"kind": "idle", "pooler": kind, "run": run, "clients": 0, "ok": False, "error": str(exc)})
        group.stop()
        return
    clients = IdleClients(group.port, args)
    try:
        base_rss = settle_rss(group)
        emit({"kind": "idle", "pooler": kind, "run": run, "clients": 0, "ok": True, "rss_bytes": base_rss,
              **group.rss_parts()})
        for n in args.idle_clients:
            ok, line = clients.open(n)
            rec = {"kind": "idle", "pooler": kind, "run": run, "clients": n, "ok": ok}
            if not ok:
                emit({**rec, "error": line})
                break
            rss = settle_rss(group)
            rec.update(rss_bytes=rss, bytes_per_client=round((rss - base_rss) / n), login_s=float(line.split()[2]),
                       **group.rss_parts())
            emit(rec)
    finally:
        clients.close()
        group.stop()


# ---------------------------------------------------------------- the session


@dataclass
class Results:
    records: list = field(default_factory=list)
    out: object = None

    def emit(self, rec: dict) -> None:
        self.records.append(rec)
        if self.out:
            self.out.write(json.dumps(rec) + "\n")
            self.out.flush()


def run_matrix(tests: list[Test], poolers: list[str], cluster: Cluster, base: Path, args, res: Results) -> None:
    groups: dict[tuple, PoolerGroup] = {}
    failed: dict[tuple, str] = {}

    def group_for(kind, mode, procs):
        key = (kind, mode, procs)
        if key not in groups:
            size = args.pool_size if mode == "transaction" else max(args.pool_size, args.session_pool_size)
            g = PoolerGroup(kind, mode, procs, size, base, cluster, args)
            groups[key] = g
            g.start()
            g.warm_up()
        return groups[key]

    try:
        for run in range(1, args.runs + 1):
            log(f"run {run}/{args.runs}")
            for ti, test in enumerate(tests):
                slots = [(p, m) for m in test.modes for p in poolers if p != "direct"]
                if test.direct and "direct" in poolers:
                    slots.append(("direct", "-"))
                shift = (run + ti) % len(slots) if slots else 0
                for kind, mode in slots[shift:] + slots[:shift]:
                    key = (test.name, kind, mode)
                    rec = {"kind": "run", "test": test.name, "group": test.group, "pooler": kind, "mode": mode,
                           "run": run, "clients": test.clients, "protocol": test.protocol, "procs": test.procs}
                    if key in failed:
                        continue
                    try:
                        target = None if kind == "direct" else group_for(kind, mode, test.procs)
                        r = run_pgbench(cluster, target, test, args)
                    except (RuntimeError, OSError) as exc:
                        r = {"ok": False, "error": str(exc)}
                        g = groups.pop((kind, mode, test.procs), None)
                        if g:
                            g.stop()
                    rec.update(r)
                    if not r["ok"]:
                        failed[key] = r["error"]
                        log(f"  {test.name} {kind} {mode}: FAILED {r['error'][:200]}")
                    else:
                        if args.callgrind:
                            log(f"  {test.name:28} {kind:9} {mode:11} {r['instr_per_txn']} instructions/txn")
                        else:
                            cpu = f" {r['cpu_us_per_txn']} us/txn" if "cpu_us_per_txn" in r else ""
                            log(f"  {test.name:28} {kind:9} {mode:11} tps {r['tps']:10.1f}{cpu}")
                    res.emit(rec)
    finally:
        for g in groups.values():
            g.stop()


def run_idle_all(poolers: list[str], cluster: Cluster, base: Path, args, res: Results) -> None:
    kinds = [p for p in poolers if p != "direct"]
    for run in range(1, args.runs + 1):
        for kind in kinds[run % len(kinds):] + kinds[:run % len(kinds)]:
            log(f"idle clients {args.idle_clients} on {kind}, run {run}")
            run_idle(kind, run, cluster, base, args, res.emit)


# ---------------------------------------------------------------- connection storms


def run_storms(storms: list, poolers: list[str], cluster: Cluster, base: Path, args, res: Results) -> None:
    """Each storm against each pooler, interleaved run by run like run_matrix; one pooler instance per pooler and
    auth kind (transaction mode), started once and warmed up."""
    kinds = [p for p in poolers if p != "direct"]
    groups: dict[tuple, PoolerGroup] = {}
    failed: set[tuple] = set()

    def group_for(kind, auth):
        if (kind, auth) not in groups:
            auth_type, userlist = storm.AUTH[auth]
            g = groups[(kind, auth)] = PoolerGroup(kind, "transaction", 1, args.pool_size, base, cluster, args,
                                                   tag=f"-{auth}", auth_type=auth_type, userlist=userlist)
            g.start()
            g.warm_up()
        return groups[(kind, auth)]

    try:
        for run in range(1, args.runs + 1):
            log(f"storms, run {run}/{args.runs}")
            for si, st in enumerate(storms):
                shift = (run + si) % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    if (st.name, kind) in failed:
                        continue
                    rec = {"kind": "storm", "storm": st.name, "pooler": kind, "run": run, "cycles": st.cycles,
                           "concurrency": st.concurrency, "auth": st.auth}
                    try:
                        g = group_for(kind, st.auth)
                        g.check_alive()
                        r = run_counted_storm(g, st) if args.callgrind else run_timed_storm(g, st)
                    except (RuntimeError, OSError, EOFError, storm.LoginError) as exc:
                        r = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                        g = groups.pop((kind, st.auth), None)
                        if g:
                            g.stop()
                    rec.update(r)
                    if not r["ok"]:
                        failed.add((st.name, kind))
                        log(f"  {st.name} {kind}: FAILED {r.get('error') or r.get('first_error')}")
                    elif args.callgrind:
                        log(f"  {st.name:20} {kind:9} {r['instr_per_cycle']} instructions/cycle")
                    else:
                        log(f"  {st.name:20} {kind:9} wall {r['wall_s']:7.3f} s  max connect "
                            f"{r['connect_max_ms']:7.1f} ms  {r['cpu_us_per_cycle']:6.0f} us/cycle (client "
                            f"{r['client_cpu_us_per_cycle']:.0f})  overflows {r['ListenOverflows']}  errors {r['errors']}")
                    res.emit(rec)
    finally:
        for g in groups.values():
            g.stop()


def run_timed_storm(target: PoolerGroup, st) -> dict:
    """The pooler's CPU per cycle and the client's (this process): when the client costs more, it sets the pace."""
    cpu0, ru0 = target.cpu_ns(), resource.getrusage(resource.RUSAGE_SELF)
    r = storm.run_storm(st, target.port, DB_USER, DB_PASSWORD, DB_NAME)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    r["cpu_us_per_cycle"] = round((target.cpu_ns() - cpu0) / 1e3 / st.cycles, 2)
    client_s = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    r["client_cpu_us_per_cycle"] = round(client_s * 1e6 / st.cycles, 2)
    r["backlog"] = storm.listen_backlog(target.port)
    r["ok"] = "connect_max_ms" in r
    return r


def run_counted_storm(target: PoolerGroup, st) -> dict:
    """--callgrind: the pooler's instructions per cycle, from a storm of a quarter of the cycles and a full one
    (what both share, such as the login that ends a startup storm, cancels out). Startup storms are paced (each
    client waits for the pooler's answer before it leaves): under valgrind the accept queue would overflow."""
    pid, rundir = target.pids[0], target.rundirs[0]
    counts = []
    for cycles in (max(1, st.cycles // 4), st.cycles):
        callgrind_total(pid, rundir, zero=True)
        r = storm.run_storm(replace(st, cycles=cycles), target.port, DB_USER, DB_PASSWORD, DB_NAME, paced=True)
        if r["errors"]:
            return {"ok": False, "error": r["first_error"]}
        counts.append((cycles, callgrind_total(pid, rundir)))
    (c1, i1), (c2, i2) = counts
    return {"ok": True, "instructions": i2, "instr_per_cycle": round((i2 - i1) / (c2 - c1)) if c2 > c1 else None}


# ---------------------------------------------------------------- summary


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def ratio(a, b):
    return a / b if a is not None and b else None


def summarize(tests: list[Test], poolers: list[str], res: Results, storms: list = ()) -> list[str]:
    runs = [r for r in res.records if r["kind"] == "run"]
    lines = []
    summary = {}
    for r in runs:
        summary.setdefault((r["test"], r["mode"], r["pooler"]), []).append(r)
    for (test, mode, pooler), rs in summary.items():
        ok = [r for r in rs if r["ok"]]
        s = {"kind": "summary", "test": test, "mode": mode, "pooler": pooler, "runs": len(ok),
             "tps": median_or_none([r["tps"] for r in ok]),
             "latency_ms": median_or_none([r.get("latency_ms") for r in ok]),
             "cpu_us_per_txn": median_or_none([r.get("cpu_us_per_txn") for r in ok]),
             "instr_per_txn": median_or_none([r.get("instr_per_txn") for r in ok]),
             "error": None if ok else rs[0].get("error")}
        summary[(test, mode, pooler)] = s
        res.emit(s)

    storm_runs = [r for r in res.records if r["kind"] == "storm"]
    storm_lines = [""] + storm.summarize(storms, storm_runs, table, res.emit) if storm_runs else []
    if any(r.get("instr_per_txn") for r in runs):
        return lines + summarize_instructions(tests, summary) + storm_lines
    head = ("test", "mode", "direct tps", "PgB tps", "py tps", "tps py/PgB", "PgB us/txn", "py us/txn",
            "cpu py/PgB", "PgB lat ms", "py lat ms", "target")
    rows = []
    for test in tests:
        for mode in test.modes:
            d = summary.get((test.name, "-", "direct"))
            b = summary.get((test.name, mode, "pgbouncer"))
            p = summary.get((test.name, mode, "py"))
            if not (b or p or d):
                continue
            def g(s, k):
                return s[k] if s else None
            tps_r, cpu_r = ratio(g(p, "tps"), g(b, "tps")), ratio(g(p, "cpu_us_per_txn"), g(b, "cpu_us_per_txn"))
            target, verdict = target_for(test, mode), ""
            if target and tps_r is not None and (target[0] is None or cpu_r is not None):
                max_cpu, min_tps = target
                good = tps_r >= min_tps and (max_cpu is None or (cpu_r is not None and cpu_r <= max_cpu))
                verdict = "ok" if good else "MISS"
            elif target:
                verdict = "n/a"
            res.emit({"kind": "ratio", "test": test.name, "mode": mode, "tps_ratio": tps_r, "cpu_ratio": cpu_r,
                      "latency_ratio": ratio(g(p, "latency_ms"), g(b, "latency_ms")),
                      "target_max_cpu_ratio": target[0] if target else None,
                      "target_min_tps_ratio": target[1] if target else None, "verdict": verdict or None})

            def cell(s, k, spec=".1f"):
                if s is None:
                    return "-"
                return "ERR" if s["error"] and not s["runs"] else fmt(s[k], spec)
            rows.append((test.name, mode, cell(d, "tps", ".0f"), cell(b, "tps", ".0f"), cell(p, "tps", ".0f"),
                         fmt(tps_r, ".2f"), cell(b, "cpu_us_per_txn", ".1f"), cell(p, "cpu_us_per_txn", ".1f"),
                         fmt(cpu_r, ".2f"), cell(b, "latency_ms", ".3f"), cell(p, "latency_ms", ".3f"), verdict))
    if rows:
        lines += table(head, rows)

    idle = [r for r in res.records if r["kind"] == "idle"]
    if idle:
        lines.append("")
        ihead = ("idle clients", "PgB RSS MiB", "py RSS MiB", "PgB B/client", "py B/client", "py/PgB", "target")
        irows = []
        for n in sorted({r["clients"] for r in idle}):
            cols = {}
            for kind in ("pgbouncer", "py"):
                rs = [r for r in idle if r["pooler"] == kind and r["clients"] == n and r["ok"]]
                cols[kind] = (median_or_none([r["rss_bytes"] for r in rs]),
                              median_or_none([r.get("bytes_per_client") for r in rs]))
                if rs or any(r["pooler"] == kind and r["clients"] == n for r in idle):
                    res.emit({"kind": "idle_summary", "pooler": kind, "clients": n, "runs": len(rs),
                              "rss_bytes": cols[kind][0], "bytes_per_client": cols[kind][1]})
            verdict = ""
            if n == 10000 and cols["py"][1] is not None:
                verdict = "ok" if cols["py"][1] <= IDLE_TARGET_BYTES else "MISS"
            def mib(v):
                return None if v is None else v / 2**20
            irows.append((str(n), fmt(mib(cols["pgbouncer"][0]), ".1f"), fmt(mib(cols["py"][0]), ".1f"),
                          fmt(cols["pgbouncer"][1], ".0f"), fmt(cols["py"][1], ".0f"),
                          fmt(ratio(cols["py"][1], cols["pgbouncer"][1]), ".2f"), verdict))
        lines += table(ihead, irows)
        errs = {(r["pooler"], r["error"]) for r in idle if not r["ok"]}
        lines += [f"idle {k}: {e}" for k, e in sorted(errs)]
    lines += storm_lines
    errors = sorted({(s["test"], s["mode"], s["pooler"], s["error"]) for s in summary.values()
                     if isinstance(s, dict) and s.get("error") and not s["runs"]})
    if errors:
        lines.append("")
        lines += [f"ERR {t} {m} {p}: {e[:300]}" for t, m, p, e in errors]
    return lines


def summarize_instructions(tests: list[Test], summary: dict) -> list[str]:
    """--callgrind: user-space instructions per transaction, PgBouncer against pgbouncer-py."""
    rows = []
    for test in tests:
        for mode in test.modes:
            b, p = summary.get((test.name, mode, "pgbouncer")), summary.get((test.name, mode, "py"))
            if not (b or p):
                continue
            bi, pi = (s and s["instr_per_txn"] for s in (b, p))
            rows.append((test.name, mode, fmt(bi, ".0f"), fmt(pi, ".0f"), fmt(ratio(pi, bi), ".2f")))
    return table(("test", "mode", "PgB instr/txn", "py instr/txn", "py/PgB"), rows)


def table(head, rows) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    def fmt_row(r):
        cells = (str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True)))
        return "  ".join(cells).rstrip()
    return [fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows]


# ---------------------------------------------------------------- entry points


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="about 10 s: tiny transaction counts, one run, few clients; proves the harness works "
                        "(storms, 1/25 of their cycles, only when --only names them)")
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (pgbench -T), default 10")
    p.add_argument("--transactions", type=int, default=0,
                   help="instead of --duration: total transactions per pgbench run, split over its clients")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs; medians are taken over them (default 3)")
    p.add_argument("--only", default="",
                   help="comma-separated test names, globs or groups (pgbench, active, reuseport, idle)")
    p.add_argument("--poolers", default="direct,pgbouncer,py", help="subset of direct,pgbouncer,py")
    p.add_argument("--modes", default="session,transaction", help="pool modes to run, default both")
    p.add_argument("--json", help="write JSON lines here (default bench/results/bench-<time>.jsonl; '-' for none)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="pgbench -j (threads), default #cores")
    p.add_argument("--pool-size", type=int, default=20, help="default_pool_size in transaction mode (20)")
    p.add_argument("--session-pool-size", type=int, default=110,
                   help="default_pool_size in session mode: must exceed the client count (110)")
    p.add_argument("--auth-type", default="md5", help="pooler auth_type towards clients (md5)")
    p.add_argument("--userlist", choices=("plain", "md5", "scram"), default="plain",
                   help="how auth_file holds the password: plain text (default), an md5 or a SCRAM secret "
                        "(the storms choose their own)")
    p.add_argument("--storm-scale", type=float, default=1.0,
                   help="multiplies the storms' cycle counts (500 startups, 5,000 and 2,000 logins)")
    p.add_argument("--storm-concurrency", type=int, default=50, help="login cycles in flight in a login storm")
    p.add_argument("--ini", action="append", default=[], metavar="KEY=VALUE",
                   help="extra [pgbouncer] line for both poolers (repeatable)")
    p.add_argument("--idle-clients", default="1000,5000,10000", help="idle logged-in client steps")
    p.add_argument("--active-clients", default="1000,5000", help="pgbench clients on a pool of --pool-size")
    p.add_argument("--reuseport", type=int, default=2,
                   help="processes sharing one port in the so_reuseport test (0 or 1 skips it)")
    p.add_argument("--pgbouncer", default="/usr/sbin/pgbouncer", help="PgBouncer binary")
    p.add_argument("--pgbouncer-peers", action="store_true",
                   help="give PgBouncer peer_id/[peers] too in the so_reuseport test (needs >= 1.19)")
    p.add_argument("--py-python", default=None, help="python for pgbouncer-py (default /usr/bin/python3)")
    p.add_argument("--pg-bindir", help="PostgreSQL bin directory (default: newest /usr/lib/postgresql/*/bin)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, inis)")
    p.add_argument("--callgrind", action="store_true",
                   help="count each pooler's user-space instructions per transaction under valgrind's callgrind "
                        "instead of timing it: the same figure on a busy machine (needs valgrind; slow)")
    p.add_argument("--user", default=BENCH_USER, help="unprivileged user to run as when started as root")
    p.add_argument("--json-fd", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.transactions, args.scale = 1, args.transactions or 200, 1
        if args.idle_clients == "1000,5000,10000":
            args.idle_clients = "100,300"
        if args.active_clients == "1000,5000":
            args.active_clients = "200"
        args.storm_scale = min(args.storm_scale, 0.04)
    if args.callgrind:
        args.runs, args.transactions = 1, args.transactions or 4000
        args.storm_scale = min(args.storm_scale, 0.2)
        args.idle_clients = ""
    args.poolers = [x for x in args.poolers.split(",") if x]
    if args.callgrind:
        args.poolers = [x for x in args.poolers if x != "direct"]
    bad = set(args.poolers) - set(POOLER_LABELS)
    if bad:
        p.error(f"unknown pooler(s) {sorted(bad)}; choose from direct,pgbouncer,py")
    args.modes = [m for m in args.modes.split(",") if m]
    args.only = [x for x in args.only.split(",") if x]
    args.idle_clients = [int(x) for x in args.idle_clients.split(",") if x]
    args.active_clients = [int(x) for x in args.active_clients.split(",") if x]
    args.ini = [kv.replace("=", " = ", 1) for kv in args.ini]
    if args.py_python is None:
        args.py_python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    args.client_python = args.py_python
    return args


def git_describe() -> str | None:
    try:
        out = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except OSError:
        return None


def py_scanner(args) -> str | None:
    """'compiled' when pgbouncer-py's copy runs with its C scanner (pgbouncer_py/proto/_scan.c built), else 'python'."""
    if "py" not in args.poolers:
        return None
    code = "from pgbouncer_py.proto import scan; print('compiled' if scan.COMPILED else 'python')"
    out = subprocess.run([args.py_python, "-c", code], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(args.py_src)})
    return out.stdout.strip() or None


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        log(f"creating unprivileged user {name!r} (PostgreSQL and the poolers refuse to run as root)")
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def readable_by_others(path: Path) -> bool:
    for part in [path, *path.parents]:
        if not os.stat(part).st_mode & 0o001:
            return False
    return True


def reexec_unprivileged(args, argv) -> int:
    """As root: create/use an unprivileged user, lift the fd limit, and run this script again as that user."""
    user = ensure_user(args.user)
    script, copy = Path(__file__).resolve(), None
    if not readable_by_others(REPO_ROOT):
        # e.g. a checkout under /root: run a world-readable copy of bench/ and pgbouncer_py/ instead
        copy = Path(tempfile.mkdtemp(prefix="pgbouncer-bench-src-"))
        os.chmod(copy, 0o755)
        ignore = shutil.ignore_patterns("results", "__pycache__")
        shutil.copytree(BENCH_DIR, copy / "bench", ignore=ignore)
        if (REPO_ROOT / "pgbouncer_py").is_dir():
            shutil.copytree(REPO_ROOT / "pgbouncer_py", copy / "pgbouncer_py", ignore=ignore)
        script = copy / "bench" / Path(__file__).name
        log(f"{REPO_ROOT} is not readable by {args.user}; running a copy in {copy}")
    out_fd = None
    if args.json != "-":
        path = Path(args.json or BENCH_DIR / "results" / time.strftime("bench-%Y%m%d-%H%M%S.jsonl"))
        path.parent.mkdir(parents=True, exist_ok=True)
        out_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        log(f"JSON lines -> {path}")
    raise_nofile()
    child_argv, skip = [], False
    for a in argv:  # the child writes to the inherited fd instead of --json
        if skip or a.startswith("--json="):
            skip = False
            continue
        if a == "--json":
            skip = True
            continue
        child_argv.append(a)
    cmd = [args.client_python, str(script), *child_argv, "--json-fd", str(out_fd if out_fd else -1)]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM", "TZ", "PGBOUNCER_PY_PURE")}
    env.update(HOME="/tmp", USER=user.pw_name, LOGNAME=user.pw_name)

    def demote():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    proc = subprocess.Popen(cmd, env=env, cwd="/tmp", preexec_fn=demote, pass_fds=[out_fd] if out_fd else [])
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the child got the terminal's SIGINT too and is summarising
        return proc.wait()
    finally:
        if copy:
            shutil.rmtree(copy, ignore_errors=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if os.geteuid() == 0:
        return reexec_unprivileged(args, argv)
    out = None
    if args.json_fd is not None:
        out = os.fdopen(args.json_fd, "w") if args.json_fd >= 0 else None
    elif args.json != "-":
        path = Path(args.json or BENCH_DIR / "results" / time.strftime("bench-%Y%m%d-%H%M%S.jsonl"))
        path.parent.mkdir(parents=True, exist_ok=True)
        out = open(path, "w")  # noqa: SIM115 - closed below
        log(f"JSON lines -> {path}")
    nofile = raise_nofile()
    biggest = max(args.idle_clients + args.active_clients + [100])
    if nofile < biggest + 200:
        log(f"warning: RLIMIT_NOFILE is {nofile}; tests above {nofile - 200} clients will fail (raise ulimit -n)")
    if "py" in args.poolers and not (REPO_ROOT / "pgbouncer_py").is_dir():
        raise SystemExit(f"no pgbouncer_py package in {REPO_ROOT}")
    res = Results(out=out)
    base = Path(tempfile.mkdtemp(prefix="pgbouncer-bench-"))
    tests = build_tests(args)
    tests = [Test(**{**t.__dict__, "modes": tuple(m for m in t.modes if m in args.modes)}) for t in tests]
    tests = [t for t in tests if t.modes or (t.direct and "direct" in args.poolers)]
    storms = [st for st in storm.build_storms(args.storm_scale, args.storm_concurrency)
              if selected(args.only, st.name, "storm")]
    if not set(args.poolers) - {"direct"} or (args.smoke and not args.only):
        storms = []  # a smoke run has the storms only when --only names them: 12 more pooler instances
    pgbouncer_version = None
    if "pgbouncer" in args.poolers:
        try:
            args.pgbouncer, pgbouncer_version = snapshot_pgbouncer(args.pgbouncer, base)
        except SystemExit:
            shutil.rmtree(base, ignore_errors=True)
            raise
        log(f"{pgbouncer_version} (copied to {args.pgbouncer})")
    args.pgbouncer_peers = args.pgbouncer_peers and pgbouncer_supports_peers(args.pgbouncer)
    # pgbouncer-py runs from a snapshot of the package too: edits to the tree during a long run change nothing
    args.py_src = base / "src"
    if "py" in args.poolers:
        shutil.copytree(REPO_ROOT / "pgbouncer_py", args.py_src / "pgbouncer_py",
                        ignore=shutil.ignore_patterns("__pycache__"))
    max_conn = 150 + 2 * (args.session_pool_size + args.pool_size) + 2 * args.reuseport * args.pool_size + 40
    cluster = Cluster(find_pg_bindir(args.pg_bindir), base, args.scale, max_conn)
    started = time.monotonic()
    res.emit({"kind": "meta", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "poolers": args.poolers,
              "runs": args.runs, "duration": args.duration, "transactions": args.transactions, "scale": args.scale,
              "jobs": args.jobs, "cpus": os.cpu_count(), "auth_type": args.auth_type, "userlist": args.userlist,
              "pool_size": args.pool_size, "storm_scale": args.storm_scale,
              "py_python": args.py_python, "pgbouncer_version": pgbouncer_version, "smoke": args.smoke,
              "git": git_describe(), "py_scanner": py_scanner(args)})
    try:
        cluster.start()
        if tests:
            run_matrix(tests, args.poolers, cluster, base, args, res)
        if selected(args.only, "idle", "idle") and args.idle_clients and set(args.poolers) - {"direct"}:
            run_idle_all(args.poolers, cluster, base, args, res)
        if storms:
            run_storms(storms, args.poolers, cluster, base, args, res)
    except KeyboardInterrupt:
        log("interrupted; summarising what ran")
    finally:
        cluster.stop()
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    each = f"{args.transactions} transactions" if args.transactions else f"{args.duration} s"
    print(f"pgbouncer-py / PgBouncer, medians of {args.runs} interleaved run(s), {each} each, "
          f"{time.monotonic() - started:.0f} s total")
    for line in summarize(tests, args.poolers, res, storms):
        print(line)
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
