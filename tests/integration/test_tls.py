"""TLS on both sides against a PostgreSQL with ssl=on and certificates made by the tests: client sslmode matrix,
server sslmode matrix, direct TLS, SSLRequest injection, cert auth, reload of certificates."""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct

import psycopg
import pytest
from pgutil import PASSWORDS, PgCluster, running, wait_until
from psycopg.types.string import TextLoader
from tlsutil import TlsFiles

MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
CLIENT_SSLMODES = ("disable", "require", "verify-ca", "verify-full")


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> TlsFiles:
    d = tmp_path_factory.mktemp("tls")
    return TlsFiles(d)


@pytest.fixture(scope="session")
def pg_ssl(tmp_path_factory, certs):
    """PostgreSQL with ssl=on on 127.0.0.1 and 127.0.0.2. md5user must use TLS (hostssl), scramuser may come in
    either way, postgres logs in with a client certificate (CN=postgres)."""
    hba = ("local all all trust\n"
           "hostssl all postgres 127.0.0.0/8 cert\n"
           "hostssl all all 127.0.0.0/8 md5\n"
           "hostnossl all scramuser 127.0.0.0/8 md5\n")
    cluster = PgCluster(tmp_path_factory.mktemp("pgssl"), hba=hba, extra_conf={
        "listen_addresses": "'127.0.0.1,127.0.0.2'", "ssl": "on", "ssl_cert_file": f"'{certs.server}'",
        "ssl_key_file": f"'{certs.server_key}'", "ssl_ca_file": f"'{certs.ca}'"})
    with running(cluster):
        yield cluster


@pytest.fixture
def ssl_factory(factory_for, pg_ssl):
    return factory_for(pg_ssl)


def client_tls_settings(certs: TlsFiles, mode: str) -> dict:
    return {"client_tls_sslmode": mode, "client_tls_key_file": certs.server_key,
            "client_tls_cert_file": certs.server, "client_tls_ca_file": certs.ca}


def tls_kw(certs: TlsFiles, sslmode: str, cert: str | None) -> dict:
    """libpq options for a client: sslmode, our CA, and a client certificate for `cert` (a user) or none."""
    kw = {"sslmode": sslmode, "sslrootcert": certs.ca}
    if cert is None:
        kw.update(sslcert="/nonexistent/none.crt", sslkey="/nonexistent/none.key")
    else:
        kw["sslcert"], kw["sslkey"] = certs.client_cert(cert)
    return kw


def outcome(pooler, certs, sslmode: str, with_cert: bool, user: str = "md5user") -> str:
    """'tls' / 'plain' when the login works (what the pooler says about this client), else an error class."""
    try:
        conn = psycopg.connect(pooler.dsn("testdb", user, **tls_kw(certs, sslmode, user if with_cert else None)))
    except psycopg.OperationalError as e:
        text = str(e)
        for needle, kind in (("SSL required", "ssl-required"), ("does not support SSL", "no-ssl")):
            if needle in text:
                return kind
        return "rejected"     # TLS 1.3 reports a missing client certificate after the handshake, in various ways
    with conn:
        info = conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)
    return "tls" if info else "plain"


def expected_client(mode: str, sslmode: str, with_cert: bool) -> str:
    if sslmode == "disable":
        return "ssl-required" if mode in ("require", "verify-ca", "verify-full") else "plain"
    if mode == "disable":
        return "no-ssl"
    if mode in ("verify-ca", "verify-full") and not with_cert:
        return "rejected"
    return "tls"


# -- client side: every pooler mode x every libpq sslmode x with/without a client certificate ----------------
@pytest.mark.parametrize("mode", MODES)
def test_client_mode_matrix(pooler_factory, certs, mode):
    pooler = pooler_factory.start({**client_tls_settings(certs, mode), "server_tls_sslmode": "disable"})
    got, want = {}, {}
    for sslmode in CLIENT_SSLMODES:
        for with_cert in (False, True):
            got[sslmode, with_cert] = outcome(pooler, certs, sslmode, with_cert)
            want[sslmode, with_cert] = expected_client(mode, sslmode, with_cert)
    assert got == want
    if mode != "disable":
        pooler.wait_for_log(r"login attempt: db=testdb user=md5user tls=TLSv1\.3/TLS_AES_256_GCM_SHA384 ")
    assert "unexpected eof" not in pooler.log().lower().replace("client unexpected eof", "")
    assert "Traceback" not in pooler.stderr() and "Fatal error" not in pooler.stderr()


