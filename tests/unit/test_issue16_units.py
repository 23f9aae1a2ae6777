"""Sans-I/O parts of issue 16: the login reader throws an over-long message away as it arrives, auth_dbname may
not name the console (load and SET), and a config error knows the logfile that was set before it."""

from __future__ import annotations

import struct

import pytest

from pgbouncer_py.config import ConfigError, load_config
from pgbouncer_py.proto.messages import MessageReader, ProtocolError

RESERVED = 'cannot use the reserved "pgbouncer" database as an auth_dbname'


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_oversize_message_is_dropped_then_reported(chunk):
    data = _msg(b"p", b"x" * 100_000) + _msg(b"X", b"")
    r = MessageReader(max_size=1000, skip_oversize=True)
    got = []
    for i in range(0, len(data), chunk):
        r.feed(data[i:i + chunk])
        while (m := r.next()) is not None:
            got.append(m)
        assert len(r.buf) <= max(chunk, 1000)      # nothing of the long message is kept
    assert got == [(ord("p"), None), (ord("X"), b"")]


def test_oversize_message_without_skip_is_an_error():
    r = MessageReader(max_size=1000)
    r.feed(_msg(b"p", b"x" * 2000))
    with pytest.raises(ProtocolError, match="packet too large"):
        r.next()


def _write(tmp_path, text):
    p = tmp_path / "pgbouncer.ini"
    p.write_text(text)
    return str(p)


def test_auth_dbname_pgbouncer_refused_at_load(tmp_path):
    path = _write(tmp_path, "[pgbouncer]\nlogfile = /x/p.log\nauth_dbname = pgbouncer\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.messages == [RESERVED, f'invalid value "pgbouncer" for parameter auth_dbname in configuration '
                                          f'({path}:3)']
    assert e.value.logfile == "/x/p.log"
    assert load_config(_write(tmp_path, "[pgbouncer]\nauth_dbname = PGBOUNCER\n")).auth_dbname == "PGBOUNCER"


def test_auth_dbname_pgbouncer_refused_by_set(tmp_path):
    cfg = load_config(_write(tmp_path, "[pgbouncer]\n"))
    with pytest.raises(ConfigError) as e:
        cfg.with_setting("auth_dbname", "pgbouncer")
    assert e.value.messages == [RESERVED, "SET failed"]
    assert cfg.with_setting("auth_dbname", "postgres").auth_dbname == "postgres"


@pytest.mark.parametrize(("text", "logfile"), [
    ("[pgbouncer]\nlogfile = /a.log\nnosuch = 1\n", "/a.log"),
    ("[pgbouncer]\nnosuch = 1\nlogfile = /a.log\n", ""),              # the bad line came first
    ("[databases]\nx = nosuchparam=1\n[pgbouncer]\nlogfile = /a.log\n", ""),
    ("[pgbouncer]\nlogfile = /a.log\n[nosuch]\n", "/a.log"),           # a bad section
])
def test_config_error_knows_the_logfile_set_before_it(tmp_path, text, logfile):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert e.value.logfile == logfile
