"""The HTTP listener (pgbouncer-py extension, docs/extensions.md): /metrics with the prometheus-community
pgbouncer_exporter's names agreeing with SHOW during pgbench, /health and /ready through pause, suspend, failing
server logins and SIGTERM, robustness against bad and slow HTTP clients, and nothing at all when it is off."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import psycopg2
import pytest
from pgutil import (
    ADMIN_USER,
    _listening_inodes,
    _socket_inodes_of,
    find_pg_bindir,
    free_port,
    listen_backlog,
    wait_until,
)

# The prometheus-community exporter's metric names (pgbouncer_exporter collector.go, as recorded in
# ../shared/reference/monitoring-consumers.md section 1). Left out: pgbouncer_stats_totals_queries_total (SHOW
# STATS_TOTALS `requests`, a column PgBouncer dropped in 1.8, so the exporter never emits it for 1.8 and later).
EXPORTER_NAMES = (
    ["pgbouncer_up", "pgbouncer_version_info", "pgbouncer_config_max_client_connections",
     "pgbouncer_config_max_user_connections", "pgbouncer_client_connections"]
    + [f"pgbouncer_{n}" for n in ("databases users pools free_clients used_clients login_clients free_servers "
                                  "used_servers cached_dns_names cached_dns_zones in_flight_dns_queries").split()]
    + [f"pgbouncer_databases_{n}" for n in
       "pool_size reserve_pool max_connections current_connections paused disabled".split()]
    + [f"pgbouncer_stats_totals_{n}" for n in
       ("queries_pooled_total queries_duration_seconds_total received_bytes_total sent_bytes_total "
        "client_wait_seconds_total sql_transactions_pooled_total server_in_transaction_seconds_total "
        "client_parses_total server_parses_total binds_total server_assignments_total").split()]
    + [f"pgbouncer_pools_{n}" for n in
       ("client_active_connections client_active_cancel_connections client_waiting_connections "
        "client_waiting_cancel_connections server_active_connections server_active_cancel_connections "
        "server_being_canceled_connections server_idle_connections server_used_connections "
        "server_testing_connections server_login_connections client_maxwait_seconds").split()])
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "monitoring-consumers.md"
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', re.M)
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def start(pooler_factory, ini=None, **kw):
    settings = {"http_listen_addr": "127.0.0.1", "http_listen_port": free_port(), **(ini or {})}
    p = pooler_factory.start(ini_settings=settings, **kw)
    p.http = f"http://127.0.0.1:{settings['http_listen_port']}"
    return p


def get(p, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of one GET."""
    try:
        with urllib.request.urlopen(p.http + path, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def get_json(p, path: str) -> tuple[int, dict]:
    status, ctype, body = get(p, path)
    assert ctype == "application/json"
    return status, json.loads(body)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} of an exposition."""
    return {(m[1], frozenset(LABEL_RE.findall(m[2] or ""))): float(m[3]) for m in SAMPLE_RE.finditer(text)}


def value(s: dict, metric: str, **labels) -> float:
    want = set(labels.items())
    found = [v for (n, lab), v in s.items() if n == metric and want <= set(lab)]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def scrape(p) -> dict:
    status, ctype, body = get(p, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), body
    return samples(body)


def _expand(text: str) -> set[str]:
    names = set()
    for prefix, group in re.findall(r"`(pgbouncer_\w*)\{([\w,]+)\}`", text):
        names |= {prefix + g for g in group.split(",")}
    names |= set(re.findall(r"`(pgbouncer_\w+)`", text))
    return names


def test_exporter_metric_names(pooler_factory):
    """Every name the prometheus-community exporter emits for PgBouncer 1.25 is served, with its type."""
    if REFERENCE.exists():       # the list above is the one recorded from the exporter's source
        section = REFERENCE.read_text().split("## 1.", 1)[1].split("## 2.", 1)[0]
        recorded = _expand(section.split("Metric names produced", 1)[1])
        recorded -= {"pgbouncer_databases", "pgbouncer_stats_totals_queries_total", "pgbouncer_process_"}
        assert recorded <= set(EXPORTER_NAMES), recorded - set(EXPORTER_NAMES)
    p = start(pooler_factory)
    _, _, body = get(p, "/metrics")
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M))
    served = {m[1] for m in SAMPLE_RE.finditer(body)} | set(types)      # a family may have no sample yet
    assert [n for n in EXPORTER_NAMES if n not in served] == []
    assert {types.get(n, types.get(n.removesuffix("_total"))) for n in EXPORTER_NAMES
            if n.startswith("pgbouncer_stats_")} == {"counter"}
    assert types["pgbouncer_pools_client_active_connections"] == "gauge"
    # the extras are ours, under pgbouncer_py_
    assert {"pgbouncer_py_client_login_duration_seconds", "pgbouncer_py_client_wait_duration_seconds"} <= \
        {n for n, t in types.items() if t == "histogram"}


def _pgbench(p, seconds: int, clients: int = 4) -> subprocess.Popen:
    cmd = [str(find_pg_bindir() / "pgbench"), "-n", "-c", str(clients), "-T", str(seconds), "-S", "-h", p.host,
           "-p", str(p.port), "-U", "md5user", "benchdb"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PGPASSWORD": "md5pass", "PATH": "/usr/bin:/bin"})


TOTALS = {"server_assignment_count": "server_assignments_total", "xact_count": "sql_transactions_pooled_total",
          "query_count": "queries_pooled_total", "bytes_received": "received_bytes_total",
          "bytes_sent": "sent_bytes_total", "xact_time": "server_in_transaction_seconds_total",
          "query_time": "queries_duration_seconds_total", "wait_time": "client_wait_seconds_total"}
SCALE = {"xact_time": 1e-6, "query_time": 1e-6, "wait_time": 1e-6}
POOLS = {"cl_active": "client_active_connections", "cl_waiting": "client_waiting_connections",
         "sv_active": "server_active_connections", "sv_idle": "server_idle_connections",
         "sv_used": "server_used_connections", "sv_login": "server_login_connections"}


def test_metrics_agree_with_show_during_pgbench(pooler_factory, pg):
    pg.init_pgbench()
    p = start(pooler_factory, {"pool_mode": "transaction", "default_pool_size": 2})
    bench = _pgbench(p, 5)
    try:
        wait_until(lambda: (r := [x for x in p.admin_dicts("SHOW STATS_TOTALS") if x["database"] == "benchdb"])
                   and r[0]["xact_count"] > 200, timeout=20, message="pgbench traffic")
        for _ in range(3):
            before = {r["database"]: r for r in p.admin_dicts("SHOW STATS_TOTALS")}
            s = scrape(p)
            after = {r["database"]: r for r in p.admin_dicts("SHOW STATS_TOTALS")}
            pools = {r["database"]: r for r in p.admin_dicts("SHOW POOLS")}
            for col, metric in TOTALS.items():
                got = value(s, f"pgbouncer_stats_totals_{metric}", database="benchdb")
                lo, hi = (float(before["benchdb"][col]) * SCALE.get(col, 1),
                          float(after["benchdb"][col]) * SCALE.get(col, 1))
                assert lo - 1e-6 <= got <= hi + 1e-6, (col, lo, got, hi)
            # 4 clients on a pool of 2: the clients are active or waiting, never gone
            row = pools["benchdb"]
            got = {c: value(s, f"pgbouncer_pools_{m}", database="benchdb", user="md5user") for c, m in POOLS.items()}
            assert got["cl_active"] + got["cl_waiting"] == row["cl_active"] + row["cl_waiting"] == 4
            assert got["sv_active"] + got["sv_idle"] + got["sv_used"] + got["sv_login"] <= 2
            by_app = {dict(lab)["state"]: v for (n, lab), v in s.items() if n == "pgbouncer_client_connections"
                      and dict(lab)["database"] == "benchdb" and dict(lab)["application_name"] == "pgbench"}
            assert sum(by_app.values()) == 4 and set(by_app) <= {"active", "idle", "waiting"}
    finally:
        out, _ = bench.communicate(timeout=60)
    assert bench.returncode == 0, out
    # quiet now: every value equals SHOW's exactly
    s = scrape(p)
    stats = {r["database"]: r for r in p.admin_dicts("SHOW STATS_TOTALS")}
    for db in ("benchdb",):         # (the console's own counters move with each SHOW)
        for col, metric in TOTALS.items():
            assert value(s, f"pgbouncer_stats_totals_{metric}", database=db) == \
                pytest.approx(float(stats[db][col]) * SCALE.get(col, 1)), (db, col)
    for row in p.admin_dicts("SHOW POOLS"):
        if row["database"] == "pgbouncer":
            continue                # the console connection that runs SHOW POOLS is not there during the scrape
        for col, metric in POOLS.items():
            assert value(s, f"pgbouncer_pools_{metric}", database=row["database"], user=row["user"]) == row[col]
    for row in p.admin_dicts("SHOW DATABASES"):
        assert value(s, "pgbouncer_databases_pool_size", name=row["name"]) == row["pool_size"]
        assert value(s, "pgbouncer_databases_current_connections", name=row["name"]) == row["current_connections"]
    lists = dict(p.admin("SHOW LISTS"))
    assert value(s, "pgbouncer_pools") == lists["pools"] and value(s, "pgbouncer_used_servers") == lists["used_servers"]
    # the histograms: every server assignment is one queue-wait observation (0 when a server was free)
    b = stats["benchdb"]
    assert value(s, "pgbouncer_py_client_wait_duration_seconds_count", database="benchdb") == \
        b["server_assignment_count"]
    assert value(s, "pgbouncer_py_client_wait_duration_seconds_sum", database="benchdb") == \
        pytest.approx(float(b["wait_time"]) / 1e6, abs=1e-6 * float(b["server_assignment_count"]) + 1e-3)
    assert value(s, "pgbouncer_py_client_wait_duration_seconds_bucket", database="benchdb", le="+Inf") == \
        b["server_assignment_count"]
    assert value(s, "pgbouncer_py_client_login_duration_seconds_count", database="benchdb") == \
        b["client_login_count"] == value(s, "pgbouncer_py_client_logins_total", database="benchdb") >= 4


def test_login_failures_counted(pooler_factory):
    p = start(pooler_factory)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn("testdb", "md5user", "wrong"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn("no_such_db", "md5user"))
    with socket.create_connection((p.host, p.port)):
        pass                                          # a bare TCP probe is no login attempt
    with p.connect() as c:
        c.execute("select 1")
    key = ("pgbouncer_py_client_login_failures_total", frozenset({("database", "")}))
    s = wait_until(lambda: (x := scrape(p)) and key in x and x, message="the failure of no_such_db")
    assert value(s, "pgbouncer_py_client_login_failures_total", database="testdb") == 1
    assert value(s, "pgbouncer_py_client_login_failures_total", database="") == 1      # unknown names: no label
    assert value(s, "pgbouncer_py_client_login_duration_seconds_count", database="testdb") == 1


def test_health_and_ready_follow_pause_suspend_and_server_logins(pooler_factory, pg):
    dead = free_port()
    p = start(pooler_factory, {"http_ready_check_servers": 1},
              databases={"testdb": pg.server_connstr("testdb"), "deaddb": f"host=127.0.0.1 port={dead} dbname=x"})
    assert get_json(p, "/health") == (200, {"status": "ok", "pid": p.pid})
    assert get_json(p, "/ready") == (200, {"ready": True})
    p.admin("PAUSE")
    assert get_json(p, "/ready") == (503, {"ready": False, "reason": "paused"})
    assert get_json(p, "/health")[0] == 200
    p.admin("RESUME")
    p.admin("PAUSE testdb")                               # one database paused: the process still takes clients
    assert get_json(p, "/ready") == (200, {"ready": True})
    p.admin("RESUME testdb")
    adm = psycopg2.connect(p.dsn("pgbouncer", ADMIN_USER, unix=True))
    adm.autocommit = True
    adm.cursor().execute("SUSPEND")         # a console that leaves while suspended resumes: keep it open
    assert get_json(p, "/ready") == (503, {"ready": False, "reason": "suspended"})
    adm.cursor().execute("RESUME")
    adm.close()
    with pytest.raises(psycopg2.OperationalError):
        # its server connect fails: the client stays queued and gives up (libpq closes the socket)
        psycopg2.connect(p.dsn("deaddb"), connect_timeout=2)
    wait_until(lambda: get_json(p, "/ready")[0] == 503, timeout=5, message="not ready")
    assert get_json(p, "/ready") == (503, {"ready": False, "reason": "server login failing",
                                           "databases": ["deaddb"]})
    assert get_json(p, "/health")[0] == 200
    p.admin("SET http_ready_check_servers = 0")
    assert get_json(p, "/ready") == (200, {"ready": True})
    rows = dict((r[0], r[1]) for r in p.admin("SHOW CONFIG"))
    assert rows["http_ready_check_servers"] == "0" and rows["http_listen_addr"] == "127.0.0.1"


def test_sigterm_reports_not_ready_at_once(pooler_factory):
    """SIGTERM (wait for clients): /ready says 503 right away so a load balancer drains this process, /health
    stays 200 while connected clients are still served; the process exits when they are gone."""
    p = start(pooler_factory)
    c = p.connect(autocommit=True)
    c.execute("select 1")
    p.signal(signal.SIGTERM)
    t0 = time.monotonic()
    wait_until(lambda: get_json(p, "/ready")[0] == 503, timeout=5, interval=0.01, message="not ready")
    assert time.monotonic() - t0 < 1
    assert get_json(p, "/ready") == (503, {"ready": False, "reason": "shutting down"})
    assert get_json(p, "/health") == (200, {"status": "draining", "pid": p.pid})
    assert c.execute("select 5").fetchone() == (5,)       # the connected client is still served
    c.close()
    p.wait(10)


def raw(p, data: bytes, *, close_write: bool = False, timeout: float = 10) -> bytes:
    port = int(p.http.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def health_answer(p) -> bytes:
    try:
        return raw(p, b"GET /health HTTP/1.1\r\n\r\n")
    except ConnectionResetError:       # still over the limit: answered 503 and closed before our request came
        return b""


def test_bad_slow_and_many_http_clients(pooler_factory):
    p = start(pooler_factory)
    port = int(p.http.rsplit(":", 1)[1])
    slow = socket.create_connection(("127.0.0.1", port), timeout=15)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")          # never finishes its request
    t0 = time.monotonic()
    assert raw(p, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(p, b"GET /health SPDY/9\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(p, b"GET /health HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    assert raw(p, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(p, b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert raw(p, b"GET /health HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    assert raw(p, b"GET /health HTTP/1.1\r\n", close_write=True).startswith(b"HTTP/1.1 400 ")
    head = raw(p, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")             # HEAD: no body
    assert raw(p, b"GET /ready?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b'{"ready":true}\n')
    # many idle connections: the listener stays bounded and the pooler keeps serving SQL
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(63)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            assert extra.recv(4096).startswith(b"HTTP/1.1 503 ")      # over the limit of 64: 503 and closed
        with p.connect() as c:
            assert c.execute("select 9").fetchone() == (9,)
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: health_answer(p).startswith(b"HTTP/1.1 200 "), message="room again")
    answer = slow.recv(4096)                                    # the slow client was timed out
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 4 <= time.monotonic() - t0 < 9
    slow.close()


def test_off_by_default_nothing_listens_and_show_config_is_unchanged(pooler_factory, pg):
    p = pooler_factory.start()
    tcp = _socket_inodes_of(p.pid) & _listening_inodes(p.port)
    assert len(tcp) == 1                                 # the one TCP listener of listen_addr
    assert "http" not in p.log()
    keys = [r[0] for r in p.admin("SHOW CONFIG")]
    assert not [k for k in keys if k.startswith("http_")]
    assert keys == sorted(keys)
    # and the same file with the listener on lists the extension rows in key order
    q = start(pooler_factory)
    keys_on = [r[0] for r in q.admin("SHOW CONFIG")]
    assert [k for k in keys_on if k.startswith("http_")] == ["http_listen_addr", "http_listen_port",
                                                              "http_ready_check_servers"]
    assert keys_on == sorted(keys_on) and set(keys_on) - set(keys) == {"http_listen_addr", "http_listen_port",
                                                                      "http_ready_check_servers"}


def test_real_pgbouncer_refuses_the_extension_settings(pooler_factory):
    """The settings are pgbouncer-py's only: PgBouncer 1.24.1 refuses a file that sets one (so a file without
    them is the only kind both read)."""
    p = pooler_factory.start(binary="c124", ini_settings={"http_listen_addr": "127.0.0.1"}, wait=False)
    p.wait(10)
    assert "unknown parameter: pgbouncer/http_listen_addr" in p.log() + p.stderr()


def test_metrics_without_prometheus_client(pooler_factory, tmp_path, monkeypatch):
    """prometheus_client is optional: without it the log says so, /metrics answers 503, /health and /ready work."""
    stub = tmp_path / "stub" / "prometheus_client"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(stub.parent), os.environ.get("PYTHONPATH")])))
    p = start(pooler_factory)
    p.wait_for_log(r"WARNING http_listen_addr is set but the python module prometheus_client is not installed "
                   r"\(Debian: python3-prometheus-client\): /metrics answers 503, /health and /ready work")
    assert get(p, "/metrics")[0] == 503
    assert get_json(p, "/ready") == (200, {"ready": True})


def test_http_listener_backlog_is_listen_backlog(pooler_factory):
    """The HTTP listener listens with listen_backlog, as the pooler's port does (the event loop would otherwise
    listen() again with its default of 100)."""
    port = free_port()
    start(pooler_factory, {"listen_backlog": "77", "http_listen_port": port})
    assert listen_backlog(port) == 77


def test_port_taken_is_retried(pooler_factory):
    """The HTTP port taken (say, by the process an online restart replaces): an error, then a retry that succeeds
    once the port is free; the pooler serves SQL meanwhile."""
    port = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    p = pooler_factory.start(ini_settings={"http_listen_addr": "127.0.0.1", "http_listen_port": port})
    p.http = f"http://127.0.0.1:{port}"
    p.wait_for_log(rf"ERROR HTTP listener \(http_listen_addr\): bind\(\): 127.0.0.1:{port}: Address already in use; "
                   r"retrying every 5s")
    with p.connect() as c:
        assert c.execute("select 1").fetchone() == (1,)
    blocker.close()
    p.wait_for_log(rf"listening on http://127.0.0.1:{port} ", timeout=10)
    assert get_json(p, "/health")[0] == 200


def test_scrapes_do_not_disturb_clients(pooler_factory, pg):
    """Scraping in a loop while pgbench runs: no error on either side."""
    pg.init_pgbench()
    p = start(pooler_factory, {"pool_mode": "transaction"})
    bench = _pgbench(p, 3)
    errors = []

    def loop():
        while bench.poll() is None:
            try:
                scrape(p)
            except Exception as e:          # noqa: BLE001 - any failure is reported below
                errors.append(e)

    t = threading.Thread(target=loop)
    t.start()
    out, _ = bench.communicate(timeout=60)
    t.join(15)
    assert bench.returncode == 0, out
    assert errors == []


def test_online_restart_hands_the_http_port_over(pooler_factory):
    """-R: the old process closes its HTTP listener when it hands its sockets over; the new one binds the port
    (no 'Address already in use' retry) and serves /ready and /metrics with the adopted client counted."""
    from test_takeover import restart

    p = start(pooler_factory, {"pool_mode": "session"})
    c = p.connect(autocommit=True)
    c.execute("select 1")
    mark = p.log_mark()
    new = restart(pooler_factory, p)
    new.http = p.http
    new.wait_for_log(r"listening on http://127.0.0.1:\d+ ", since=mark)
    assert "Address already in use" not in new.log()[mark:]
    assert get_json(new, "/ready") == (200, {"ready": True})
    assert get_json(new, "/health")[1]["pid"] == new.pid
    s = scrape(new)
    assert value(s, "pgbouncer_pools_client_active_connections", database="testdb", user="md5user") == 1
    assert c.execute("select 2").fetchone() == (2,)