@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_client_mode_matrix_debian_pgbouncer_agrees(pooler_factory, certs, mode):
    """Debian's PgBouncer 1.18 gives the same answers for the strict modes."""
    pooler = pooler_factory.start({**client_tls_settings(certs, mode), "server_tls_sslmode": "disable"},
                                  binary="c")
    for sslmode in CLIENT_SSLMODES:
        for with_cert in (False, True):
            assert outcome(pooler, certs, sslmode, with_cert) == expected_client(mode, sslmode, with_cert), \
                (sslmode, with_cert)


def test_unix_socket_clients_need_no_tls(pooler_factory, certs):
    pooler = pooler_factory.start({**client_tls_settings(certs, "verify-full"), "server_tls_sslmode": "disable"})
    with pooler.connect(unix=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_show_clients_tls_column(pooler_factory, certs):
    pooler = pooler_factory.start({**client_tls_settings(certs, "require"), "server_tls_sslmode": "disable"})
    with psycopg.connect(pooler.dsn(**tls_kw(certs, "require", None))) as conn:
        conn.execute("select 1")
        rows = _show(pooler, "clients")
    tls_values = {r["user"]: r["tls"] for r in rows}
    assert tls_values["md5user"] == "TLSv1.3/TLS_AES_256_GCM_SHA384"
    assert tls_values["pgbouncer"] == ""


# -- raw protocol: direct TLS, SSLRequest injection -------------------------------------------------------------
def _startup(user: str, db: str) -> bytes:
    body = struct.pack("!I", 196608) + f"user\0{user}\0database\0{db}\0\0".encode()
    return struct.pack("!I", len(body) + 4) + body


def _read_msg(sock) -> tuple[bytes, bytes]:
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    n = struct.unpack("!I", head[1:])[0] - 4
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return head[:1], body


def _md5_login(sock, user: str = "md5user") -> bytes:
    """Complete an md5 login on an open (TLS) socket; returns the type of the first message after auth."""
    sock.sendall(_startup(user, "testdb"))
    t, body = _read_msg(sock)
    assert t == b"R" and struct.unpack("!I", body[:4])[0] == 5, (t, body)
    inner = hashlib.md5((PASSWORDS[user] + user).encode()).hexdigest()
    pw = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
    sock.sendall(b"p" + struct.pack("!I", len(pw) + 5) + pw.encode() + b"\0")
    t, body = _read_msg(sock)
    assert (t, body) == (b"R", b"\0\0\0\0")
    while t != b"Z":
        t, body = _read_msg(sock)
    return t


def _client_ctx(certs, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.mark.parametrize(("alpn", "works"), [(["postgresql"], True), (None, False), (["http/1.1"], False)])
def test_direct_tls(pooler_factory, certs, alpn, works):
    pooler = pooler_factory.start({**client_tls_settings(certs, "require"), "server_tls_sslmode": "disable"})
    raw = socket.create_connection((pooler.host, pooler.port), timeout=10)
    with _client_ctx(certs, alpn).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        if works:
            assert _md5_login(s) == b"Z"
            assert s.version() == "TLSv1.3"
        else:
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                _md5_login(s)


def test_direct_tls_refused_when_tls_disabled(pooler_factory, certs):
    pooler = pooler_factory.start({"server_tls_sslmode": "disable"})
    raw = socket.create_connection((pooler.host, pooler.port), timeout=10)
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        with _client_ctx(certs, ["postgresql"]).wrap_socket(raw, server_hostname="127.0.0.1") as s:
            _md5_login(s)


def test_plaintext_after_sslrequest_is_not_accepted(pooler_factory, certs):
    """CVE-2021-3935 style: a startup packet sent right behind SSLRequest must never be processed."""
    pooler = pooler_factory.start({**client_tls_settings(certs, "prefer"), "server_tls_sslmode": "disable",
                                   "auth_type": "trust"})
    with socket.create_connection((pooler.host, pooler.port), timeout=10) as s:
        s.sendall(struct.pack("!II", 8, 80877103) + _startup("md5user", "testdb"))
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert b"R\0\0\0\x08\0\0\0\0" not in data          # no AuthenticationOk
    assert not data.startswith(b"S")
    pooler.wait_for_log(r"closing because: unexpected data after SSL request")


def test_sslrequest_then_tls_with_slow_client(pooler_factory, certs):
    """SSLRequest, wait for 'S', then the handshake on the same socket (what libpq does)."""
    pooler = pooler_factory.start({**client_tls_settings(certs, "require"), "server_tls_sslmode": "disable"})
    raw = socket.create_connection((pooler.host, pooler.port), timeout=10)
    raw.sendall(struct.pack("!II", 8, 80877103))
    assert raw.recv(1) == b"S"
    with _client_ctx(certs, None).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert _md5_login(s) == b"Z"


def test_handshake_is_bounded_by_client_login_timeout(pooler_factory, certs):
    pooler = pooler_factory.start({**client_tls_settings(certs, "require"), "server_tls_sslmode": "disable",
                                   "client_login_timeout": 1})
    with socket.create_connection((pooler.host, pooler.port), timeout=15) as raw:
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        raw.sendall(b"\x16\x03\x01")           # the start of a ClientHello, then nothing
        assert raw.recv(100) == b""            # closed by the pooler
    # other clients were served meanwhile: the loop never blocked
    with psycopg.connect(pooler.dsn(**tls_kw(certs, "require", None))) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# -- cert authentication ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cert_of", "ca", "works"), [
    ("md5user", "trusted", True),
    ("scramuser", "trusted", False),    # CN is another user
    ("md5user", "untrusted", False),    # signed by a CA the pooler does not know
])
def test_auth_type_cert(pooler_factory, certs, cert_of, ca, works):
    pooler = pooler_factory.start({**client_tls_settings(certs, "verify-full"), "server_tls_sslmode": "disable",
                                   "auth_type": "cert"},
                                  databases={"testdb": pooler_factory.pg.server_connstr("testdb",
                                                                                        user="md5user",
                                                                                        password="md5pass")})
    cert, key = certs.client_cert(cert_of) if ca == "trusted" else certs.rogues[cert_of]
    dsn = pooler.dsn("testdb", "md5user", password=None, sslmode="verify-full", sslrootcert=certs.ca,
                     sslcert=cert, sslkey=key)
    if works:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select current_user").fetchone() == ("md5user",)
    else:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn)


