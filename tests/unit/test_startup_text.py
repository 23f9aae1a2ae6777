"""Sans-I/O pieces of issue 17 (items 12, 13, 15): the `options` startup parameter as PgBouncer 1.24.1 reads it
(each case checked against the real binary), a console Query's text up to its first NUL, error fields that can
never carry a NUL, and the one spelling of a tracked parameter name."""

import pytest
from test_varcache import Cfg

from pgbouncer_py import varcache
from pgbouncer_py.proto import build
from pgbouncer_py.proto.messages import OPTIONS_SYNTAX, ProtocolError, parse_options, parse_query

OPTIONS = [
    ("-c datestyle=german", [("datestyle", "german")]),
    ("-c  intervalstyle=sql_standard   -c datestyle=german", [("intervalstyle", "sql_standard"),
                                                             ("datestyle", "german")]),
    ("   -c datestyle=german", [("datestyle", "german")]),                   # leading spaces are skipped
    ("-cdatestyle=german", [("datestyle", "german")]),
    ("--intervalstyle=sql_standard", [("intervalstyle", "sql_standard")]),
    ("--application-name=x", [("application-name", "x")]),                 # no dash to underscore
    ("-c application_name=hello\\ world", [("application_name", "hello world")]),
    ("-c application_name=a\\ b\\ \\ c", [("application_name", "a b  c")]),
    ("-c application_name=x\\y", [("application_name", "xy")]),
    ("--application_name=a\\\\b", [("application_name", "a\\b")]),
    ("-c application_name=a\\\\ -c datestyle=german", [("application_name", "a\\"), ("datestyle", "german")]),
    ("-c application_name=a\\\\\\ b", [("application_name", "a\\ b")]),
    ("-c intervalstyle=sql_standard\\", [("intervalstyle", "sql_standard")]),   # a final lone backslash
    ("-c application_name=", [("application_name", "")]),
    ("-c a=b=c", [("a", "b=c")]),
    ("-c =x", [("", "x")]),
    ("", []),
    ("-c datestyle=german ", OPTIONS_SYNTAX),                                # a trailing space
    ("\t-c\tdatestyle=german", OPTIONS_SYNTAX),                              # only spaces separate
    ("-c", OPTIONS_SYNTAX),
    ("-c datestyle", OPTIONS_SYNTAX),
    ("-x datestyle=german", OPTIONS_SYNTAX),
    ("-c datestyle=german -c", OPTIONS_SYNTAX),
    ("datestyle=german", OPTIONS_SYNTAX),
]


@pytest.mark.parametrize(("text", "expected"), OPTIONS, ids=[repr(o[0]) for o in OPTIONS])
def test_parse_options(text, expected):
    if isinstance(expected, str):
        with pytest.raises(ProtocolError, match="^" + expected.replace("'", ".") + "$"):
            list(parse_options(text))
    else:
        assert list(parse_options(text)) == expected


def test_parse_options_yields_items_before_an_error():
    items = parse_options("-c datestyle=german -x")
    assert next(items) == ("datestyle", "german")
    with pytest.raises(ProtocolError):
        next(items)


@pytest.mark.parametrize(("body", "expected"), [
    (b"SHOW VERSION\0", "SHOW VERSION"),
    (b"SHOW VERSION\0DROP TABLE x\0", "SHOW VERSION"),
    (b"FOO\0BAR", "FOO"),
    (b"\0SHOW VERSION\0", ""),
    (b"SHOW \xff\0", "SHOW \ufffd"),
])
def test_parse_query_stops_at_the_first_nul(body, expected):
    assert parse_query(body) == expected


@pytest.mark.parametrize("body", [b"", b"SHOW VERSION"])
def test_parse_query_without_nul_is_incomplete(body):
    with pytest.raises(ProtocolError, match="^incomplete query$"):
        parse_query(body)


def test_error_fields_are_cut_at_a_nul():
    e = build.error_response("invalid command 'FOO\0BAR'", "08P01", "ERROR", detail="a\0b", hint="\0")
    assert e[5:] == b"SERROR\0VERROR\0C08P01\0Minvalid command 'FOO\0Da\0H\0\0"
    assert build.notice_response("x\0y")[5:] == b"SNOTICE\0VNOTICE\0C00000\0Mx\0\0"


@pytest.mark.parametrize(("name", "canonical"), [
    ("intervalstyle", "IntervalStyle"), ("INTERVALSTYLE", "IntervalStyle"), ("IntervalStyle", "IntervalStyle"),
    ("datestyle", "DateStyle"), ("timezone", "TimeZone"), ("Search_Path", "search_path"),
    ("application_name", "application_name"),
])
def test_canonical_parameter_names(name, canonical):
    assert varcache.canonical_name(name) == canonical


def test_tracked_names_take_postgresql_spelling_once():
    names = varcache.tracked_params(Cfg("intervalstyle, INTERVALSTYLE, Search_Path, datestyle"))
    assert names == varcache.TRACKED_PARAMS + ("IntervalStyle", "search_path")
