"""Smoke test of the benchmark harness: `bench/run.py --smoke` runs end to end and reports every row."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PGBOUNCER = os.environ.get("PGBOUNCER_C_BIN", "/usr/sbin/pgbouncer")
POOLERS = os.environ.get("BENCH_SMOKE_POOLERS", "direct,pgbouncer,py")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(PGBOUNCER) and shutil.which("pgbench") and os.path.isdir("/usr/lib/postgresql")),
    reason="needs Debian's pgbouncer, pgbench and PostgreSQL server binaries",
)

PGBENCH_ROWS = [
    ("S-simple-c10", "session"), ("S-simple-c10", "transaction"), ("S-extended-c10", "transaction"),
    ("S-extended-c100", "transaction"), ("S-prepared-c10", "session"),
    ("S-C-c10", "session"), ("S-C-c10", "transaction"),
    ("tpcb-c10", "session"), ("tpcb-c10", "transaction"),
    ("active-S-c200", "transaction"), ("S-simple-c100-reuseport2", "transaction"),
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--poolers", POOLERS,
                           "--pgbouncer", PGBOUNCER, "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return proc.stdout, records


@pytest.mark.parametrize(("test", "mode"), PGBENCH_ROWS)
def test_table_has_row(smoke, test, mode):
    stdout, _ = smoke
    rows = [line.split() for line in stdout.splitlines()]
    assert [test, mode] in [r[:2] for r in rows]


POOLER_KINDS = [p for p in POOLERS.split(",") if p != "direct"]


@pytest.mark.parametrize("pooler", POOLER_KINDS)
@pytest.mark.parametrize(("test", "mode"), PGBENCH_ROWS)
def test_pooler_runs_succeeded_with_cpu(smoke, pooler, test, mode):
    _, records = smoke
    runs = [r for r in records if r["kind"] == "run" and r["test"] == test and r["mode"] == mode
            and r["pooler"] == pooler]
    assert len(runs) == 1 and runs[0]["ok"], runs
    assert runs[0]["tps"] > 0 and runs[0]["transactions"] > 0 and runs[0]["cpu_us"] >= 0


@pytest.mark.parametrize("test", ["S-simple-c10", "S-prepared-c100", "S-C-c10", "tpcb-c10"])
def test_direct_runs_succeeded(smoke, test):
    _, records = smoke
    runs = [r for r in records if r["kind"] == "run" and r["test"] == test and r["pooler"] == "direct"]
    assert len(runs) == 1 and runs[0]["ok"] and runs[0]["tps"] > 0, runs


@pytest.mark.parametrize("kind", ["meta", "summary", "ratio", "idle", "idle_summary"])
def test_json_has_record_kind(smoke, kind):
    _, records = smoke
    assert any(r["kind"] == kind for r in records)


@pytest.mark.parametrize("pooler", POOLER_KINDS)
@pytest.mark.parametrize("clients", [0, 100, 300])
def test_idle_rss_measured(smoke, pooler, clients):
    _, records = smoke
    idle = [r for r in records if r["kind"] == "idle" and r["pooler"] == pooler and r["clients"] == clients]
    assert len(idle) == 1 and idle[0]["ok"] and idle[0]["rss_bytes"] > 1_000_000, idle


@pytest.mark.skipif(not shutil.which("valgrind") or not shutil.which("callgrind_control"),
                    reason="needs valgrind (Debian package valgrind)")
def test_callgrind_mode_counts_instructions(tmp_path):
    """`--callgrind`: both poolers run under callgrind and report user-space instructions per transaction; the
    C PgBouncer's figure is of the order bench/README.md gives, and pgbouncer-py's is above it."""
    out = tmp_path / "cg.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--callgrind", "--scale", "1",
                           "--pgbouncer", PGBOUNCER,
                           "--transactions", "400", "--modes", "transaction", "--only", "S-simple-c10",
                           "--poolers", "pgbouncer,py", "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {r["pooler"]: r for r in map(json.loads, out.read_text().splitlines()) if r["kind"] == "run"}
    assert set(runs) == {"pgbouncer", "py"} and all(r["ok"] for r in runs.values()), runs
    pgb, py = runs["pgbouncer"]["instr_per_txn"], runs["py"]["instr_per_txn"]
    assert 1_000 < pgb < 50_000 and py > pgb, (pgb, py)
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("S-simple-c10"))
    assert row[:4] == ["S-simple-c10", "transaction", str(pgb), str(py)]


STORMS = ["startup-scram", "login-scram", "seq-login-md5"]


@pytest.fixture(scope="module")
def storm_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "storm.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--only", ",".join(STORMS),
                           "--poolers", ",".join(POOLER_KINDS), "--pgbouncer", PGBOUNCER, "--json", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("pooler", POOLER_KINDS)
@pytest.mark.parametrize("name", STORMS)
def test_storm_measured(storm_smoke, pooler, name):
    """A connection storm (bench/storm.py) against each pooler: every cycle went through, and the record has
    the latency distribution, the pooler's CPU per cycle, the kernel's overflow counters and the backlog."""
    stdout, records = storm_smoke
    runs = [r for r in records if r["kind"] == "storm" and r["storm"] == name and r["pooler"] == pooler]
    assert len(runs) == 1 and runs[0]["ok"] and runs[0]["errors"] == 0, runs
    r = runs[0]
    assert 0 < r["connect_p50_ms"] <= r["connect_max_ms"] and r["cycle_p50_ms"] <= r["cycle_p99_ms"] <= r["cycle_max_ms"]
    assert r["cpu_us_per_cycle"] > 0 and r["wall_s"] > 0 and r["ListenOverflows"] >= 0
    assert r["backlog"] > 0, r  # the listen queue's length as `ss -lnt` shows it
    assert ("drain_s" in r) == name.startswith("startup-")
    row = next(line.split() for line in stdout.splitlines() if line.startswith(name + " "))
    assert row[:2] == [name, str(r["cycles"])]