# -- server side: every server_tls_sslmode against PostgreSQL with and without ssl ------------------------------
def _server_ssl(pooler, user: str = "scramuser", db: str = "testdb"):
    """(ssl in use on the pooler's server connection, error text or None)."""
    try:
        with psycopg.connect(pooler.dsn(db, user)) as conn:
            return conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0], None
    except psycopg.OperationalError as e:
        return None, str(e).strip()


SERVER_CASES = [
    # mode, server_tls_ca_file, host, user -> ssl used (None = login fails)
    ("disable", "ca", "127.0.0.1", "scramuser", False),
    ("disable", "ca", "127.0.0.1", "md5user", None),      # hostssl only: refused without TLS
    ("allow", "ca", "127.0.0.1", "scramuser", False),     # libpq allow: plain first ...
    ("allow", "ca", "127.0.0.1", "md5user", True),        # ... then TLS when plain is refused
    ("prefer", "ca", "127.0.0.1", "scramuser", True),
    ("prefer", "other_ca", "127.0.0.1", "md5user", True),  # no verification in prefer
    ("require", "other_ca", "127.0.0.1", "md5user", True),  # nor in require
    ("verify-ca", "ca", "127.0.0.2", "md5user", True),    # the name does not matter for verify-ca
    ("verify-ca", "other_ca", "127.0.0.1", "md5user", None),
    ("verify-full", "ca", "127.0.0.1", "md5user", True),
    ("verify-full", "ca", "127.0.0.2", "md5user", None),  # not in the certificate's names
    ("verify-full", "other_ca", "127.0.0.1", "md5user", None),
]


