"""Table-driven tests of the SQL-level PREPARE/EXECUTE/DEALLOCATE recogniser and the error rewriting."""

import struct

import pytest

from pgbouncer_py import sqlprepare
from pgbouncer_py.proto import sql

PARSE_CASES = [
    # text, kind, name, rest
    (b"PREPARE foo AS SELECT 1", "prepare", b"foo", b" AS SELECT 1"),
    (b"prepare Foo (int, text) as select $1::int; ", "prepare", b"foo", b" (int, text) as select $1::int"),
    (b'PREPARE "Foo Bar"(int) AS SELECT $1', "prepare", b"Foo Bar", b"(int) AS SELECT $1"),
    (b'PREPARE "a""b" AS SELECT 1', "prepare", b'a"b', b" AS SELECT 1"),
    (b"prepare p as select $$a;b$$ ;", "prepare", b"p", b" as select $$a;b$$"),
    (b"prepare p as select $t$ $$ ; $t$", "prepare", b"p", b" as select $t$ $$ ; $t$"),
    (b"prepare p as select E'\\';' -- c", "prepare", b"p", b" as select E'\\';' -- c"),
    (b"prepare p as select 'it''s;' ;;  ", "prepare", b"p", b" as select 'it''s;'"),
    (b'prepare p as select ";" from t', "prepare", b"p", b' as select ";" from t'),
    (b"prepare p as select 1 /* ; /* nested ; */ ; */", "prepare", b"p", b" as select 1 /* ; /* nested ; */ ; */"),
    (b"prepare p as select a$1 from t", "prepare", b"p", b" as select a$1 from t"),
    (b"prepare \xc3\x89t\xc3\xa9 as select 1", "prepare", b"\xc3\x89t\xc3\xa9", b" as select 1"),
    (b"prepare " + b"x" * 70 + b" as select 1", "prepare", b"x" * 63, b" as select 1"),
    (b'EXECUTE "Foo"(1, \'a;b\')', "execute", b"Foo", b""),
    (b"/* c */ -- x\n execute X", "execute", b"x", b""),
    (b"execute p ( 1 ) ;", "execute", b"p", b""),
    (b"DEALLOCATE foo;", "deallocate", b"foo", b""),
    (b"deallocate prepare Foo", "deallocate", b"foo", b""),
    (b"deallocate prepare all", "deallocate all", b"", b""),
    (b"DEALLOCATE ALL ;", "deallocate all", b"", b""),
]


@pytest.mark.parametrize(("text", "kind", "name", "rest"), PARSE_CASES)
def test_parse(text, kind, name, rest):
    cmd = sql.parse(text)
    assert (cmd.kind, cmd.name, cmd.rest) == (kind, name, rest)
    assert sql.might_start(text, 0, len(text))
    if name:
        new = cmd.rewrite(text, b'"PGBOUNCER_1"')
        assert b"PGBOUNCER_1" in new and new.endswith(text[cmd.name_end:])


@pytest.mark.parametrize("text", [
    b"select 1", b"explain execute foo", b"executes", b"prepare", b"prepare 5 as select 1", b'prepare "" as select 1',
    b"deallocate foo bar", b"deallocate all now", b"", b"-- only a comment", b"preparex foo as select 1",
])
def test_not_rewritten(text):
    assert sql.parse(text) is None


@pytest.mark.parametrize("text", [
    b"execute foo; select 1", b"prepare a as select 1; prepare b as select 2", b"deallocate a; deallocate b",
    b'prepare U&"d\\0061t" as select 1',
])
def test_refused(text):
    with pytest.raises(sql.SqlError):
        sql.parse(text)


def test_backslash_ends_nothing_with_standard_strings_and_escapes_without():
    text = b"prepare p as select 'a\\'; select 2"
    with pytest.raises(sql.SqlError):
        sql.parse(text, scs=True)
    assert sql.parse(text, scs=False).rest == b" as select 'a\\'; select 2"


@pytest.mark.parametrize(("text", "cut", "expect"), [
    (b"SELECT 1", 8, False), (b"EXPLAIN x", 9, False), (b"END", 3, False), (b"DELETE FROM t", 13, False),
    (b"EXEC", 4, True),                      # cut: the rest is in the next chunk
    (b"  /* c */ dealloc", 17, True), (b"execute p", 9, True), (b"Prepare p", 9, True),
])
def test_might_start(text, cut, expect):
    assert sql.might_start(text, 0, cut) is expect


def test_raise_text_quotes_whatever_the_name_holds():
    t = sqlprepare.raise_text("42P05", b'prepared statement "$pgbm$x\'" already exists')
    assert t.startswith(b"DO $pgbouncer$") and b"$pgbm1$" in t and b"'42P05'" in t


def _error(*fields: bytes) -> bytes:
    return b"".join(f + b"\0" for f in fields) + b"\0"


def _fields(msg: bytes) -> list[bytes]:
    assert msg[0:1] == b"E" and struct.unpack("!I", msg[1:5])[0] == len(msg) - 1
    return [f for f in msg[5:].split(b"\0") if f]


class _Job(sqlprepare.Job):
    def __init__(self, **kw):
        super().__init__(None, None)
        for k, v in kw.items():
            setattr(self, k, v)


@pytest.mark.parametrize(("job", "position", "expect"), [
    # client text 'execute p3(   'zz')': name at chars [8, 10), sent as '"PGBOUNCER_5"' (13 chars, delta 11)
    (dict(name_start=8, name_end=21, delta=11), b"P26", b"P15"),
    (dict(name_start=8, name_end=21, delta=11), b"P3", b"P3"),
    (dict(name_start=8, name_end=21, delta=11), b"P12", b"P9"),             # inside the name: its first char
    (dict(prefix_chars=40, name_start=8, name_end=21, delta=11), b"P30", None),   # in the injected PREPARE
    (dict(prefix_chars=40, name_start=8, name_end=21, delta=11), b"P66", b"P15"),
])
def test_error_position_mapped_onto_the_client_text(job, position, expect):
    out = _fields(sqlprepare._error_fields(_Job(**job), _error(b"SERROR", b"C22P02", b"Mbad", position)))
    got = [f for f in out if f.startswith(b"P")]
    assert got == ([expect] if expect else [])


def test_error_names_and_context():
    job = _Job(rename=(b'"PGBOUNCER_5"', b'"p3"'), strip_context=True)
    out = _fields(sqlprepare._error_fields(job, _error(
        b"SERROR", b"C42601", b'Mwrong number of parameters for prepared statement "PGBOUNCER_5"',
        b"WPL/pgSQL function inline_code_block line 1 at RAISE")))
    assert out == [b"SERROR", b"C42601", b'Mwrong number of parameters for prepared statement "p3"']
