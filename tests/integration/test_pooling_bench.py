"""pgbench -S -c 100 in transaction mode: pgbouncer-py vs Debian's PgBouncer vs PostgreSQL directly, in one
run (slow; select with -m slow). Prints the tps table and checks every target completes the run error-free."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from pgutil import PASSWORDS, clean_env, find_pg_bindir

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "100"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))


def pgbench(host: str, port: int) -> float:
    env = clean_env({"PGPASSWORD": PASSWORDS["md5user"]})
    cmd = [str(find_pg_bindir() / "pgbench"), "-n", "-S", "-c", str(CLIENTS), "-j", "2",
           "-T", str(SECONDS), "-h", host, "-p", str(port), "-U", "md5user", "benchdb"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SECONDS + 120)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", r.stdout)
    assert m, r.stdout
    failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
    assert failed is None or failed.group(1) == "0", r.stdout
    return float(m.group(1))


@pytest.mark.slow
def test_pgbench_select_only_transaction_mode(pooler_factory, pg):
    pg.init_pgbench()
    ini = {"pool_mode": "transaction", "max_client_conn": CLIENTS + 20, "default_pool_size": 20,
           "log_connections": 0, "log_disconnections": 0}
    results = {}
    for binary in ("py", "c"):
        p = pooler_factory.start(ini, binary=binary)
        results[binary] = pgbench(p.host, p.port)
        p.stop()
    results["direct"] = pgbench(pg.host, pg.port)
    print(f"\npgbench -S -c {CLIENTS} -T {SECONDS} (transaction mode, pool 20): "
          f"pgbouncer-py {results['py']:.0f} tps, PgBouncer 1.18 {results['c']:.0f} tps, "
          f"direct {results['direct']:.0f} tps")
    assert all(v > 0 for v in results.values())