@pytest.mark.parametrize(("mode", "ca", "host", "user", "want"), SERVER_CASES)
def test_server_mode_against_pg_with_ssl(ssl_factory, certs, mode, ca, host, user, want):
    # a refused login fails the client at once; a failed TLS handshake leaves it queued for the retries of the
    # pool until its query_wait_timeout, as PgBouncer does
    pooler = ssl_factory.start({"server_tls_sslmode": mode, "server_tls_ca_file": getattr(certs, ca),
                                "query_wait_timeout": 1},
                               databases={"testdb": f"host={host} port={ssl_factory.pg.port} dbname=testdb"})
    used, err = _server_ssl(pooler, user)
    assert used == want, err
    if want and mode != "disable":
        assert _show(pooler, "servers")[0]["tls"] == "TLSv1.3/TLS_AES_256_GCM_SHA384"


@pytest.mark.parametrize(("mode", "works"), [("disable", True), ("allow", True), ("prefer", True),
                                             ("require", False), ("verify-ca", False), ("verify-full", False)])
def test_server_mode_against_pg_without_ssl(pooler_factory, certs, mode, works):
    pooler = pooler_factory.start({"server_tls_sslmode": mode, "server_tls_ca_file": certs.ca,
                                   "query_wait_timeout": 1})
    used, err = _server_ssl(pooler, "md5user")
    if works:
        assert used is False, err
    else:
        # the server connection fails ("server refused SSL") and is retried; the client waits its turn
        assert used is None
        assert "query_wait_timeout" in err, err
        pooler.wait_for_log(r"S-0x[0-9a-f]+: testdb/md5user@\S+ closing because: server refused SSL")


def test_server_client_certificate(ssl_factory, certs):
    """server_tls_cert_file/key_file: PostgreSQL's `cert` method lets the pooler in as CN=postgres."""
    cert, key = certs.client_cert("postgres")
    pooler = ssl_factory.start({"server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca,
                                "server_tls_cert_file": cert, "server_tls_key_file": key},
                               users={"postgres": "pool_mode=session"})
    used, err = _server_ssl(pooler, "postgres")
    assert used is True, err


# -- reload ---------------------------------------------------------------------------------------------------------
def _show(pooler, what: str) -> list[dict]:
    """SHOW <what> on the console as dicts of text values."""
    with psycopg.connect(pooler.dsn("pgbouncer", "pgbouncer", unix=True), autocommit=True) as admin:
        for oid in ("int2", "int4", "int8", "numeric", "timestamptz", "timestamp"):
            admin.adapters.register_loader(oid, TextLoader)
        cur = admin.execute(f"show {what}")
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _server_cert_der(pooler, certs) -> bytes:
    raw = socket.create_connection((pooler.host, pooler.port), timeout=10)
    raw.sendall(struct.pack("!II", 8, 80877103))
    assert raw.recv(1) == b"S"
    with _client_ctx(certs, None).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        return s.getpeercert(binary_form=True)


