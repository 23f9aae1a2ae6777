"""parse_startup_packet's layout rules, table-driven (the parser splits the packet at NULs in one step)."""

import struct

import pytest

from pgbouncer_py.proto.messages import ProtocolError, parse_startup_packet

LAYOUT = "invalid startup packet layout: expected terminator as last byte"


def _pkt(body: bytes) -> bytes:
    return struct.pack("!II", len(body) + 8, 196608) + body


@pytest.mark.parametrize("body, params", [
    (b"user\0bob\0\0", {"user": "bob"}),
    (b"user\0bob\0database\0db\0\0", {"user": "bob", "database": "db"}),
    (b"user\0bob\0", {"user": "bob"}),                  # the last value's NUL is the final one: accepted
    (b"\0", {}),
    (b"user\0\0\0", {"user": ""}),
    (b"application_name\0caf\xc3\xa9\0\0", {"application_name": "caf\u00e9"}),
    (b"application_name\0caf\xe9\0\0", {"application_name": "caf\u00e9"}),   # not UTF-8: read as latin-1
])
def test_good_layouts(body, params):
    assert parse_startup_packet(_pkt(body)) == (196608, params)


@pytest.mark.parametrize("body", [
    b"user\0",                  # a name without a value
    b"\0bob\0\0",               # an empty name
    b"user\0bob\0\0\0",         # an empty name after the list
    b"user\0bob\0x\0",          # a name that ends at the final NUL
])
def test_bad_layouts(body):
    with pytest.raises(ProtocolError, match=LAYOUT):
        parse_startup_packet(_pkt(body))


def test_last_byte_must_be_nul():
    with pytest.raises(ProtocolError, match="expected terminator as last byte"):
        parse_startup_packet(_pkt(b"user\0bob"))


def test_small_startup_packets_are_kept_once(monkeypatch):
    """client._shared_packet: one kept copy per distinct small packet, a large one kept as is, the table bounded."""
    from pgbouncer_py import client
    monkeypatch.setattr(client, "_packets", {})
    monkeypatch.setattr(client, "SHARED_PACKETS_MAX", 3)
    small = b"\0\0\0\x1a\0\3\0\0user\0app\0database\0db\0\0"
    first = client._shared_packet(bytes(bytearray(small)))
    again = bytes(bytearray(small))
    assert again is not first and client._shared_packet(again) is first
    big = bytes(client.SHARED_PACKET_MAX_LEN + 1)
    assert client._shared_packet(big) is big and big not in client._packets
    held = [client._shared_packet(b"%d" % i) for i in range(10)]
    assert len(client._packets) <= 3 and held == [b"%d" % i for i in range(10)]
