"""Prepared statements in transaction mode (max_prepared_statements): real drivers with a pool smaller
than the client count, eviction, and raw-protocol pipelines (errors, Flush, delayed Sync, Close, names)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import struct
import subprocess
import threading

import psycopg
import pytest
from pgutil import PASSWORDS, clean_env, wait_until

POOL = {"pool_mode": "transaction", "default_pool_size": 2, "max_client_conn": 50}


def _start(pooler_factory, **extra):
    return pooler_factory.start({**POOL, **extra})


def _client_counts(pooler, db="testdb"):
    return [int(c["prepared_statements"]) for c in pooler.admin_dicts("SHOW CLIENTS") if c["database"] == db]


def _stats(pooler, db="testdb"):
    return {r["database"]: r for r in pooler.admin_dicts("SHOW STATS")}[db]


# --- a minimal protocol-3 client ----------------------------------------------------------------------

def _msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def parse(name: str, sql: str, types=()) -> bytes:
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", len(types))
                + b"".join(struct.pack("!I", t) for t in types))


def bind(stmt: str, *params, portal: str = "") -> bytes:
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!HH", 0, len(params))
    for p in params:
        v = str(p).encode()
        body += struct.pack("!I", len(v)) + v
    return _msg(b"B", body + struct.pack("!H", 0))


def describe(kind: str, name: str) -> bytes:
    return _msg(b"D", kind.encode() + name.encode() + b"\0")


def close(kind: str, name: str) -> bytes:
    return _msg(b"C", kind.encode() + name.encode() + b"\0")


def execute(portal: str = "", rows: int = 0) -> bytes:
    return _msg(b"E", portal.encode() + b"\0" + struct.pack("!I", rows))


SYNC, FLUSH = _msg(b"S"), _msg(b"H")


def query(sql: str) -> bytes:
    return _msg(b"Q", sql.encode() + b"\0")


class Raw:
    """A blocking protocol-3 connection (md5 login) that returns responses as (type, body) lists."""

    def __init__(self, port: int, user: str = "md5user", db: str = "testdb"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buf = b""
        params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        self.sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        while True:
            t, body = self.recv1()
            if t == "R" and struct.unpack("!I", body[:4])[0] == 5:
                inner = hashlib.md5((PASSWORDS[user] + user).encode()).hexdigest()
                pw = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self.sock.sendall(_msg(b"p", pw.encode() + b"\0"))
            elif t == "E":
                raise AssertionError(f"login failed: {body!r}")
            elif t == "K":
                self.backend_key = body          # pid + secret, for CancelRequest
            elif t == "Z":
                return

    def send(self, *msgs: bytes) -> None:
        self.sock.sendall(b"".join(msgs))

    def recv1(self):
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!I", self.buf[1:5])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        n = 1 + struct.unpack("!I", self.buf[1:5])[0]
        t, body, self.buf = chr(self.buf[0]), self.buf[5:n], self.buf[n:]
        return t, body

    def until(self, stop: str = "Z", count: int = 1) -> list:
        out = []
        while count:
            m = self.recv1()
            out.append(m)
            if m[0] == stop:
                count -= 1
        return out

    def closed(self) -> bool:
        try:
            self.until("never")
        except (EOFError, ConnectionError):
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def types(msgs) -> str:
    return "".join(t for t, _ in msgs if t not in "NS")


def rows(msgs) -> list:
    out = []
    for t, body in msgs:
        if t == "D":
            n = struct.unpack("!H", body[:2])[0]
            pos, vals = 2, []
            for _ in range(n):
                ln = struct.unpack("!i", body[pos:pos + 4])[0]
                pos += 4
                vals.append(None if ln < 0 else body[pos:pos + ln].decode())
                pos += max(ln, 0)
            out.append(tuple(vals))
    return out


def error_text(msgs) -> str:
    for t, body in msgs:
        if t == "E":
            return body.decode(errors="replace")
    return ""


# --- real drivers -------------------------------------------------------------------------------------

def test_asyncpg_statement_cache_across_servers(pooler_factory):
    pooler = _start(pooler_factory)

    async def worker(i):
        conn = await pooler.aconnect()
        try:
            for j in range(30):
                v = await conn.fetchval("select $1::int + $2::int", i, j)
                assert v == i + j
                r = await conn.fetchrow("select $1::text || 'x' as t, $2::int * 2 as d", str(j), i)
                assert (r["t"], r["d"]) == (f"{j}x", 2 * i)
                async with conn.transaction():
                    assert await conn.fetchval("select count(*) from generate_series(1, $1::int)", j + 1) == j + 1
        finally:
            await conn.close()

    async def main():
        await asyncio.gather(*(worker(i) for i in range(6)))

    asyncio.run(main())
    st = _stats(pooler)
    assert int(st["total_bind_count"]) >= 6 * 30 * 3
    # three distinct statements (asyncpg also prepares a few of its own): the two servers parse each once,
    # plus re-preparations that the drivers' Parse of a statement already on a server avoided
    assert int(st["total_server_parse_count"]) < int(st["total_client_parse_count"]) + 1
    assert int(st["total_server_parse_count"]) <= 2 * 10


def test_psycopg3_prepare_threshold_zero(pooler_factory):
    pooler = _start(pooler_factory)
    errors = []

    def worker(i):
        try:
            with psycopg.connect(pooler.dsn(), prepare_threshold=0, autocommit=True) as conn:
                for j in range(25):
                    assert conn.execute("select %s::int + 1", (j,)).fetchone() == (j + 1,)
                    assert conn.execute("select %s::text, %s::int", (str(i), j)).fetchone() == (str(i), j)
                    with conn.transaction():
                        conn.execute("select pg_sleep(0)")
        except Exception as e:          # reported below, from the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    st = _stats(pooler)
    assert int(st["total_bind_count"]) >= 5 * 25 * 3
    assert int(st["total_server_parse_count"]) <= 2 * 3 + 2
    clients = pooler.admin_dicts("SHOW SERVERS")
    assert all(int(s["prepared_statements"]) <= 3 for s in clients)


def test_pgbench_prepared(pooler_factory, pg):
    # one thread per client: pgbench prepares synchronously, so with -j 1 a client queued for a server
    # would block the clients that hold the servers in their transactions
    pg.init_pgbench()
    pooler = _start(pooler_factory)
    proc = subprocess.run([str(pg.bindir / "pgbench"), "-n", "-M", "prepared", "-c", "5", "-j", "5", "-t", "60",
                           "-h", "127.0.0.1", "-p", str(pooler.port), "-U", "md5user", "benchdb"],
                          capture_output=True, text=True, timeout=120,
                          env=clean_env({"PGPASSWORD": PASSWORDS["md5user"]}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "number of failed transactions: 0" in proc.stdout or "failed" not in proc.stdout
    assert "number of transactions actually processed: 300/300" in proc.stdout
    st = _stats(pooler, "benchdb")
    assert int(st["total_client_parse_count"]) >= 5 * 7 - 5
    assert int(st["total_server_parse_count"]) <= 2 * 7
    assert int(st["total_bind_count"]) >= 300 * 7 - 300


JAVA_SRC = r"""
import java.sql.*;
import java.util.*;
public class PreparedCheck {
  public static void main(String[] a) throws Exception {
    String url = a[0];
    Properties p = new Properties();
    p.setProperty("user", "md5user"); p.setProperty("password", "md5pass");
    p.setProperty("prepareThreshold", "1");
    List<Thread> ts = new ArrayList<>();
    final List<Throwable> errs = Collections.synchronizedList(new ArrayList<>());
    for (int c = 0; c < 4; c++) {
      final int cc = c;
      Thread t = new Thread(() -> {
        try (Connection conn = DriverManager.getConnection(url, p)) {
          PreparedStatement s1 = conn.prepareStatement("select ?::int + ?::int");
          PreparedStatement s2 = conn.prepareStatement("select ?::text || 'j'");
          for (int i = 0; i < 40; i++) {
            s1.setInt(1, cc); s1.setInt(2, i);
            try (ResultSet rs = s1.executeQuery()) { rs.next(); if (rs.getInt(1) != cc + i) throw new RuntimeException("bad sum"); }
            s2.setString(1, "v" + i);
            try (ResultSet rs = s2.executeQuery()) { rs.next(); if (!rs.getString(1).equals("v" + i + "j")) throw new RuntimeException("bad text"); }
          }
        } catch (Throwable e) { errs.add(e); }
      });
      ts.add(t); t.start();
    }
    for (Thread t : ts) t.join();
    if (!errs.isEmpty()) { errs.get(0).printStackTrace(); System.exit(1); }
    System.out.println("OK");
  }
}
"""
JDBC_JAR = "/usr/share/java/postgresql.jar"


def test_jdbc_prepare_threshold_1(pooler_factory, tmp_path):
    import os
    if shutil.which("javac") is None:
        pytest.skip("javac is not installed (apt-get install default-jdk-headless)")
    assert os.path.exists(JDBC_JAR), "libpostgresql-jdbc-java is not installed"
    pooler = _start(pooler_factory, ignore_startup_parameters="extra_float_digits")
    (tmp_path / "PreparedCheck.java").write_text(JAVA_SRC)
    subprocess.run(["javac", "-cp", JDBC_JAR, "PreparedCheck.java"], cwd=tmp_path, check=True, timeout=180,
                   capture_output=True)
    url = f"jdbc:postgresql://127.0.0.1:{pooler.port}/testdb"
    proc = subprocess.run(["java", "-cp", f"{JDBC_JAR}:.", "PreparedCheck", url], cwd=tmp_path, timeout=180,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    st = _stats(pooler)
    assert int(st["total_bind_count"]) >= 4 * 40 * 2
    assert int(st["total_server_parse_count"]) <= 2 * 2 + 4


# --- eviction -----------------------------------------------------------------------------------------

def test_eviction_with_max_prepared_statements_2(pooler_factory):
    pooler = _start(pooler_factory, max_prepared_statements=2, default_pool_size=1)
    conn = Raw(pooler.port)
    for rnd in range(3):
        for k in range(5):
            if rnd == 0:
                conn.send(parse(f"s{k}", f"select {k} + $1::int"))
            conn.send(bind(f"s{k}", 10), execute(), SYNC)
            got = conn.until()
            assert rows(got) == [(str(k + 10),)], got
            assert "E" not in types(got)
    conn.send(query("select count(*) from pg_prepared_statements"))
    assert rows(conn.until()) == [("2",)]
    servers = pooler.admin_dicts("SHOW SERVERS")
    assert [int(s["prepared_statements"]) for s in servers] == [2]
    assert _client_counts(pooler) == [5]
    conn.close()


# --- pipelines ----------------------------------------------------------------------------------------

def test_pipeline_many_before_one_sync_and_reuse(pooler_factory):
    pooler = _start(pooler_factory, default_pool_size=1)
    a, b = Raw(pooler.port), Raw(pooler.port)
    a.send(parse("q1", "select $1::int * 3"), parse("q2", "select $1::text"), bind("q1", 2), execute(),
           bind("q2", "x"), execute(), bind("q1", 5), execute(), SYNC)
    got = a.until()
    assert types(got) == "112DC2DC2DCZ", got
    assert rows(got) == [("6",), ("x",), ("15",)]
    # the same statements prepared by another client on the same (single) server: no server Parse
    before = int(_stats(pooler)["total_server_parse_count"])
    b.send(parse("other", "select $1::int * 3"), bind("other", 7), execute(), SYNC)
    got = b.until()
    assert types(got) == "12DCZ" and rows(got) == [("21",)]
    assert int(_stats(pooler)["total_server_parse_count"]) == before
    a.close()
    b.close()


def test_error_in_the_middle_of_a_pipeline(pooler_factory):
    pooler = _start(pooler_factory, default_pool_size=1)
    c = Raw(pooler.port)
    c.send(parse("ok", "select $1::int"), bind("ok", 1), execute(),
           bind("ok", "notanint"), execute(),
           parse("later", "select 42"), bind("later"), execute(), SYNC)
    got = c.until()
    assert types(got) == "12DCEZ", got
    # the Parse skipped by the error was not kept: the name is free and the statement works
    c.send(parse("later", "select 43"), bind("later"), execute(), SYNC)
    got = c.until()
    assert types(got) == "12DCZ" and rows(got) == [("43",)], got
    c.send(bind("ok", 9), execute(), SYNC)
    assert rows(c.until()) == [("9",)]
    # a Parse that fails on the server leaves no trace either
    c.send(parse("bad", "select from nosuchtable"), bind("bad"), execute(), SYNC)
    got = c.until()
    assert types(got) == "EZ" and "nosuchtable" in error_text(got)
    c.send(parse("bad", "select 1"), bind("bad"), execute(), SYNC)
    assert types(c.until()) == "12DCZ"
    c.close()


def test_flush_without_sync_and_delayed_sync(pooler_factory):
    pooler = _start(pooler_factory, default_pool_size=1)
    warm = Raw(pooler.port)
    warm.send(parse("w", "select $1::int + 100"), bind("w", 1), execute(), SYNC)
    assert rows(warm.until()) == [("101",)]
    c = Raw(pooler.port)
    # the statement is already on the server: ParseComplete is synthesised, in order, before BindComplete
    c.send(parse("x", "select $1::int + 100"), FLUSH)
    assert c.until("1") == [("1", b"")]
    c.send(bind("x", 5), FLUSH)
    assert types(c.until("2")) == "2"
    c.send(execute(), FLUSH)
    got = c.until("C")
    assert rows(got) == [("105",)]
    # other clients wait (pool of one) until the delayed Sync
    c.send(SYNC)
    assert types(c.until()) == "Z"
    warm.send(bind("w", 2), execute(), SYNC)
    assert rows(warm.until()) == [("102",)]
    c.close()
    warm.close()


def test_close_describe_and_name_errors(pooler_factory):
    pooler = _start(pooler_factory, default_pool_size=1)
    c = Raw(pooler.port)
    c.send(parse("n", "select $1::int as v"), describe("S", "n"), SYNC)
    got = c.until()
    assert types(got) == "1tTZ", got
    c.send(close("S", "n"), parse("n", "select $1::text as w"), bind("n", "z"), describe("P", ""), execute(), SYNC)
    got = c.until()
    assert types(got) == "312TDCZ" and rows(got) == [("z",)], got
    mark = pooler.log_mark()
    c.send(parse("n", "select 1"), SYNC)
    got = c.until("E")
    assert "prepared statement name is already in use" in error_text(got)
    assert c.closed()
    pooler.wait_for_log(r"prepared statement 'n' was already prepared", since=mark)
    d = Raw(pooler.port)
    d.send(bind("nope"), execute(), SYNC)
    assert "prepared statement did not exist" in error_text(d.until("E"))
    assert d.closed()


def test_deallocate_all_clears_the_client_map(pooler_factory):
    pooler = _start(pooler_factory, default_pool_size=1)
    c = Raw(pooler.port)
    c.send(parse("d", "select 7"), bind("d"), execute(), SYNC)
    assert rows(c.until()) == [("7",)]
    c.send(query("DEALLOCATE ALL"))
    assert types(c.until()) == "CZ"
    wait_until(lambda: _client_counts(pooler) == [0])
    assert [int(s["prepared_statements"]) for s in pooler.admin_dicts("SHOW SERVERS")] == [0]
    c.send(parse("d", "select 8"), bind("d"), execute(), SYNC)
    assert rows(c.until()) == [("8",)]
    c.close()


def test_pause_before_the_last_sync(pooler_factory):
    pooler = _start(pooler_factory, default_pool_size=1)
    c = Raw(pooler.port)
    c.send(parse("p", "select $1::int - 1"), bind("p", 3), execute(), FLUSH)
    assert rows(c.until("C")) == [("2",)]
    done = threading.Event()

    def pause():
        pooler.admin("PAUSE")
        done.set()

    t = threading.Thread(target=pause)
    t.start()
    assert not done.wait(0.5)           # the server is still linked: PAUSE waits for the Sync
    c.send(bind("p", 10), execute(), SYNC)
    got = c.until()
    assert rows(got) == [("9",)] and types(got).endswith("Z")
    assert done.wait(15)
    t.join()
    pooler.admin("RESUME")
    c.send(bind("p", 1), execute(), SYNC)
    assert rows(c.until()) == [("0",)]
    c.close()


def test_large_parse_and_bind_beyond_pkt_buf(pooler_factory):
    pooler = _start(pooler_factory, default_pool_size=1, pkt_buf=4096)
    c = Raw(pooler.port)
    big = "x" * 50000
    sql = f"select length($1::text) + length('{big}')"
    c.send(parse("big", sql), bind("big", "y" * 70000), execute(), SYNC)
    assert rows(c.until()) == [(str(120000),)]
    other = Raw(pooler.port)
    other.send(parse("big2", sql), bind("big2", "z"), execute(), SYNC)
    assert rows(other.until()) == [(str(50001),)]
    c.close()
    other.close()


def test_bind_of_many_megabytes_is_gathered_once_and_counted_once(pooler_factory):
    """A tracked Bind arrives in hundreds of reads: it is gathered in one buffer (not re-copied per read) and
    SHOW STATS counts its bytes once."""
    pooler = _start(pooler_factory, default_pool_size=1)
    c = Raw(pooler.port)
    size = 16 * 1024 * 1024
    c.send(parse("huge", "select length($1::text)"), bind("huge", "y" * size), execute(), SYNC)
    assert rows(c.until()) == [(str(size),)]
    received = int(_stats(pooler)["total_received"])
    assert size < received < size + 4096
    c.close()
