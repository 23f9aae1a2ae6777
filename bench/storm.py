"""Connection storms for bench/run.py (group `storm`): the client side, the kernel's listen counters, the summary.

`startup` storms connect, send a startup packet and close at once, one connection after the other; `login`
storms run connect / log in / SELECT 1 / Terminate cycles, `concurrency` of them in flight.
"""

import asyncio
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass

from idle_clients import LoginError, authenticate, message, read_message, startup_packet

HOST = "127.0.0.1"
TIMEOUT = 30.0  # a connect that waits for SYN retransmits takes 1 s, 3 s, 7 s, ...
# auth -> (auth_type of both poolers, kind of secret in auth_file: see run.userlist_secret)
AUTH = {"md5": ("md5", "md5"), "scram": ("scram-sha-256", "scram"), "scram-plain": ("scram-sha-256", "plain")}
KERNEL_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")
MAX_WALL_RATIO, MAX_CONNECT_MS = 2.0, 100.0  # the issue's targets for the storms


@dataclass(frozen=True)
class Storm:
    name: str
    kind: str  # "startup" or "login"
    auth: str  # a key of AUTH
    cycles: int
    concurrency: int = 1
    target: bool = True  # the issue sets the wall-time and slowest-connect targets for this one


def build_storms(scale: float, concurrency: int) -> list[Storm]:
    def n(cycles):
        return max(10, round(cycles * scale))
    return [Storm("startup-scram", "startup", "scram", n(500)),
            Storm("startup-scram-plain", "startup", "scram-plain", n(500)),
            Storm("startup-md5", "startup", "md5", n(500)),
            Storm("login-md5", "login", "md5", n(5000), concurrency),
            Storm("login-scram", "login", "scram", n(5000), concurrency),
            Storm("seq-login-md5", "login", "md5", n(2000), target=False)]


# ---------------------------------------------------------------- the kernel's view


