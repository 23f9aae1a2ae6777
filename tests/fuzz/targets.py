"""Fuzz targets over every sans-I/O parser: each takes arbitrary bytes and must either return or raise
one of the parser's documented errors (EXPECTED). Shared by the hypothesis tests and the atheris runner."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable

from pgbouncer_py import prepare
from pgbouncer_py.admin import console
from pgbouncer_py.auth import saslprep, scram
from pgbouncer_py.config import hba, load_config, params, parse_database, parse_peer, parse_user, userlist
from pgbouncer_py.config.connstr import parse_connstr
from pgbouncer_py.config.ini import ConfigError, read_ini
from pgbouncer_py.proto import messages as M
from pgbouncer_py.proto import sql

# The errors a parser may raise for bad input; anything else is a bug.
EXPECTED: tuple[type[BaseException], ...] = (M.ProtocolError, prepare.PacketError, scram.ScramError,
                                             ConfigError, hba.HbaError, sql.SqlError)

SCRAM_PASSWORD = "fuzz-password"
_SCRAM_SECRET = scram.make_scram_secret(SCRAM_PASSWORD, iterations=16, salt=b"0123456789abcdef")
_NONCE = b"ABCDEFGHIJKLMNOPQRSTUVWX"


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _split2(data: bytes) -> tuple[bytes, bytes]:
    """Two inputs from one: the first byte says where to cut."""
    if not data:
        return b"", b""
    cut = data[0] % max(len(data), 1)
    return data[1:cut + 1], data[cut + 1:]


def startup_packet(data: bytes) -> None:
    """A startup packet with a length word that tells the truth (the socket code checks the length)."""
    M.parse_startup_packet(struct.pack("!I", len(data) + 4) + data)


def startup_packet_raw(data: bytes) -> None:
    M.parse_startup_packet(data)


def message_stream(data: bytes) -> None:
    """A stream of typed messages through MessageReader, cut at a few sizes."""
    reader = M.MessageReader(max_size=4096)
    for chunk in (data[:7], data[7:100], data[100:]):
        reader.feed(chunk)
        while True:
            msg = reader.next()
            if msg is None:
                break
            mtype, body = msg
            assert isinstance(mtype, int) and isinstance(body, bytes)
    reader.take_rest()


def server_messages(data: bytes) -> None:
    """Bodies of what a server sends during login and that the pooler decodes."""
    M.parse_error_fields(data)
    M.parse_command_tag(data)
    M.parse_sasl_mechanisms(data)
    for fn in (M.parse_parameter_status, M.parse_auth_request):
        try:
            fn(data)
        except M.ProtocolError:
            pass


def client_messages(data: bytes) -> None:
    """Bodies of client messages the pooler decodes (login and prepared-statement tracking)."""
    for fn in (M.parse_sasl_initial_response, M.parse_password, M.parse_query, prepare.parse_parse,
               prepare.parse_bind, prepare.parse_target):
        try:
            fn(data)
        except (M.ProtocolError, prepare.PacketError):
            pass


def scram_server(data: bytes) -> None:
    """The pooler as SCRAM server: client-first then client-final from the fuzzer."""
    first, final = _split2(data)
    server = scram.ScramServer(_SCRAM_SECRET, nonce=_NONCE)
    server.handle_client_first(first)
    server.handle_client_final(final)


def scram_client(data: bytes) -> None:
    """The pooler as SCRAM client: server-first then server-final from the fuzzer."""
    first, final = _split2(data)
    client = scram.ScramClient("u", password=SCRAM_PASSWORD, nonce=_NONCE)
    client.client_first()
    for part in first.split(b","):
        # the iteration count is the server's to choose: keep the fuzzer fast by skipping big ones
        if part.startswith(b"i=") and part[2:].strip().isdigit() and int(part[2:]) > 64:
            return
    client.client_final(first)
    client.verify_server_final(final)


def scram_secret(data: bytes) -> None:
    text = _text(data)
    scram.parse_scram_secret(text)
    saslprep.saslprep_strict(text)
    saslprep.saslprep(data)


def connstr(data: bytes) -> None:
    text = _text(data)
    for fn in (parse_connstr, lambda t: parse_database("db", t), lambda t: parse_user("u", t),
               lambda t: parse_peer("1", t)):
        try:
            fn(text)
        except ConfigError:
            pass


def userlist_text(data: bytes) -> None:
    errors: list[str] = []
    users = userlist.parse_userlist(_text(data), errors)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in users.items())
    for secret in users.values():
        userlist.secret_kind(secret)


def hba_text(data: bytes) -> None:
    """hba and ident files; %include-style directives read nothing (a reader that refuses)."""
    def no_include(name: str) -> str:
        raise hba.HbaError("fuzz", 0, f"include of {name} refused")
    try:
        rules = hba.parse_hba(_text(data), read_include=no_include)
    except hba.HbaError:
        rules = None
    if rules is not None:
        rules.match(conn_type="host", tls=False, addr="127.0.0.1", database="db", user="u")
    hba.parse_ident(_text(data))


def setting_values(data: bytes) -> None:
    """Every [pgbouncer] setting's value parser."""
    text = _text(data)
    for p in params.PARAMS.values():
        try:
            p.format(p.parse(text))
        except ValueError:
            pass


