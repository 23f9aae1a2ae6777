#!/usr/bin/env python3
"""What the HTTP listener (http_listen_addr: /metrics, /health, /ready) costs: pgbench through pgbouncer-py with it
off and with it on and /metrics scraped every --scrape-every seconds, interleaved run by run. See bench/README.md.

Reuses bench/run.py's throwaway PostgreSQL and pooler processes; pgbouncer-py only.
"""

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py, beside this file)


class Scraper(threading.Thread):
    """GET /metrics every `every` seconds until stopped; keeps each scrape's duration and size."""

    def __init__(self, url: str, every: float):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stop_event = threading.Event()
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    self.sizes.append(len(r.read()))
                self.times.append(time.monotonic() - t0)
            except OSError as e:
                self.errors.append(str(e))
            self.stop_event.wait(max(0.0, self.every - (time.monotonic() - t0)))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(15)


def idle_scrape_cpu(group, port: int, n: int = 300) -> float:
    """Seconds of pooler CPU per /metrics scrape, from n scrapes in a row while nothing else runs."""
    url = f"http://127.0.0.1:{port}/metrics"
    ticks0 = group.cpu_ticks()
    for _ in range(n):
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
    return (group.cpu_ticks() - ticks0) / bench.CLK_TCK / n


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (10)")
    p.add_argument("--runs", type=int, default=5, help="interleaved runs of each variant (5)")
    p.add_argument("--clients", type=int, default=10, help="pgbench -c (10)")
    p.add_argument("--mode", default="transaction", help="pool_mode (transaction)")
    p.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes of /metrics (1)")
    p.add_argument("--off-tree", help="a pgbouncer_py package directory for the 'off' variant (say, an export of "
                                      "main, to show what the change costs with the listener off); default: this one")
    p.add_argument("--smoke", action="store_true", help="1 run of 2 s each, scale 1: proves the harness works")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--pool-size", type=int, default=20)
    p.add_argument("--py-python", default="/usr/bin/python3")
    p.add_argument("--pg-bindir")
    p.add_argument("--user", default=bench.BENCH_USER)
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.duration, args.scale = 1, 2, 1
    # what bench/run.py's PoolerGroup and run_pgbench read
    args.auth_type, args.ini, args.callgrind, args.pgbouncer_peers, args.transactions = "md5", [], False, False, 0
    return args


def as_user(args, argv) -> int:
    """As root: run this script again as the unprivileged user (PostgreSQL and the poolers refuse root)."""
    bench.ensure_user(args.user)
    bench.raise_nofile()
    cmd = ["runuser", "-u", args.user, "--", args.py_python, str(Path(__file__).resolve()), *argv]
    return subprocess.run(cmd, cwd="/tmp", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                "HOME": "/tmp"}).returncode


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if os.geteuid() == 0:
        return as_user(args, argv)
    base = Path(tempfile.mkdtemp(prefix="pgbouncer-metrics-cost-"))
    variants = {}
    for name, tree in (("off", Path(args.off_tree) if args.off_tree else bench.REPO_ROOT / "pgbouncer_py"),
                       ("on", bench.REPO_ROOT / "pgbouncer_py")):
        a = copy.copy(args)
        a.py_src = base / f"src-{name}"
        shutil.copytree(tree, a.py_src / "pgbouncer_py", ignore=shutil.ignore_patterns("__pycache__"))
        if name == "on":
            a.http_port = bench.free_port()
            a.ini = ["http_listen_addr = 127.0.0.1", f"http_listen_port = {a.http_port}"]
        variants[name] = a
    cluster = bench.Cluster(bench.find_pg_bindir(args.pg_bindir), base, args.scale, 200 + 2 * args.pool_size)
    test = bench.Test(f"S-simple-c{args.clients}", args.clients)
    results: dict[str, list[dict]] = {"off": [], "on": []}
    scrape_times: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []
    groups = {}
    cpu_per_scrape = None
    try:
        cluster.start()
        for name, a in variants.items():
            g = groups[name] = bench.PoolerGroup("py", args.mode, 1, args.pool_size, base, cluster, a, tag=name)
            g.start()
            g.warm_up()
        for i in range(args.runs):
            for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                scraper = None
                if name == "on":
                    scraper = Scraper(f"http://127.0.0.1:{variants['on'].http_port}/metrics", args.scrape_every)
                    scraper.start()
                res = bench.run_pgbench(cluster, groups[name], test, variants[name])
                if scraper is not None:
                    scraper.stop()
                    scrape_times += scraper.times
                    sizes += scraper.sizes
                    errors += scraper.errors
                bench.log(f"run {i + 1} {name}: {res.get('tps', 'ERR')} tps, "
                          f"{res.get('cpu_us_per_txn', '-')} us/txn{' ' + res['error'] if not res['ok'] else ''}")
                results[name].append(res)
        cpu_per_scrape = idle_scrape_cpu(groups["on"], variants["on"].http_port)
    finally:
        for g in groups.values():
            g.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    def med(name, key):
        vals = [r[key] for r in results[name] if r.get("ok") and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    off_tps, on_tps = med("off", "tps"), med("on", "tps")
    print(f"\npgbench -S -c {args.clients} ({args.mode}), {args.runs} interleaved run(s) of {args.duration} s, "
          f"/metrics scraped every {args.scrape_every:g} s in the 'on' runs")
    print(f"{'variant':8} {'tps':>9} {'us/txn':>8}")
    for name in ("off", "on"):
        print(f"{name:8} {bench.fmt(med(name, 'tps'), '.0f'):>9} {bench.fmt(med(name, 'cpu_us_per_txn'), '.2f'):>8}")
    if off_tps and on_tps:
        print(f"tps on/off: {on_tps / off_tps:.4f} ({(on_tps / off_tps - 1) * 100:+.2f}%)")
    if scrape_times:
        print(f"scrapes: {len(scrape_times)}, median {statistics.median(scrape_times) * 1000:.1f} ms, "
              f"max {max(scrape_times) * 1000:.1f} ms, {statistics.median(sizes)} bytes; errors: {len(errors)}")
    if cpu_per_scrape is not None:
        share = cpu_per_scrape / args.scrape_every
        print(f"pooler CPU per scrape (300 in a row, idle): {cpu_per_scrape * 1000:.2f} ms, i.e. {share * 100:.2f}% of "
              f"one core at one scrape every {args.scrape_every:g} s: the most a CPU-bound pooler can lose to it")
    return 0 if off_tps and on_tps and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
