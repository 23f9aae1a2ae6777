"""MD5 password secrets, client responses and verification against independently computed vectors.

Secrets for alice/'secret' and r_md5uni/'päss' were made by PostgreSQL 15 (password_encryption=md5);
every value was re-checked with coreutils md5sum.
"""

import pytest

from pgbouncer_py.auth.md5 import is_md5_secret, md5_response, md5_secret, md5_verify

ALICE_SECRET = "md54a0a68b43b6cd5cf266fa02f196e2371"  # PostgreSQL: CREATE ROLE alice PASSWORD 'secret'


@pytest.mark.parametrize(
    "password, user, expected",
    [
        ("secret", "alice", ALICE_SECRET),
        (b"secret", b"alice", ALICE_SECRET),
        ("secret", b"alice", ALICE_SECRET),
        ("p\u00e4ss", "r_md5uni", "md594b8f7e6979fe44b8921303fa2c30ab4"),  # UTF-8 bytes are hashed
        ("", "bob", "md59f9d51bc70ef21ca5c14f307980a29d8"),
    ],
)
def test_md5_secret(password, user, expected):
    assert md5_secret(password, user) == expected


@pytest.mark.parametrize(
    "secret_or_password, user, salt, expected",
    [
        ("secret", "alice", b"\x01\x02\x03\x04", "md598a0412b9c31436fc53776e863350083"),
        (ALICE_SECRET, "alice", b"\x01\x02\x03\x04", "md598a0412b9c31436fc53776e863350083"),
        # the user is already baked into a secret, so it is not used again
        (ALICE_SECRET, "someone-else", b"\x01\x02\x03\x04", "md598a0412b9c31436fc53776e863350083"),
        ("secret", "alice", b"\xff\x00\x7f\x80", "md5e161976a310da9dbf0bff32c99a31dce"),
        ("p\u00e4ss", "r_md5uni", b"\xde\xad\xbe\xef", "md50567506e4bc21c1381a9a986e2be451a"),
        ("", "bob", b"\x00\x00\x00\x00", "md587a08073e3c715a555ed96839b567143"),
    ],
)
def test_md5_response(secret_or_password, user, salt, expected):
    assert md5_response(secret_or_password, user, salt) == expected


@pytest.mark.parametrize("salt", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05", "abcd"])
def test_md5_response_rejects_bad_salt(salt):
    with pytest.raises(ValueError, match="4 bytes"):
        md5_response("secret", "alice", salt)


SALT = b"\x01\x02\x03\x04"
GOOD = "md598a0412b9c31436fc53776e863350083"


@pytest.mark.parametrize(
    "stored, user, salt, response, expected",
    [
        ("secret", "alice", SALT, GOOD, True),
        (ALICE_SECRET, "alice", SALT, GOOD, True),
        ("secret", "alice", SALT, GOOD.encode(), True),
        ("secret", "bob", SALT, GOOD, False),  # plain password: user is part of the hash
        ("secret", "alice", b"\x01\x02\x03\x05", GOOD, False),
        ("Secret", "alice", SALT, GOOD, False),
        ("secret", "alice", SALT, GOOD.upper(), False),
        ("secret", "alice", SALT, GOOD[3:], False),
        ("secret", "alice", SALT, GOOD + "0", False),
        ("secret", "alice", SALT, GOOD[:-1], False),
        ("secret", "alice", SALT, "", False),
        ("secret", "alice", SALT, "md5" + "\u00e4" * 32, False),
        ("secret", "alice", SALT, "\udcff", False),
        ("secret", "alice", SALT, None, False),
        ("", "bob", b"\x00\x00\x00\x00", "md587a08073e3c715a555ed96839b567143", True),
    ],
)
def test_md5_verify(stored, user, salt, response, expected):
    assert md5_verify(stored, user, salt, response) is expected


def test_md5_verify_refuses_scram_secret():
    scram = (
        "SCRAM-SHA-256$4096:feF9uxLU3mnZWg+Q1ULlFg==$Um4M67kNp0BLvJ1KFCZ5f72IbDaaxDvyF9b0uUdNZR0="
        ":os3ivYGs8Cuj522X4TXQom0lrbqM76TPEoTaNqFHp8E="
    )
    with pytest.raises(ValueError, match="SCRAM secret"):
        md5_verify(scram, "alice", SALT, GOOD)


@pytest.mark.parametrize(
    "text, expected",
    [
        (ALICE_SECRET, True),
        ("md5" + "0" * 32, True),
        (ALICE_SECRET.upper(), False),
        ("MD5" + ALICE_SECRET[3:], False),
        ("md5" + ALICE_SECRET[3:].upper(), False),
        (ALICE_SECRET[:-1], False),
        (ALICE_SECRET + "0", False),
        ("md5" + "g" * 32, False),
        ("secret", False),
        ("", False),
        (b"md5" + b"0" * 32, False),
        (None, False),
    ],
)
def test_is_md5_secret(text, expected):
    assert is_md5_secret(text) is expected
