"""Monitoring consumers against the console while pgbench runs: Debian's prometheus-pgbouncer-exporter (compared
with Debian's PgBouncer) and a psycopg2 check in the style of Datadog's pgbouncer integration."""

import contextlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime
from decimal import Decimal

import psycopg2
import psycopg2.extras
import pytest
from pgutil import ADMIN_USER, find_pg_bindir, free_port, wait_until

EXPORTER = shutil.which("prometheus-pgbouncer-exporter") or "/usr/bin/prometheus-pgbouncer-exporter"


def _pgbench(p, seconds: int) -> subprocess.Popen:
    cmd = [str(find_pg_bindir() / "pgbench"), "-n", "-c", "4", "-T", str(seconds), "-S", "-h", p.host,
           "-p", str(p.port), "-U", "md5user", "benchdb"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PGPASSWORD": "md5pass", "PATH": "/usr/bin:/bin"})


def _scrape(p, tmp_path) -> tuple[int | None, str]:
    """Run the exporter against pooler p; (HTTP status of /metrics or None if it died, body or its output)."""
    port = free_port()
    out = tmp_path / f"exporter-{p.name}.log"
    with open(out, "w") as f:
        proc = subprocess.Popen([EXPORTER, "--host", "127.0.0.1",
                                 "--port", str(port), "--pgbouncer-host", p.unix_dir, "--pgbouncer-port",
                                 str(p.port), "--pgbouncer-user", ADMIN_USER],
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        def attempt():
            if proc.poll() is not None:
                return (None, out.read_text())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return (r.status, r.read().decode())
            except urllib.error.HTTPError as e:
                return (e.code, out.read_text())
            except OSError:
                return None
        return wait_until(attempt, timeout=20, message="the exporter to answer or exit")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.exists(EXPORTER),
                    reason="prometheus-pgbouncer-exporter is not installed (apt-get install prometheus-pgbouncer-exporter)")
def test_debian_exporter_behaves_as_with_debian_pgbouncer(pooler_factory, pg, tmp_path):
    """Debian 12's exporter (1.7) reads SHOW STATS column `total_requests`, which PgBouncer dropped in 1.8, and
    SHOW DATABASES `reserve_pool` (`reserve_pool_size` since 1.23): whatever it makes of the real PgBouncer it
    must make of ours, and the collectors whose columns exist must produce the same metric names."""
    pg.init_pgbench()
    results = {}
    for binary in ("c", "py"):
        p = pooler_factory.start(binary=binary, ini_settings={"pool_mode": "transaction"})
        bench = _pgbench(p, 6)
        time.sleep(0.5)
        results[binary] = _scrape(p, tmp_path)
        out, _ = bench.communicate(timeout=60)
        assert bench.returncode == 0, out
    c_status, c_body = results["c"]
    py_status, py_body = results["py"]
    assert py_status == c_status, (c_body[-2000:], py_body[-2000:])
    if c_status == 200:
        names = lambda body: set(re.findall(r"^(pgbouncer_\w+)", body, re.M))  # noqa: E731
        assert names(py_body) == names(c_body)
    else:
        # both fail the same way, on the 1.8+ SHOW STATS layout
        assert "total_requests" in c_body and "total_requests" in py_body


def _datadog_style_check(dsn: str) -> dict:
    """What Datadog's pgbouncer check does: psycopg2, autocommit, DictCursor, SHOW STATS/POOLS/DATABASES/CONFIG/
    CLIENTS/SERVERS/VERSION, by column name, skipping the admin database, parsing times by strptime."""
    conn = psycopg2.connect(dsn)
    conn.set_session(autocommit=True)
    metrics: dict = {}
    try:
        cur = conn.cursor(cursor_factory=psycopg2.extras.DictCursor)
        for cmd, cols in (("SHOW STATS", ("total_xact_count", "total_query_count", "total_received", "total_sent",
                                          "total_query_time", "total_xact_time", "total_wait_time",
                                          "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
                                          "avg_query_time", "avg_xact_time", "avg_wait_time",
                                          "total_client_parse_count", "total_server_parse_count",
                                          "total_bind_count")),
                          ("SHOW POOLS", ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested",
                                          "sv_login", "maxwait", "maxwait_us")),
                          ("SHOW DATABASES", ("pool_size", "max_connections", "current_connections"))):
            cur.execute(cmd)
            for row in cur.fetchall():
                db = row["database"] if "database" in row else row["name"]
                if db == "pgbouncer":
                    continue
                for c in cols:
                    if c in row:
                        metrics[(cmd, db, c)] = float(row[c])
        cur.execute("SHOW CONFIG")
        config = {r["key"]: r["value"] for r in cur.fetchall()}
        metrics["max_client_conn"] = float(config["max_client_conn"])
        for cmd in ("SHOW CLIENTS", "SHOW SERVERS"):
            cur.execute(cmd)
            for row in cur.fetchall():
                for c in ("connect_time", "request_time"):
                    datetime.strptime(re.findall(r"^[^ ]+ [^ ]+", row[c])[0], "%Y-%m-%d %H:%M:%S")
                metrics[(cmd, row["database"], row["state"])] = metrics.get((cmd, row["database"], row["state"]), 0) + 1
        cur.execute("SHOW VERSION;")
        data = conn.notices[0] if conn.notices else cur.fetchone()[0]
        metrics["version"] = re.findall(r"\d+\.\d+\.\d+", data)[0]
    finally:
        conn.close()
    return metrics


