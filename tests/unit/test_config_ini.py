"""Tests for the ini reader: comments, sections, keys, %include nesting and its depth limit."""

import os

import pytest

from pgbouncer_py.config import ConfigError
from pgbouncer_py.config.ini import MAX_INCLUDE_DEPTH, read_ini

DATA = os.path.join(os.path.dirname(__file__), "data", "config")


def _lines(tmp_path, text):
    p = tmp_path / "t.ini"
    p.write_text(text)
    return [(ln.section, ln.key, ln.value, ln.lineno) for ln in read_ini(str(p))]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[pgbouncer]\nlogfile = /x\n", [("pgbouncer", None, None, 1), ("pgbouncer", "logfile", "/x", 2)]),
        ("  [pgbouncer]  \n  a=1\n", [("pgbouncer", None, None, 1), ("pgbouncer", "a", "1", 2)]),
        ("; c\n# c\n   ; c\n\n[users]\n", [("users", None, None, 5)]),
        ("[pgbouncer]\nq = DISCARD ALL ; not a comment  \n", [("pgbouncer", None, None, 1), ("pgbouncer", "q", "DISCARD ALL ; not a comment", 2)]),
        ("[pgbouncer]\nk =\n", [("pgbouncer", None, None, 1), ("pgbouncer", "k", "", 2)]),
        ("[pgbouncer]\nk=v=w\n", [("pgbouncer", None, None, 1), ("pgbouncer", "k", "v=w", 2)]),
        ("[databases]\na.b-c*d = host=x\n", [("databases", None, None, 1), ("databases", "a.b-c*d", "host=x", 2)]),
        ("[databases]\n'my db' = host=x\n", [("databases", None, None, 1), ("databases", "my db", "host=x", 2)]),
        ('[databases]\n"a""b" = host=x\n', [("databases", None, None, 1), ("databases", 'a"b', "host=x", 2)]),
        ("[databases]\n* = host=x\n", [("databases", None, None, 1), ("databases", "*", "host=x", 2)]),
        ("[databases]\nMyDb = host=x\r\n", [("databases", None, None, 1), ("databases", "MyDb", "host=x", 2)]),
        ("x = 1\n", [(None, "x", "1", 1)]),
        ("[pgbouncer]\n= 5\n", [("pgbouncer", None, None, 1), ("pgbouncer", "", "5", 2)]),
        ("[peers]\n1 = host=a\n", [("peers", None, None, 1), ("peers", "1", "host=a", 2)]),
    ],
)
def test_read_ini_lines(tmp_path, text, expected):
    assert _lines(tmp_path, text) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("[foo]\n", 'invalid section "foo" in configuration ({f}:1)'),
        ("[Databases]\n", 'invalid section "Databases" in configuration ({f}:1)'),
        ("[pgbouncer] x\n", "syntax error in configuration ({f}:1), stopping loading"),
        ("[pgbouncer\n", "syntax error in configuration ({f}:1), stopping loading"),
        ("[pgbouncer]\nlogfile\n", "syntax error in configuration ({f}:2), stopping loading"),
        ("[pgbouncer]\na/b = 1\n", "syntax error in configuration ({f}:2), stopping loading"),
        ("[pgbouncer]\n'open = 1\n", "syntax error in configuration ({f}:2), stopping loading"),
        ("[pgbouncer]\n%include\n", "syntax error in configuration ({f}:2), stopping loading"),
        ("[pgbouncer]\n%includex.ini\n", "syntax error in configuration ({f}:2), stopping loading"),
        ("[pgbouncer]\n%other x\n", "syntax error in configuration ({f}:2), stopping loading"),
    ],
)
def test_read_ini_errors(tmp_path, text, message):
    p = tmp_path / "t.ini"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        read_ini(str(p))
    assert str(ei.value) == message.format(f=p)
    assert ei.value.messages == [message.format(f=p)]


def test_missing_file(tmp_path):
    p = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError) as ei:
        read_ini(p)
    assert str(ei.value) == f'could not load file "{p}": No such file or directory'


def test_include_golden(monkeypatch):
    monkeypatch.chdir(DATA)  # %include names are relative to the working directory
    got = [(ln.section, ln.key, ln.value, os.path.basename(ln.file), ln.lineno, len(ln.includes))
           for ln in read_ini("include/main.ini")]
    assert got == [
        ("pgbouncer", None, None, "main.ini", 2, 0),
        ("pgbouncer", "listen_port", "6000", "main.ini", 3, 0),
        ("pgbouncer", "max_client_conn", "200", "settings.ini", 2, 1),
        ("pgbouncer", "pool_mode", "transaction", "settings.ini", 3, 1),
        ("pgbouncer", "default_pool_size", "33", "level3.ini", 1, 2),
        ("users", None, None, "level3.ini", 2, 2),
        ("users", "carol", "pool_size=4", "level3.ini", 3, 2),
        ("pgbouncer", None, None, "level3.ini", 4, 2),
        ("pgbouncer", "listen_backlog", "64", "level3.ini", 6, 2),
        ("pgbouncer", "max_client_conn", "300", "main.ini", 5, 0),
        ("databases", None, None, "main.ini", 7, 0),
        ("databases", "db1", "host=10.0.0.1 dbname=one", "databases.ini", 1, 1),
        ("databases", "db2", "host=10.0.0.2", "databases.ini", 2, 1),
    ]


def test_include_relative_to_cwd_not_ini_dir(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "main.ini").write_text("[pgbouncer]\n%include part.ini\n")
    (tmp_path / "sub" / "part.ini").write_text("a = 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as ei:
        read_ini("sub/main.ini")
    assert ei.value.messages == [
        'could not load file "part.ini": No such file or directory',
        "error processing include file in configuration (sub/main.ini:2), stopping loading",
    ]
    monkeypatch.chdir(tmp_path / "sub")
    assert [ln.key for ln in read_ini("main.ini")] == [None, "a"]


def _chain(tmp_path, levels):
    """main.ini includes d1.ini ... d<levels>.ini, the last one sets a key; returns main's path."""
    for i in range(1, levels + 1):
        body = f"%include {tmp_path}/d{i + 1}.ini\n" if i < levels else "max_client_conn = 11\n"
        (tmp_path / f"d{i}.ini").write_text(body)
    main = tmp_path / "main.ini"
    main.write_text(f"[pgbouncer]\n%include {tmp_path}/d1.ini\n")
    return str(main)


@pytest.mark.parametrize("levels", [1, 2, MAX_INCLUDE_DEPTH - 1, MAX_INCLUDE_DEPTH])
def test_include_depth_allowed(tmp_path, levels):
    lines = read_ini(_chain(tmp_path, levels))
    assert (lines[-1].key, lines[-1].value, len(lines[-1].includes)) == ("max_client_conn", "11", levels)


def test_include_depth_limit(tmp_path):
    main = _chain(tmp_path, MAX_INCLUDE_DEPTH + 1)
    with pytest.raises(ConfigError) as ei:
        read_ini(main)
    msgs = ei.value.messages
    assert msgs[0] == f"include nesting level too deep ({tmp_path}/d{MAX_INCLUDE_DEPTH}.ini:1), stopping loading"
    assert msgs[1:] == [
        f"error processing include file in configuration ({tmp_path}/d{i}.ini:1), stopping loading"
        for i in range(MAX_INCLUDE_DEPTH - 1, 0, -1)
    ] + [f"error processing include file in configuration ({main}:2), stopping loading"]
    assert len(msgs) == MAX_INCLUDE_DEPTH + 1
