"""Soak run: mixed pgbench traffic through pgbouncer-py for a while, with a fault injected every few seconds;
reports failed transactions, restarts of the pooler (must be 0) and its RSS over time (must stay flat).
Usage (not as root: PostgreSQL refuses it): python3 bench/soak.py --minutes 10 [--fault-every 5] [--json out]"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "regress"))

from pgutil import ADMIN_USER, PgCluster, PoolerFactory, clean_env  # noqa: E402
from rawpg import Conn, rss_kb, startup  # noqa: E402

# pgbench workloads run in a loop, each segment a fresh pgbench (a fault that aborts its clients costs
# at most one segment). name -> extra pgbench arguments
WORKLOADS = {
    "tpcb-tx": ["-c", "8", "-j", "2"],
    "select-prepared": ["-S", "-M", "prepared", "-c", "8", "-j", "2"],
    "select-connect": ["-S", "-C", "-c", "4", "-j", "1"],
}


class Soak:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="pgb-soak-"))
        self.pg = PgCluster(self.tmp / "pg", extra_conf={"max_connections": 300})
        self.factory = PoolerFactory(self.pg, self.tmp, python=args.python)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.totals = {name: {"segments": 0, "tx": 0, "failed": 0, "aborted_clients": 0, "bad_exit": 0}
                       for name in WORKLOADS}
        self.faults: dict[str, int] = {}
        self.fault_errors: list[str] = []
        self.rss: list[tuple[float, int]] = []
        self.restarts = 0
        self.pooler = None
        self.pid = None
        self.good_ini = ""

    # -- setup ----------------------------------------------------------------------------------
    def start(self):
        self.pg.start()
        self.pg.init_pgbench(scale=self.args.scale)
        self.pooler = self.factory.start(
            {"pool_mode": "transaction", "default_pool_size": 10, "max_client_conn": 2000,
             "query_timeout": 20, "server_login_retry": 1, "client_login_timeout": 5},
            databases={"benchdb": self.pg.server_connstr("benchdb"),
                       "benchsess": self.pg.server_connstr("benchdb", pool_mode="session")})
        self.pid = self.pooler.pid
        self.good_ini = self.pooler.ini_path.read_text()

    def close(self):
        self.stop.set()
        self.factory.stop_all()
        self.pg.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"soak: kept {self.tmp}")

    # -- traffic --------------------------------------------------------------------------------
    def pgbench_loop(self, name: str, extra: list[str]):
        env = clean_env({"PGPASSWORD": "md5pass"})
        db = "benchsess" if name == "select-connect" else "benchdb"
        while not self.stop.is_set():
            cmd = [str(self.pg.bindir / "pgbench"), "-n", "-T", str(self.args.segment), *extra,
                   "-h", self.pooler.host, "-p", str(self.pooler.port), "-U", "md5user", db]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            out = proc.stdout + proc.stderr
            tx = _int(r"number of transactions actually processed: (\d+)", out)
            failed = _int(r"number of failed transactions: (\d+)", out)
            # "client 3 aborted in command ..." (pgbench < 15) or "client 3 script 0 aborted in command ..."
            aborted = len(re.findall(r"client \d+ (?:script \d+ )?aborted", out))
            with self.lock:
                t = self.totals[name]
                t["segments"] += 1
                t["tx"] += tx
                t["failed"] += failed
                t["aborted_clients"] += aborted
                t["bad_exit"] += proc.returncode not in (0, 2)   # 2: some clients aborted (counted above)
            self.check_alive()

    # -- faults ---------------------------------------------------------------------------------
    def faults_loop(self):
        kinds = [self.kill_one_backend, self.kill_all_backends, self.reload, self.broken_reload,
                 self.hostile_clients, self.connect_storm, self.stalled_query]
        n = 0
        while not self.stop.wait(self.args.fault_every):
            n += 1
            if self.args.pg_restart_every and n % self.args.pg_restart_every == 0:
                fault = self.restart_postgres
            else:
                fault = random.choice(kinds)
            try:
                fault()
            except Exception as e:  # a fault that could not be injected is reported, the soak goes on
                self.fault_errors.append(f"{fault.__name__}: {e!r}")
            self.faults[fault.__name__] = self.faults.get(fault.__name__, 0) + 1
            self.check_alive()

    def kill_one_backend(self):
        self.pg.psql("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'benchdb' "
                     "and usename = 'md5user' and pid <> pg_backend_pid() order by random() limit 1")

    def kill_all_backends(self):
        self.pg.psql("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'benchdb' "
                     "and usename = 'md5user' and pid <> pg_backend_pid()")

    def admin(self, sql: str) -> str:
        env = clean_env({"PGPASSWORD": "adminpass"})
        proc = subprocess.run([str(self.pg.bindir / "psql"), "-X", "-At", "-h", self.pooler.unix_dir, "-p",
                               str(self.pooler.port), "-U", ADMIN_USER, "-d", "pgbouncer", "-c", sql],
                              capture_output=True, text=True, env=env, timeout=30)
        return proc.stdout + proc.stderr

    def reload(self):
        self.admin("RELOAD")

    def broken_reload(self):
        self.pooler.ini_path.write_text("[pgbouncer\nbroken = = \n")
        try:
            self.admin("RELOAD")
        finally:
            self.pooler.ini_path.write_text(self.good_ini)

    def hostile_clients(self):
        garbage = [struct.pack("!I", 4), struct.pack("!II", 8, 2 << 16), os.urandom(300),
                   startup("md5user", "benchdb")[:7], struct.pack("!IIII", 16, 80877102, 1, 2)]
        for data in garbage:
            c = Conn(self.pooler.host, self.pooler.port, timeout=5)
            c.send(data)
            c.reset() if random.random() < 0.5 else c.close()

    def connect_storm(self):
        for _ in range(200):
            s = socket.create_connection((self.pooler.host, self.pooler.port), timeout=5)
            s.close()

    def stalled_query(self):
        """A query that outlives query_timeout: the pooler must cancel it (runs in the background)."""
        env = clean_env({"PGPASSWORD": "md5pass"})
        subprocess.Popen([str(self.pg.bindir / "psql"), "-X", "-h", self.pooler.host, "-p",
                          str(self.pooler.port), "-U", "md5user", "-d", "benchdb", "-c", "select pg_sleep(60)"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def restart_postgres(self):
        subprocess.run([str(self.pg.bindir / "pg_ctl"), "restart", "-w", "-m", "fast", "-D", str(self.pg.data_dir),
                        "-l", str(self.pg.log_path)], capture_output=True, env=clean_env({"LC_ALL": "C"}),
                       check=True, timeout=120)

    # -- watching -------------------------------------------------------------------------------
    def check_alive(self):
        if self.pooler.is_running() and self.pooler.pid == self.pid:
            return
        with self.lock:
            if self.pooler.is_running() and self.pooler.pid == self.pid:
                return
            self.restarts += 1
            print(f"soak: POOLER DIED, log tail:\n{self.pooler.log()[-3000:]}", flush=True)
            self.pooler._launch()          # restart it so the soak can go on, and count it
            self.pooler.wait_ready()
            self.pid = self.pooler.pid

    def sample_loop(self):
        t0 = time.monotonic()
        while not self.stop.wait(self.args.sample_every):
            try:
                self.rss.append((round(time.monotonic() - t0, 1), rss_kb(self.pid)))
            except (OSError, RuntimeError):
                pass

    # -- run --------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=self.pgbench_loop, args=(n, a), daemon=True) for n, a in WORKLOADS.items()]
        threads += [threading.Thread(target=self.faults_loop, daemon=True),
                    threading.Thread(target=self.sample_loop, daemon=True)]
        for t in threads:
            t.start()
        self.stop.wait(self.args.minutes * 60)
        self.stop.set()
        for t in threads:
            t.join(self.args.segment + 130)
        duration = time.monotonic() - t0
        log = self.pooler.log()
        return {
            "minutes": round(duration / 60, 2),
            "workloads": self.totals,
            "transactions": sum(t["tx"] for t in self.totals.values()),
            # a pgbench client aborts on the error of its transaction in flight: one failed transaction each
            "failed_transactions": sum(t["failed"] + t["aborted_clients"] for t in self.totals.values()),
            "aborted_clients": sum(t["aborted_clients"] for t in self.totals.values()),
            "faults": self.faults,
            "fault_errors": self.fault_errors[:20],
            "pooler_restarts": self.restarts,
            "tracebacks_in_log": log.count("Traceback"),
            "internal_errors_in_log": log.count("internal error"),
            "rss_kb": rss_summary(self.rss),
            "rss_samples": self.rss,
        }


def _int(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def rss_summary(samples: list[tuple[float, int]]) -> dict:
    """RSS at start (after a warm-up of the first 10% of samples), end, max, and the growth between the median
    of the second quarter and the median of the last quarter (flat means a few MB at most)."""
    if len(samples) < 8:
        return {"samples": len(samples)}
    values = [v for _, v in samples]
    q = len(values) // 4
    early, late = statistics.median(values[q:2 * q]), statistics.median(values[3 * q:])
    return {"samples": len(values), "first": values[0], "last": values[-1], "max": max(values),
            "median_q2": int(early), "median_q4": int(late), "growth_q2_to_q4": int(late - early)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--fault-every", type=float, default=5, help="seconds between injected faults")
    ap.add_argument("--pg-restart-every", type=int, default=12,
                    help="every Nth fault is a PostgreSQL restart (0: never)")
    ap.add_argument("--segment", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--sample-every", type=float, default=5, help="seconds between RSS samples")
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs pgbouncer_py")
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, inis)")
    args = ap.parse_args()
    if os.geteuid() == 0:
        sys.exit("soak.py: PostgreSQL refuses to run as root; run it as an ordinary user "
                 "(e.g. runuser -u pgbtest -- python3 bench/soak.py)")
    soak = Soak(args)
    try:
        report = soak.run()
    finally:
        soak.close()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    short = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(short, indent=2))
    rss = report["rss_kb"]
    print("RSS over time (s, kB): " + " ".join(f"{t:g}:{v}" for t, v in report["rss_samples"][:: max(1, len(report["rss_samples"]) // 20)]))
    ok = report["pooler_restarts"] == 0 and report["tracebacks_in_log"] == 0 and \
        abs(rss.get("growth_q2_to_q4", 0)) < 20 * 1024
    print("soak:", "PASS" if ok else "FAIL", f"(restarts {report['pooler_restarts']}, "
          f"RSS growth {rss.get('growth_q2_to_q4', '?')} kB, failed tx {report['failed_transactions']}, "
          f"aborted pgbench clients {report['aborted_clients']}, transactions {report['transactions']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