def test_datadog_style_check_during_pgbench(pooler_factory, pg):
    pg.init_pgbench()
    p = pooler_factory.start(ini_settings={"pool_mode": "transaction"})
    bench = _pgbench(p, 6)
    try:
        m = wait_until(lambda: (lambda x: x if x.get(("SHOW STATS", "benchdb", "total_xact_count"), 0) > 0 else None)(
            _datadog_style_check(p.dsn("pgbouncer", ADMIN_USER))), timeout=20, message="benchdb traffic")
    finally:
        out, _ = bench.communicate(timeout=60)
    assert bench.returncode == 0, out
    assert m["version"] == "1.25.2"
    assert m["max_client_conn"] == 100.0
    assert m[("SHOW STATS", "benchdb", "total_query_count")] > 0
    assert m[("SHOW STATS", "benchdb", "total_received")] > 0
    assert ("SHOW POOLS", "benchdb", "sv_active") in m
    assert m[("SHOW DATABASES", "benchdb", "pool_size")] == 20.0
    assert all(not isinstance(v, Decimal) for v in m.values())


CONSOLE_JAVA = r"""
import java.sql.*;
import java.util.*;
public class ConsoleCheck {
  public static void main(String[] a) throws Exception {
    Properties p = new Properties();
    p.setProperty("user", "pgbouncer"); p.setProperty("password", a[1]);
    try (Connection conn = DriverManager.getConnection(a[0], p)) {
      for (String cmd : new String[] {"SHOW POOLS", "SHOW STATS", "SHOW DATABASES", "SHOW VERSION"}) {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(cmd)) {
          ResultSetMetaData md = rs.getMetaData();
          int rows = 0;
          while (rs.next()) rows++;
          System.out.println(cmd + " " + md.getColumnCount() + " " + md.getColumnName(1) + " " + rows);
        }
      }
      try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SHOW STATS")) {
        rs.next();
        long x = rs.getLong("total_xact_count");          // numeric columns read as numbers
        System.out.println("xact " + x);
      }
    }
  }
}
"""


def test_jdbc_reads_the_console(pooler_factory, tmp_path):
    """The Debian JDBC driver (extended query protocol, like DBeaver or a Java monitoring agent) reads SHOW
    commands from the console with their columns and numeric types."""
    from pgutil import ADMIN_PASSWORD

    jar = "/usr/share/java/postgresql.jar"
    if shutil.which("javac") is None:
        pytest.skip("javac is not installed (apt-get install default-jdk-headless)")
    assert os.path.exists(jar), "libpostgresql-jdbc-java is not installed"
    p = pooler_factory.start({"ignore_startup_parameters": "extra_float_digits"})
    with p.connect(autocommit=True) as c:
        c.execute("select 1")
    (tmp_path / "ConsoleCheck.java").write_text(CONSOLE_JAVA)
    subprocess.run(["javac", "-cp", jar, "ConsoleCheck.java"], cwd=tmp_path, check=True, timeout=180,
                   capture_output=True)
    proc = subprocess.run(["java", "-cp", f"{jar}:.", "ConsoleCheck",
                           f"jdbc:postgresql://127.0.0.1:{p.port}/pgbouncer", ADMIN_PASSWORD],
                          cwd=tmp_path, timeout=180, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "SHOW POOLS 17 database" in lines[0]
    assert lines[1].startswith("SHOW STATS 25 database")
    assert lines[2].startswith("SHOW DATABASES ") and lines[3] == "SHOW VERSION 1 version 1"
    assert lines[4].startswith("xact ") and int(lines[4].split()[1]) >= 0
