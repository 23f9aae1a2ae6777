"""Property tests (hypothesis) over the sans-I/O parsers: random bytes give a value or the parser's own
error, and well-formed input built by our encoders parses back to what was encoded. PGB_FUZZ_EXAMPLES sets
the number of examples per test (small by default so CI stays fast; scripts/fuzz.sh raises it)."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import TARGETS, run_one  # noqa: E402

from pgbouncer_py.auth import scram  # noqa: E402
from pgbouncer_py.config.connstr import parse_connstr  # noqa: E402
from pgbouncer_py.config.userlist import parse_userlist  # noqa: E402
from pgbouncer_py.proto import build  # noqa: E402
from pgbouncer_py.proto import messages as M  # noqa: E402

EXAMPLES = int(os.environ.get("PGB_FUZZ_EXAMPLES", "60"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", sorted(TARGETS))
@fuzz
@given(data=st.binary(max_size=600))
def test_random_bytes_give_value_or_parser_error(name, data):
    run_one(name, data)


# --- structured input: what our encoders build parses back -----------------------------------------

_ident = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=20)
_value = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30)


@fuzz
@given(params=st.dictionaries(_ident, _value, max_size=6))
def test_startup_packet_roundtrip(params):
    body = struct.pack("!I", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    code, parsed = M.parse_startup_packet(struct.pack("!I", len(body) + 4) + body)
    assert code == 196608
    assert parsed == params


@fuzz
@given(msgs=st.lists(st.tuples(st.sampled_from(b"QPBEDSCXpd"), st.binary(max_size=200)), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6))
def test_message_reader_reassembles_any_split(msgs, cuts):
    stream = b"".join(build.msg(bytes([t]), body) for t, body in msgs)
    reader = M.MessageReader()
    got = []
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for a, b in zip(points, points[1:], strict=False):
        reader.feed(stream[a:b])
        while (m := reader.next()) is not None:
            got.append(m)
    assert got == [(t, body) for t, body in msgs]
    assert reader.take_rest() == b""


@fuzz
@given(length=st.integers(min_value=0, max_value=2**32 - 1), max_size=st.integers(min_value=5, max_value=10000))
def test_message_reader_rejects_lying_lengths(length, max_size):
    reader = M.MessageReader(max_size=max_size)
    reader.feed(b"Q" + struct.pack("!I", length))
    if length < 4 or length > max_size:
        with pytest.raises(M.ProtocolError):
            reader.next()
    elif length == 4:
        assert reader.next() == (ord("Q"), b"")   # an empty body is complete
    else:
        assert reader.next() is None  # waits for the body, never reads past the buffer


@fuzz
@given(entries=st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
                               st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                                       min_size=1, max_size=20), max_size=5))
def test_connstr_quoted_values_roundtrip(entries):
    text = " ".join(f"{k}='{v.replace(chr(39), chr(39) * 2)}'" for k, v in entries.items())
    assert parse_connstr(text) == entries


@fuzz
@given(users=st.dictionaries(st.text(st.characters(blacklist_characters='\0"\n\r', blacklist_categories=("Cs",)),
                                     min_size=1, max_size=20),
                             st.text(st.characters(blacklist_characters='\0"\n\r', blacklist_categories=("Cs",)),
                                     max_size=30), max_size=5))
def test_userlist_roundtrip(users):
    text = "".join(f'"{u}" "{p}"\n' for u, p in users.items())
    errors: list[str] = []
    assert parse_userlist(text, errors) == users
    assert errors == []


@fuzz
@given(password=st.text(max_size=20).filter(lambda p: "\0" not in p),
       nonce=st.binary(min_size=18, max_size=18).map(lambda b: __import__("base64").b64encode(b)))
def test_scram_exchange_between_our_client_and_server(password, nonce):
    secret = scram.make_scram_secret(password, iterations=16, salt=b"fuzzsaltfuzzsalt")
    server = scram.ScramServer(secret, nonce=nonce)
    client = scram.ScramClient("", password=password, nonce=nonce[::-1])
    if scram.parse_scram_secret(password) is not None:
        return
    final = client.client_final(server.handle_client_first(client.client_first()))
    client.verify_server_final(server.handle_client_final(final))
    assert server.client_key is not None