def admin_command(data: bytes) -> None:
    text = _text(data)
    console.parse_command(text)
    console.parse_set(text)
    console.parse_shutdown(text)


def _with_file(data: bytes, fn: Callable[[str], object]) -> None:
    fd, path = tempfile.mkstemp(prefix="pgbfuzz", suffix=".ini")
    try:
        os.write(fd, data)
        os.close(fd)
        fn(path)
    finally:
        os.unlink(path)


def ini_file(data: bytes) -> None:
    """The ini reader; %include lines are dropped so that the fuzzer cannot make it read other files."""
    data = b"\n".join(line for line in data.split(b"\n") if not line.lstrip().startswith(b"%"))
    _with_file(data, read_ini)


def config_file(data: bytes) -> None:
    """The whole config loader over a [pgbouncer] section with fuzzed lines (no %include, no file paths)."""
    lines = [line for line in data.split(b"\n") if not line.lstrip().startswith(b"%")]
    risky = (b"auth_file", b"auth_hba_file", b"logfile", b"pidfile", b"client_tls", b"server_tls",
             b"unix_socket", b"auth_ident_file", b"conffile")
    lines = [line for line in lines if not any(k in line for k in risky)]
    _with_file(b"[databases]\n" + b"\n".join(lines), load_config)


def sql_command(data: bytes) -> None:
    """The SQL-level PREPARE/EXECUTE/DEALLOCATE recogniser; a name it finds must lie inside the text."""
    for text in (data, b"execute " + data, b"prepare p " + data, b"deallocate " + data):
        sql.might_start(text, 0, len(text))
        for scs in (True, False):
            try:
                cmd = sql.parse(text, scs)
            except sql.SqlError:
                continue
            if cmd is not None and cmd.name:
                assert 0 < cmd.name_start < cmd.name_end <= len(text)
                assert cmd.rewrite(text, b"N").endswith(text[cmd.name_end:])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "startup_packet": startup_packet,
    "startup_packet_raw": startup_packet_raw,
    "message_stream": message_stream,
    "server_messages": server_messages,
    "client_messages": client_messages,
    "scram_server": scram_server,
    "scram_client": scram_client,
    "scram_secret": scram_secret,
    "connstr": connstr,
    "userlist": userlist_text,
    "hba": hba_text,
    "setting_values": setting_values,
    "admin_command": admin_command,
    "ini_file": ini_file,
    "config_file": config_file,
    "sql_command": sql_command,
}


def run_one(name: str, data: bytes) -> None:
    """Run a target; swallow the expected errors (anything else propagates and is a finding)."""
    try:
        TARGETS[name](data)
    except EXPECTED:
        pass