def _der(path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(open(path).read())


def _rewrite_ini(pooler, **changes) -> None:
    pooler.settings.update({k: str(v) for k, v in changes.items()})
    text = pooler.ini_path.read_text()
    head, _, _ = text.partition("\n[pgbouncer]\n")
    pooler.ini_path.write_text(head + "\n[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in pooler.settings.items()))


def test_reload_certificates_while_clients_are_connected(pooler_factory, certs):
    pooler = pooler_factory.start({**client_tls_settings(certs, "require"), "server_tls_sslmode": "disable"})
    conn = psycopg.connect(pooler.dsn(**tls_kw(certs, "require", None)))
    assert _server_cert_der(pooler, certs) == _der(certs.server)
    new_cert, new_key = certs.reissue_server("server2")
    _rewrite_ini(pooler, client_tls_cert_file=new_cert, client_tls_key_file=new_key)
    pooler.reload()
    wait_until(lambda: _server_cert_der(pooler, certs) == _der(new_cert), message="the new certificate in use")
    assert conn.execute("select 1").fetchone() == (1,)       # the old session goes on
    # a broken file: PgBouncer's message, the previous certificate stays in use
    mark = pooler.log_mark()
    _rewrite_ini(pooler, client_tls_key_file="/nonexistent/key.pem")
    pooler.reload()
    pooler.wait_for_log("TLS configuration could not be reloaded, keeping old configuration", since=mark)
    assert _server_cert_der(pooler, certs) == _der(new_cert)
    assert conn.execute("select 2").fetchone() == (2,)
    conn.close()


def test_set_broken_tls_setting_gives_notice(pooler_factory, certs):
    pooler = pooler_factory.start({**client_tls_settings(certs, "require"), "server_tls_sslmode": "disable"})
    notices = []
    with psycopg.connect(pooler.dsn("pgbouncer", "pgbouncer", unix=True), autocommit=True) as admin:
        admin.add_notice_handler(lambda d: notices.append(d.message_primary))
        admin.execute("set client_tls_cert_file = '/nonexistent/cert.pem'")
    assert notices == ["TLS settings could not be applied, still using old configuration"]
    assert _server_cert_der(pooler, certs) == _der(certs.server)


def _backend_pid(pooler, user="scramuser") -> int:
    with psycopg.connect(pooler.dsn("testdb", user)) as conn:
        return conn.execute("select pg_backend_pid()").fetchone()[0]


def test_tls_change_recycles_only_affected_servers(ssl_factory, certs):
    """Changing server_tls_* recycles TCP server connections; changing client_tls_* leaves them alone."""
    pooler = ssl_factory.start({**client_tls_settings(certs, "prefer"), "server_tls_sslmode": "prefer",
                                "server_tls_ca_file": certs.ca})
    pid = _backend_pid(pooler)
    assert _backend_pid(pooler) == pid                    # the pool reuses its server
    new_cert, new_key = certs.reissue_server("server3")
    _rewrite_ini(pooler, client_tls_cert_file=new_cert, client_tls_key_file=new_key)
    pooler.reload()
    wait_until(lambda: _server_cert_der(pooler, certs) == _der(new_cert), message="the new client-side cert")
    assert _backend_pid(pooler) == pid                    # client-side change: the server stays
    _rewrite_ini(pooler, server_tls_sslmode="verify-full")
    pooler.reload()
    new_pid = wait_until(lambda: (p := _backend_pid(pooler)) != pid and p, message="a new server connection")
    assert new_pid != pid
    assert _backend_pid(pooler) == new_pid                # and the new one stays


@pytest.mark.parametrize("binary", ["py", "c"])
@pytest.mark.parametrize(("ca_file", "rogue_accepted"), [(True, False), (False, False)])
def test_require_mode_and_client_certificates(pooler_factory, certs, binary, ca_file, rogue_accepted):
    """client_tls_sslmode=require: a client certificate is optional, but one that is sent must chain to
    client_tls_ca_file (the system store without one), as Debian's PgBouncer does."""
    settings = {**client_tls_settings(certs, "require"), "server_tls_sslmode": "disable"}
    if not ca_file:
        settings["client_tls_ca_file"] = None
    pooler = pooler_factory.start(settings, binary=binary)
    cert, key = certs.rogues["md5user"]
    assert outcome_dsn(pooler.dsn(sslmode="require", sslcert=cert, sslkey=key)) == \
        ("tls" if rogue_accepted else "rejected")
    good, good_key = certs.client_cert("md5user")
    assert outcome_dsn(pooler.dsn(sslmode="require", sslcert=good, sslkey=good_key)) == \
        ("tls" if ca_file else "rejected")
    assert outcome_dsn(pooler.dsn(sslmode="require", sslcert="/nonexistent", sslkey="/nonexistent")) == "tls"


def outcome_dsn(dsn: str) -> str:
    try:
        with psycopg.connect(dsn) as conn:
            return "tls" if conn.pgconn.ssl_in_use else "plain"
    except psycopg.OperationalError:
        return "rejected"