def tcp_counters() -> dict:
    """TcpExt counters of the whole machine (what `nstat` shows): accept-queue overflows and SYN retransmits."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], map(int, values.split()[1:]), strict=True))
            return {k: table.get(k, 0) for k in KERNEL_COUNTERS}
    return dict.fromkeys(KERNEL_COUNTERS, 0)


def listen_backlog(port: int) -> int | None:
    """The backlog the kernel applies to the socket listening on `port` (`ss -lnt`'s Send-Q)."""
    try:
        out = subprocess.run(["ss", "-Hlnt", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
        return int(out.stdout.split()[2])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------- the clients


def startup_storm(port: int, cycles: int, user: str, dbname: str, paced: bool = False) -> dict:
    """Sequential connect + startup packet + close; the time of each connect(). `paced`: wait for the pooler's
    first answer (its authentication request) before closing."""
    packet = startup_packet(user, dbname)
    connects, errors, first_error = [], 0, None
    started = time.perf_counter()
    for _ in range(cycles):
        t0 = time.perf_counter()
        try:
            with socket.socket() as s:
                s.settimeout(TIMEOUT)
                s.connect((HOST, port))
                connects.append(time.perf_counter() - t0)
                s.sendall(packet)
                if paced and not s.recv(1):
                    raise ConnectionResetError("the pooler closed without an answer")
        except OSError as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    return {"wall_s": time.perf_counter() - started, "connect": connects, "cycle": connects, "errors": errors,
            "first_error": first_error}


async def login_cycle(port: int, user: str, password: str, dbname: str) -> tuple[float, float]:
    """Connect, log in, SELECT 1, Terminate; returns (connect seconds, whole cycle seconds). One timeout for the
    whole cycle: a timeout per read would cost the client more than the pooler's work."""
    t0 = time.perf_counter()
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(HOST, port)
        connected = time.perf_counter() - t0
        try:
            await authenticate(reader, writer, user, password, dbname, None)
            writer.write(message(b"Q", b"SELECT 1\0"))
            while True:
                kind, body = await read_message(reader, None)
                if kind == b"E":
                    raise LoginError(body.replace(b"\0", b" ").decode(errors="replace").strip())
                if kind == b"Z":
                    break
            writer.write(message(b"X", b""))
        finally:
            writer.close()
    return connected, time.perf_counter() - t0


async def login_storm(port: int, cycles: int, concurrency: int, user: str, password: str, dbname: str) -> dict:
    connects, totals, errors = [], [], []
    left = cycles

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            try:
                connected, total = await login_cycle(port, user, password, dbname)
            except (OSError, TimeoutError, LoginError, asyncio.IncompleteReadError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            connects.append(connected)
            totals.append(total)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"wall_s": time.perf_counter() - started, "connect": connects, "cycle": totals, "errors": len(errors),
            "first_error": errors[0] if errors else None}


def run_async(coro):
    """Run a client coroutine on uvloop when it is installed (a cheaper client), else on asyncio's loop."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def run_storm(storm: Storm, port: int, user: str, password: str, dbname: str, paced: bool = False) -> dict:
    """One storm against the pooler on `port`: wall time, connect and cycle latencies, kernel counter deltas.
    A startup storm ends when a login after it succeeds (`drain_s` after the last close): the pooler then has
    taken every earlier connection off its accept queue."""
    before = tcp_counters()
    if storm.kind == "startup":
        r = startup_storm(port, storm.cycles, user, dbname, paced)
        t0 = time.perf_counter()
        run_async(login_cycle(port, user, password, dbname))
        r["drain_s"] = round(time.perf_counter() - t0, 4)
    else:
        r = run_async(login_storm(port, storm.cycles, storm.concurrency, user, password, dbname))
    after = tcp_counters()
    r.update({k: after[k] - before[k] for k in KERNEL_COUNTERS})
    r.update(distribution("connect", r.pop("connect")))
    r.update(distribution("cycle", r.pop("cycle")))
    r["wall_s"] = round(r["wall_s"], 4)
    return r


def distribution(name: str, seconds: list[float]) -> dict:
    if not seconds:
        return {}
    v = sorted(seconds)
    def at(q):
        return round(v[min(len(v) - 1, int(q * len(v)))] * 1e3, 3)
    return {f"{name}_p50_ms": at(0.5), f"{name}_p99_ms": at(0.99), f"{name}_max_ms": round(v[-1] * 1e3, 3)}


# ---------------------------------------------------------------- summary


def summarize(storms: list[Storm], records: list[dict], table, emit) -> list[str]:
    """Two tables: wall time and slowest connect with the issue's verdict; latency, CPU and overflows.
    Under --callgrind one: instructions per cycle."""
    if any("instr_per_cycle" in r for r in records):
        rows = []
        for st in storms:
            got = {r["pooler"]: r.get("instr_per_cycle") for r in records if r["storm"] == st.name and r["ok"]}
            b, p = got.get("pgbouncer"), got.get("py")
            rows.append((st.name, str(st.cycles), f"{b:.0f}" if b else "-", f"{p:.0f}" if p else "-",
                         f"{p / b:.2f}" if b and p else "-"))
        return table(("storm", "cycles", "PgB instr/cycle", "py instr/cycle", "py/PgB"), rows)
    def med(rs, key):
        values = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(values) if values else None

    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    rows1, rows2, errs = [], [], []
    for st in storms:
        s = {}
        for kind in ("pgbouncer", "py"):
            rs = [r for r in records if r["kind"] == "storm" and r["storm"] == st.name and r["pooler"] == kind]
            ok = [r for r in rs if r["ok"]]
            s[kind] = {"kind": "storm_summary", "storm": st.name, "pooler": kind, "runs": len(ok),
                       "cycles": st.cycles, "concurrency": st.concurrency,
                       **{k: med(ok, k) for k in ("wall_s", "drain_s", "connect_p50_ms", "connect_p99_ms",
                                                  "cycle_p50_ms", "cycle_p99_ms", "cycle_max_ms",
                                                  "cpu_us_per_cycle", "client_cpu_us_per_cycle",
                                                  "ListenOverflows", "TCPSynRetrans", "backlog")},
                       "connect_max_ms": max((r["connect_max_ms"] for r in ok if "connect_max_ms" in r),
                                             default=None),
                       "errors": sum(r.get("errors", 0) for r in rs),
                       "error": next((r.get("first_error") or r.get("error") for r in rs
                                      if r.get("first_error") or r.get("error")), None)}
            if rs:
                emit(s[kind])
            if s[kind]["error"]:
                errs.append(f"ERR {st.name} {kind}: {s[kind]['error'][:300]}")
        b, p = s["pgbouncer"], s["py"]
        wall_r = p["wall_s"] / b["wall_s"] if p["wall_s"] and b["wall_s"] else None
        cpu_r = p["cpu_us_per_cycle"] / b["cpu_us_per_cycle"] if p["cpu_us_per_cycle"] and b["cpu_us_per_cycle"] \
            else None
        verdict = ""
        if st.target and wall_r is not None and p["connect_max_ms"] is not None:
            good = wall_r <= MAX_WALL_RATIO and p["connect_max_ms"] <= MAX_CONNECT_MS
            verdict = "ok" if good and not p["errors"] else "MISS"
        emit({"kind": "storm_ratio", "storm": st.name, "wall_ratio": wall_r, "cpu_ratio": cpu_r,
              "verdict": verdict or None})
        rows1.append((st.name, str(st.cycles), str(st.concurrency), f(b["wall_s"], ".3f"), f(p["wall_s"], ".3f"),
                      f(wall_r, ".2f"), f(b["connect_max_ms"]), f(p["connect_max_ms"]), f(b["drain_s"], ".3f"),
                      f(p["drain_s"], ".3f"), str(b["errors"]), str(p["errors"]), verdict))
        rows2.append((st.name, *(f"{f(x['cycle_p50_ms'], '.2f')}/{f(x['cycle_p99_ms'], '.1f')}/"
                                 f"{f(x['cycle_max_ms'], '.0f')}" for x in (b, p)),
                      f(b["cpu_us_per_cycle"], ".0f"), f(p["cpu_us_per_cycle"], ".0f"), f(cpu_r, ".2f"),
                      f(med([b, p], "client_cpu_us_per_cycle"), ".0f"),
                      f(b["ListenOverflows"], ".0f"), f(p["ListenOverflows"], ".0f"),
                      f(b["backlog"], ".0f"), f(p["backlog"], ".0f")))
    lines = table(("storm", "cycles", "conc", "PgB wall s", "py wall s", "wall py/PgB", "PgB max conn ms",
                   "py max conn ms", "PgB drain s", "py drain s", "PgB err", "py err", "target"), rows1)
    lines.append("")
    lines += table(("storm", "PgB cycle p50/p99/max ms", "py cycle p50/p99/max ms", "PgB us/cycle",
                    "py us/cycle", "cpu py/PgB", "client us/cycle", "PgB overflows", "py overflows", "PgB backlog",
                    "py backlog"), rows2)
    return lines + errs
