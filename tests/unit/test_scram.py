"""SCRAM-SHA-256 primitives: RFC 7677 vectors, secret parsing, PostgreSQL-made secrets, SASLprep, strict parsers.

The PG_SECRETS were produced by PostgreSQL 15 (password_encryption=scram-sha-256, CREATE ROLE ... PASSWORD);
recomputing them from the password proves our Hi()/SASLprep match the server's, fallbacks included.
"""

import base64
import hmac
import random

import pytest

from pgbouncer_py.auth.saslprep import saslprep, saslprep_strict
from pgbouncer_py.auth.scram import (
    KeyedHmac,
    ScramAuthFailed,
    ScramClient,
    ScramError,
    ScramSecret,
    ScramServer,
    make_scram_secret,
    parse_scram_secret,
    scram_keys_from_password,
)

# RFC 7677 section 3 example
RFC_USER = "user"
RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = b"rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC_NONCE = RFC_CLIENT_NONCE + RFC_SERVER_NONCE

# (password, secret made by PostgreSQL 15, bytes that go into Hi())
PG_SECRETS = [
    (
        "secret",
        "SCRAM-SHA-256$4096:feF9uxLU3mnZWg+Q1ULlFg==$Um4M67kNp0BLvJ1KFCZ5f72IbDaaxDvyF9b0uUdNZR0="
        ":os3ivYGs8Cuj522X4TXQom0lrbqM76TPEoTaNqFHp8E=",
        b"secret",
    ),
    (
        "pencil",
        "SCRAM-SHA-256$4096:ffSdEoGeFscIyTJvDzlFPw==$wfYlUYoX0+7HquY0UDqH53yGlVCl8L5egqNmBP+YIYU="
        ":/v+wM36kTXQhtv14QhhZC9sdQF3L8yYMN/Y8rfjimzw=",
        b"pencil",
    ),
    (
        "correct horse battery staple correct horse battery staple",
        "SCRAM-SHA-256$4096:Zo+AGmPgA4qO//Cy4NrVQQ==$WC88TbqtaZUsvQdUcDBBqzlKcYim/EqTKu0SfmiyzA4="
        ":qdnC+7rQVHIZjNsP8XBs55D93kS92OvEltplsLl27kM=",
        b"correct horse battery staple correct horse battery staple",
    ),
    (  # pure ASCII is never prepared, control characters included
        "a\tb\x01",
        "SCRAM-SHA-256$4096:nyW6uuTKMbM5GtmHGitIgg==$w+FPvKcB+EpONs0x3ivSbnYWwN4a77NEnUIUxnu1nyg="
        ":d/CEsXeTCXnwcdgl6m0wMKpWmsjWezDduViTaQ6Rl9o=",
        b"a\tb\x01",
    ),
    (  # composed form
        "p\u00e4ssw\u00f6rd",
        "SCRAM-SHA-256$4096:SumYZkg1saw13+BSaolKdA==$Qs68XztJbfY0u/IVboAhf+xR40YmAi9wnL8VTbJYgIs="
        ":dBpei3H2LMi0LGX/2z3vyZo+GpzfBrHrVkomY0ZCpZ4=",
        "p\u00e4ssw\u00f6rd".encode(),
    ),
    (  # decomposed form normalises to the composed one
        "pa\u0308sswo\u0308rd",
        "SCRAM-SHA-256$4096:5xzzG8r8G+7WUMqUzFeF5A==$hbps9g+vZ4usNbnejfIlzixa1OadklKHDWdiOELhxmc="
        ":GF45HWtpuqOVNPMt837P7hWt/c/ydezuWjQ3Lsj6PQ0=",
        "p\u00e4ssw\u00f6rd".encode(),
    ),
    (  # ROMAN NUMERAL NINE -> NFKC "IX"
        "\u2168",
        "SCRAM-SHA-256$4096:QmlAO91PGrz4zE5FVBmeoA==$mNSPCMt9jrNRRM35sbjfLncBrQSMFE81eabp1vrTpGg="
        ":cuNYZh9Dx4mT77pZqRiwnRtWoQMKUaUEnCekvmSYnGk=",
        b"IX",
    ),
    (  # SOFT HYPHEN is mapped to nothing
        "I\u00adX",
        "SCRAM-SHA-256$4096:ijtFW+PqQfthcFRO0YienQ==$5ig2mOoZkAH+/lQocP4W2Z1DFTKWvz+mEHgCOIXS1Og="
        ":dZ329VVdSez1LuBTBhMiFitCDerfNiLNfqT1RQBDoPc=",
        b"IX",
    ),
    (  # non-ASCII spaces become SPACE
        "\u00a0a\u3000b",
        "SCRAM-SHA-256$4096:V9LuCXdXEuU7zKYcDeRgyw==$JT6V2t37RyOHhgdnWU3HIGq+6KGl548RhicJLMRv7R4="
        ":A295VngT0eiADJBg9mXAX/5Bdev18AjyPAXHro3L3ss=",
        b" a b",
    ),
    (  # ZERO WIDTH SPACE is in both B.1 and C.1.2: the space mapping wins
        "a\u200b\u00e9",
        "SCRAM-SHA-256$4096:bi0fqxEWsttHSdBmeaeIdg==$QZGUFSlFE7jLa9doKLiWT1/FZRi1C4Y6Zf0cgTLN7eM="
        ":i8EOPIJ1PQ0WGC8mwF9wTloxy20SU+5yGwnPe0G+oIo=",
        "a \u00e9".encode(),
    ),
    (  # LATIN SMALL LIGATURE FI -> "fi"
        "\ufb01x",
        "SCRAM-SHA-256$4096:KfogUrIBYV1X9105Ghm9xQ==$i7yMm2yTPRzIkC9RP83E73KjwijVdBuFnx/MGsx1dxE="
        ":cA2WimWHjskCO3CDLunqCp6jy+LCBB4Q8yUjjE+Wbx0=",
        b"fix",
    ),
    (  # right-to-left only: allowed (soft hyphen removed)
        "\u05d0\u00ad\u05d1",
        "SCRAM-SHA-256$4096:N8eANy8OGFpCZdGHTfdULA==$NDbuYANnkHb0QvTboCJ/ECfkGvuNF2RcogVBMhlBZP0="
        ":iYFh6YWbGxAPkLWjwqeIMoy2bbguPKGEnHdpolpj7uA=",
        "\u05d0\u05d1".encode(),
    ),
    (  # empty after mapping: raw bytes
        "\u00ad",
        "SCRAM-SHA-256$4096:PQPlcYyefVl0mDUZ0vLueg==$48K4ByRbH0B9tgjlqa3OBK6ihctXD087cq9wOe6ZfyI="
        ":uKfyhqdWe4n2myvI5Z6YbclytGPnmt3p2O12oVO7c/I=",
        "\u00ad".encode(),
    ),
    (  # prohibited control character after normalisation: raw bytes, not "IX\x07"
        "\u2168\x07",
        "SCRAM-SHA-256$4096:/REmIXLp1Sr77Cyw8hD2tQ==$iji+jGSclp51p+Eq5l8M/S/2sEBrpr53C5QsdF457D0="
        ":lwOXJFY4tOOaQCZoTN5D2wVZiO2yDtEjsqG5X3tMs4I=",
        "\u2168\x07".encode(),
    ),
    (  # bidi rule broken (L and RandAL mixed): raw bytes
        "\u2168\u05d0",
        "SCRAM-SHA-256$4096:J/qOZBFH/gyTDt8hQPkhjw==$dMI0SItPVuVM70f3k6H+TUlo5AAnTkVcoJEccXNZzqg="
        ":TvUXtjbNNFDuN8Yo4+ibx5RrtNpMAjO/hStgSpPIlLw=",
        "\u2168\u05d0".encode(),
    ),
    (  # unassigned in Unicode 3.2: raw bytes (soft hyphen kept)
        "I\u00adX\u0221",
        "SCRAM-SHA-256$4096:tsrBEDQ4qQjshDcVjekYdA==$iNNh+4XokPf9AW4ivA6nnWJrwwXf39/be9JPboCg30M="
        ":agRElgx3nPcA+WUV2S2giTa42hROGKtOtHBhuD6SKI4=",
        "I\u00adX\u0221".encode(),
    ),
    (  # LEFT-TO-RIGHT MARK is prohibited: raw bytes (ligature kept)
        "\ufb01\u200e",
        "SCRAM-SHA-256$4096:qz6myU9pXYcJUSMypqdTIQ==$/kOz5FQxlbXg3JCPB6O1Kqocp+iwtxjpoRsJgtwelZw="
        ":w+7tybjwUT55g2bmTH2BkFa3z//QjcdZwe1KdOHdx8w=",
        "\ufb01\u200e".encode(),
    ),
    (  # RandAL first but not last
        "\u05d01",
        "SCRAM-SHA-256$4096:SqPCZj4t7QIBPTNf+M4K9Q==$unF+gAmSXxVeXLpR6E6Rf7EMzjL/UbPcTBUe3aKGBD4="
        ":M+cWV4oimb75idB1FO4gmQFXgKiviyzjTqO72hQEiRc=",
        "\u05d01".encode(),
    ),
]


# ---------------------------------------------------------------------------------------------
# RFC 7677


def rfc_secret() -> ScramSecret:
    secret = parse_scram_secret(make_scram_secret(RFC_PASSWORD, 4096, RFC_SALT))
    assert secret is not None
    return secret


def test_rfc7677_server_exact_messages():
    server = ScramServer(rfc_secret(), nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.client_key == scram_keys_from_password(RFC_PASSWORD, RFC_SALT, 4096)[0]
    assert server.server_key == scram_keys_from_password(RFC_PASSWORD, RFC_SALT, 4096)[1]


def rfc_client(mode: str) -> ScramClient:
    if mode == "password":
        return ScramClient(RFC_USER, password=RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client_key, server_key = scram_keys_from_password(RFC_PASSWORD, RFC_SALT, 4096)
    return ScramClient(RFC_USER, client_key=client_key, server_key=server_key, nonce=RFC_CLIENT_NONCE)


@pytest.mark.parametrize("mode", ["password", "pass-through"])
def test_rfc7677_client_exact_messages(mode):
    client = rfc_client(mode)
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert client.verify_server_final(RFC_SERVER_FINAL) is None


def test_client_default_user_is_empty_like_libpq():
    assert ScramClient(password="x", nonce=b"abc").client_first() == b"n,,n=,r=abc"


@pytest.mark.parametrize(
    "user, expected",
    [("a,b", b"n,,n=a=2Cb,r=abc"), ("a=b", b"n,,n=a=3Db,r=abc"), ("\u00e9", b"n,,n=\xc3\xa9,r=abc")],
)
def test_client_escapes_user_name(user, expected):
    assert ScramClient(user, password="x", nonce=b"abc").client_first() == expected


def test_random_nonces_are_base64_and_distinct():
    a = ScramClient(password="x").client_first()
    b = ScramClient(password="x").client_first()
    assert a != b
    assert len(a) == len(b"n,,n=,r=") + 24
    assert base64.b64decode(a[len(b"n,,n=,r=") :], validate=True)
    server = ScramServer(rfc_secret())
    reply = server.handle_client_first(b"n,,n=,r=abc")
    assert reply.startswith(b"r=abc") and len(reply.split(b",")[0]) == len(b"r=abc") + 24


# ---------------------------------------------------------------------------------------------
# secrets


@pytest.mark.parametrize("password, secret, prepared", PG_SECRETS)
def test_postgresql_made_secrets(password, secret, prepared):
    parsed = parse_scram_secret(secret)
    assert parsed is not None
    assert make_scram_secret(password, parsed.iterations, parsed.salt) == secret
    assert str(parsed) == secret
    assert saslprep(password) == prepared


@pytest.mark.parametrize("password, secret, prepared", PG_SECRETS[:3])
def test_postgresql_made_secret_server_accepts_password(password, secret, prepared):
    server = ScramServer(secret)
    client = ScramClient(password=password)
    client.verify_server_final(
        server.handle_client_final(client.client_final(server.handle_client_first(client.client_first())))
    )
    assert server.client_key is not None


def test_make_scram_secret_random_salt():
    a, b = make_scram_secret("pw"), make_scram_secret("pw")
    assert a != b
    pa = parse_scram_secret(a)
    assert pa is not None and pa.iterations == 4096 and len(pa.salt) == 16
    assert parse_scram_secret(make_scram_secret("pw", iterations=7)).iterations == 7


@pytest.mark.parametrize("iterations", [0, -1, 2**31, "4096"])
def test_keys_reject_bad_iterations(iterations):
    with pytest.raises(ValueError):
        scram_keys_from_password("pw", b"salt", iterations)


KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()
SALT_T = "W22ZaJ0SNY7soEsUEjb6gQ=="


@pytest.mark.parametrize(
    "text, iterations, salt",
    [
        (f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B}", 4096, base64.b64decode(SALT_T)),
        (f"SCRAM-SHA-256$1:AA==${KEY_A}:{KEY_B}", 1, b"\x00"),
        (f"SCRAM-SHA-256$2147483647:{SALT_T}${KEY_A}:{KEY_B}", 2147483647, base64.b64decode(SALT_T)),
        (f"SCRAM-SHA-256$04096:{SALT_T}${KEY_A}:{KEY_B}", 4096, base64.b64decode(SALT_T)),
    ],
)
def test_parse_scram_secret_good(text, iterations, salt):
    parsed = parse_scram_secret(text)
    assert parsed == ScramSecret(iterations, salt, bytes(range(32)), bytes(range(32, 64)))


KEY_31 = base64.b64encode(bytes(31)).decode()
KEY_33 = base64.b64encode(bytes(33)).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "secret",
        "md54a0a68b43b6cd5cf266fa02f196e2371",
        "SCRAM-SHA-256",
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$$:",
        f"scram-sha-256$4096:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-1$4096:{SALT_T}${KEY_A}:{KEY_B}",
        f" SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B} ",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B}\n",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B}$",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B}:",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}{KEY_B}",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}",
        f"SCRAM-SHA-256$4096{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:{SALT_T}:{KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096$:{SALT_T}${KEY_A}:{KEY_B}",
        # iteration count
        f"SCRAM-SHA-256$:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$0:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$-1:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$+4096:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$ 4096:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096 :{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$0x10:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4_096:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096.0:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$2147483648:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$99999999999999999999:{SALT_T}${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$\u0664\u0660\u0669\u0666:{SALT_T}${KEY_A}:{KEY_B}",  # Arabic-Indic digits
        # salt
        f"SCRAM-SHA-256$4096:${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ${KEY_A}:{KEY_B}",  # padding missing
        f"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ===${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:W22ZaJ0SNY7s oEsUEjb6gQ==${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:W22ZaJ0SNY7s\noEsUEjb6gQ==${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:W22ZaJ0SNY7s-_sUEjb6gQ==${KEY_A}:{KEY_B}",  # url-safe alphabet
        f"SCRAM-SHA-256$4096:QR==${KEY_A}:{KEY_B}",  # non-canonical trailing bits
        f"SCRAM-SHA-256$4096:==${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:\u00e9\u00e9\u00e9\u00e9${KEY_A}:{KEY_B}",
        f"SCRAM-SHA-256$4096:AA\x00A${KEY_A}:{KEY_B}",
        # keys
        f"SCRAM-SHA-256$4096:{SALT_T}$:{KEY_B}",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_31}:{KEY_B}",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_33}",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A[:-1]}:{KEY_B}",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B}{KEY_B}",
        f"SCRAM-SHA-256$4096:{SALT_T}${KEY_A}:{KEY_B}:{KEY_B}",
        # not even a str
        None,
        b"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
        4096,
    ],
)
def test_parse_scram_secret_malformed(text):
    assert parse_scram_secret(text) is None


def test_parse_scram_secret_remembers_secrets_not_passwords():
    """A login parses its user's secret more than once: the parsed secret is remembered (it is immutable), a
    changed secret is parsed anew, and text that is no SCRAM secret (a plain password) is not kept."""
    from pgbouncer_py.auth import scram

    text, other = PG_SECRETS[0][1], PG_SECRETS[1][1]
    first = parse_scram_secret(text)
    assert parse_scram_secret(text) is first and parse_scram_secret(other) not in (None, first)
    before = scram._parse_scram_secret.cache_info()
    assert parse_scram_secret("a plain password") is None
    assert scram._parse_scram_secret.cache_info().currsize == before.currsize


# ---------------------------------------------------------------------------------------------
# SASLprep details not covered by PG_SECRETS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ""),
        ("plain", "plain"),
        ("a\x00b", "a\x00b"),  # ASCII: untouched
        ("\u00aa", "a"),  # FEMININE ORDINAL INDICATOR, NFKC
        ("\u2000x\u2003", " x "),
        ("x\u034f\ufe00y", "xy"),  # combining grapheme joiner, variation selector: mapped to nothing
        ("\u00e9\ue000", None),  # private use
        ("\u00e9\U000e0001", None),  # tagging character
        ("\u00e9\ufffd", None),  # inappropriate for plain text
        ("\u00e9\u2ff0", None),  # ideographic description character
        ("\u00e9\u202a", None),  # change display property (LRE)
        ("\u00e9\ufdd0", None),  # non-character
        ("\u00e9\u0080", None),  # non-ASCII control
        ("\u0627\u0031\u0628", "\u0627\u0031\u0628"),  # RandAL at both ends
        ("\u0627\u0031", None),
        ("\u0031\u0627", None),
    ],
)
def test_saslprep_strict(text, expected):
    assert saslprep_strict(text) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"I\xc2\xadX", b"IX"),  # bytes are decoded first
        (b"\xff\xfe", b"\xff\xfe"),  # invalid UTF-8: used raw
        ("a\udcffb", b"a\xed\xb3\xbfb"),  # lone surrogate: not valid UTF-8, used raw
    ],
)
def test_saslprep_bytes_and_oddities(value, expected):
    assert saslprep(value) == expected


# ---------------------------------------------------------------------------------------------
# ScramServer parsing


def fresh_server() -> ScramServer:
    return ScramServer(rfc_secret(), nonce=RFC_SERVER_NONCE)


@pytest.mark.parametrize(
    "message, error",
    [
        (b"p=tls-server-end-point,,n=,r=abc", "channel binding"),
        (b"p=tls-unique,,n=,r=abc", "not supported"),
        (b"", "empty"),
        (b"n", "comma expected"),
        (b"x,,n=,r=abc", "channel-binding flag"),
        (b"N,,n=,r=abc", "channel-binding flag"),
        (b"n=,,n=,r=abc", "channel-binding flag"),
        (b",,n=,r=abc", "channel-binding flag"),
        (b"n,a=admin,n=,r=abc", "authorization identity"),
        (b"n,x=admin,n=,r=abc", "gs2 header"),
        (b"n,,m=ext,n=,r=abc", "unsupported SCRAM extension"),
        (b"n,,", "expected attribute 'n'"),
        (b"n,,r=abc", "expected attribute 'n'"),
        (b"n,,n=", "expected attribute 'r'"),
        (b"n,,n=,", "expected attribute 'r'"),
        (b"n,,n=,x=abc", "expected attribute 'r'"),
        (b"n,,n=,r=", "nonce"),
        (b"n,,n=,r=ab c", "nonce"),
        (b"n,,n=,r=ab\xc3\xa9", "nonce"),
        (b"n,,n=,r=ab\x7f", "nonce"),
        (b"n,,n=,r=abc\x00", "NUL"),
        (b"n,,n=,r=abc,", "garbage"),
        (b"n,,n=,r=abc,garbage", "garbage"),
        (b"n,,n=,r=abc,1=x", "garbage"),
        (b"n,,n=,r=abc,r", "garbage"),
        ("n,,n=,r=abc", "not bytes"),
        (None, "not bytes"),
    ],
)
def test_server_rejects_bad_client_first(message, error):
    server = fresh_server()
    with pytest.raises(ScramError, match=error):
        server.handle_client_first(message)
    with pytest.raises(ScramError, match="out of order"):  # a failed exchange stays failed
        server.handle_client_final(RFC_CLIENT_FINAL)


@pytest.mark.parametrize(
    "message",
    [
        b"y,,n=,r=abc",
        b"n,,n=someone,r=abc",
        b"n,,n=any=thing,r=abc",  # user name is ignored, even badly escaped
        b"n,,n=\xff,r=abc",
        b"n,,n=,r=abc,x=extension,Y=",
        bytearray(b"n,,n=,r=abc"),
        memoryview(b"n,,n=,r=abc"),
    ],
)
def test_server_accepts_client_first_variants(message):
    assert fresh_server().handle_client_first(message).startswith(b"r=abc" + RFC_SERVER_NONCE + b",s=")


def rfc_final(**parts: bytes) -> bytes:
    fields = {"c": b"biws", "r": RFC_NONCE, "p": b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="}
    fields.update(parts)
    return b",".join(k.encode() + b"=" + v for k, v in fields.items())


@pytest.mark.parametrize(
    "message, error",
    [
        (b"", "empty"),
        (rfc_final(c=b"eSws"), "channel-binding attribute"),  # "y,," although client sent "n"
        (rfc_final(c=b"biws="), "invalid channel-binding"),
        (rfc_final(c=b"bix"), "invalid channel-binding"),
        (rfc_final(c=b""), "invalid channel-binding"),
        (rfc_final(c=b"cD10bHMtdW5pcXVlLCw="), "channel-binding attribute"),  # "p=tls-unique,,"
        (RFC_CLIENT_FINAL[len(b"c=biws,") :], "expected attribute 'c'"),
        (rfc_final(r=RFC_CLIENT_NONCE), "nonce mismatch"),
        (rfc_final(r=RFC_NONCE + b"x"), "nonce mismatch"),
        (rfc_final(r=b""), "nonce mismatch"),
        (b"c=biws,r=" + RFC_NONCE, "proof expected"),
        (b"c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", "expected attribute 'r'"),
        (b"c=biws", "expected attribute 'r'"),
        (RFC_CLIENT_FINAL + b",x=1", "proof expected"),
        (rfc_final(p=b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ"), "malformed proof"),
        (rfc_final(p=b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndQ=="), "malformed proof"),  # 31 bytes
        (rfc_final(p=b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQA"), "malformed proof"),  # 33 bytes
        (rfc_final(p=b""), "malformed proof"),
        (rfc_final(p=b"!!!!"), "malformed proof"),
        (RFC_CLIENT_FINAL.replace(b",p=", b",1=x,p="), "garbage"),
        (RFC_CLIENT_FINAL + b"\x00", "NUL"),
        (rfc_final(p=b"AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="), "wrong password"),
        (RFC_CLIENT_FINAL.replace(b",p=", b",x=ext,p="), "wrong password"),  # extension is signed
    ],
)
def test_server_rejects_bad_client_final(message, error):
    server = fresh_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError, match=error):
        server.handle_client_final(message)
    assert server.client_key is None and server.server_key is None
    with pytest.raises(ScramError, match="out of order"):
        server.handle_client_final(RFC_CLIENT_FINAL)


def test_server_wrong_proof_is_auth_failure():
    server = fresh_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthFailed):
        server.handle_client_final(rfc_final(p=base64.b64encode(bytes(32))))


def test_server_call_order():
    server = fresh_server()
    with pytest.raises(ScramError, match="out of order"):
        server.handle_client_final(RFC_CLIENT_FINAL)
    server = fresh_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError, match="out of order"):
        server.handle_client_first(RFC_CLIENT_FIRST)
    server = fresh_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    server.handle_client_final(RFC_CLIENT_FINAL)
    with pytest.raises(ScramError, match="out of order"):
        server.handle_client_final(RFC_CLIENT_FINAL)


@pytest.mark.parametrize(
    "secret, error_type, error",
    [
        ("md54a0a68b43b6cd5cf266fa02f196e2371", ScramError, "MD5 secret"),
        (None, TypeError, "ScramSecret"),
        (b"pencil", TypeError, "ScramSecret"),
    ],
)
def test_server_refuses_unusable_secret(secret, error_type, error):
    with pytest.raises(error_type, match=error):
        ScramServer(secret)


@pytest.mark.parametrize("nonce", [b"", b"a,b", b"a b", "abc", b"\xc3\xa9"])
def test_bad_nonce_arguments(nonce):
    with pytest.raises(ValueError, match="nonce"):
        ScramServer("pw", nonce=nonce)
    with pytest.raises(ValueError, match="nonce"):
        ScramClient(password="pw", nonce=nonce)


def test_server_secret_string_and_plain_password():
    text = PG_SECRETS[0][1]
    server = ScramServer(text, nonce=b"srv")
    assert server.handle_client_first(b"n,,n=,r=c").endswith(b",s=feF9uxLU3mnZWg+Q1ULlFg==,i=4096")
    server = ScramServer("pencil", iterations=100, nonce=b"srv")
    reply = server.handle_client_first(b"n,,n=,r=c").split(b",")
    assert reply[0] == b"r=csrv" and reply[2] == b"i=100" and len(base64.b64decode(reply[1][2:])) == 16


@pytest.mark.parametrize(
    "client_first, derives",
    [
        (None, False),  # the client sent its startup packet and left
        (b"garbage", False),  # a malformed first message is refused before any PBKDF2
        (b"n,,n=,r=c", True),  # a well-formed first message needs the salt and iteration count
    ],
)
def test_server_derives_plain_password_secret_only_for_a_first_message(monkeypatch, client_first, derives):
    """PBKDF2 over a plain-text password (milliseconds) runs when the client's first message arrives, as in
    PgBouncer, not when the exchange starts: a storm of clients that leave after their startup packet is cheap."""
    from pgbouncer_py.auth import scram

    calls = []
    real = scram.scram_keys_from_password
    monkeypatch.setattr(scram, "scram_keys_from_password", lambda *a: calls.append(a) or real(*a))
    server = ScramServer("pencil", nonce=b"srv")
    if client_first is not None:
        try:
            server.handle_client_first(client_first)
        except ScramError:
            pass
    assert len(calls) == (1 if derives else 0)


def test_server_plain_password_with_given_salt():
    server = ScramServer("pencil", iterations=4096, salt=RFC_SALT, nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert str(server.secret) == make_scram_secret("pencil", 4096, salt=RFC_SALT)


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"iterations": 2**31}, {"salt": b""}])
def test_server_plain_password_bad_arguments_refused_at_once(kwargs):
    with pytest.raises(ValueError):
        ScramServer("pencil", **kwargs)


# ---------------------------------------------------------------------------------------------
# ScramClient parsing


def started_client() -> ScramClient:
    client = rfc_client("password")
    client.client_first()
    return client


@pytest.mark.parametrize(
    "message, error",
    [
        (b"", "empty"),
        (b"m=x," + RFC_SERVER_FIRST, "unsupported SCRAM extension"),
        (RFC_SERVER_FIRST.replace(RFC_NONCE, RFC_CLIENT_NONCE), "nonce mismatch"),  # no server part
        (RFC_SERVER_FIRST.replace(RFC_NONCE, RFC_CLIENT_NONCE[:-1]), "nonce mismatch"),
        (RFC_SERVER_FIRST.replace(RFC_NONCE, b"X" + RFC_NONCE[1:]), "nonce mismatch"),
        (RFC_SERVER_FIRST.replace(RFC_NONCE, RFC_NONCE + b" x"), "nonce mismatch"),
        (RFC_SERVER_FIRST.replace(b"r=", b"x="), "expected attribute 'r'"),
        (RFC_SERVER_FIRST.replace(b"s=W22ZaJ0SNY7soEsUEjb6gQ==", b"s="), "invalid salt"),
        (
            RFC_SERVER_FIRST.replace(b"s=W22ZaJ0SNY7soEsUEjb6gQ==", b"s=W22ZaJ0SNY7soEsUEjb6gQ"),
            "invalid salt",
        ),
        (RFC_SERVER_FIRST.replace(b"s=W22ZaJ0SNY7soEsUEjb6gQ==", b"s=%%%%"), "invalid salt"),
        (RFC_SERVER_FIRST.replace(b",s=W22ZaJ0SNY7soEsUEjb6gQ==", b""), "expected attribute 's'"),
        (RFC_SERVER_FIRST.replace(b",i=4096", b""), "expected attribute 'i'"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i=0"), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i=-4096"), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i="), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i=4096x"), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i= 4096"), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i=2147483648"), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i=\xd9\xa4"), "iteration count"),
        (RFC_SERVER_FIRST + b",", "garbage"),
        (RFC_SERVER_FIRST + b",junk", "garbage"),
        (RFC_SERVER_FIRST + b"\x00", "NUL"),
        ("r=abc", "not bytes"),
    ],
)
def test_client_rejects_bad_server_first(message, error):
    client = started_client()
    with pytest.raises(ScramError, match=error):
        client.client_final(message)
    with pytest.raises(ScramError, match="out of order"):
        client.verify_server_final(RFC_SERVER_FINAL)


def test_client_accepts_server_first_extension():
    # extensions are part of AuthMessage, so the RFC proof no longer applies; parsing must succeed
    final = started_client().client_final(RFC_SERVER_FIRST + b",x=ext")
    assert final.startswith(b"c=biws,r=" + RFC_NONCE + b",p=")


@pytest.mark.parametrize(
    "message, error",
    [
        (RFC_SERVER_FINAL.replace(b"v=6", b"v=7"), "invalid server signature"),
        (b"v=" + base64.b64encode(bytes(32)), "invalid server signature"),
        (b"e=invalid-proof", "failed to verify server signature.*invalid-proof"),
        (b"", "empty"),
        (b"x=1", "expected attribute 'v'"),
        (RFC_SERVER_FINAL[:-1], "failed to verify server signature"),
        (RFC_SERVER_FINAL[:-4] + b"AA==", "failed to verify server signature"),
        (b"v=", "failed to verify server signature"),
        (RFC_SERVER_FINAL + b",", "garbage"),
        (RFC_SERVER_FINAL + b"\x00", "NUL"),
        (None, "not bytes"),
    ],
)
def test_client_rejects_bad_server_final(message, error):
    client = started_client()
    client.client_final(RFC_SERVER_FIRST)
    with pytest.raises(ScramError, match=error):
        client.verify_server_final(message)
    with pytest.raises(ScramError, match="out of order"):
        client.verify_server_final(RFC_SERVER_FINAL)


def test_client_accepts_server_final_extension():
    client = started_client()
    client.client_final(RFC_SERVER_FIRST)
    assert client.verify_server_final(RFC_SERVER_FINAL + b",x=ext") is None


def test_client_call_order():
    client = rfc_client("password")
    with pytest.raises(ScramError, match="out of order"):
        client.client_final(RFC_SERVER_FIRST)
    client = rfc_client("password")
    client.client_first()
    with pytest.raises(ScramError, match="out of order"):
        client.client_first()
    client = rfc_client("password")
    client.client_first()
    with pytest.raises(ScramError, match="out of order"):
        client.verify_server_final(RFC_SERVER_FINAL)


@pytest.mark.parametrize(
    "kwargs, error_type, error",
    [
        ({}, ValueError, "password or client_key"),
        ({"password": "x", "client_key": bytes(32), "server_key": bytes(32)}, ValueError, "not both"),
        ({"client_key": bytes(32)}, ValueError, "both client_key and server_key"),
        ({"server_key": bytes(32)}, ValueError, "both client_key and server_key"),
        ({"client_key": bytes(31), "server_key": bytes(32)}, ValueError, "32 bytes"),
        ({"password": PG_SECRETS[0][1]}, ScramError, "password is SCRAM secret"),
        ({"password": "md54a0a68b43b6cd5cf266fa02f196e2371"}, ScramError, "wrong password type"),
    ],
)
def test_client_constructor_errors(kwargs, error_type, error):
    with pytest.raises(error_type, match=error):
        ScramClient("u", **kwargs)


def mutate_text(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(chars) + 1)
        op = rng.randrange(3)
        if op == 0:
            chars[pos:pos] = [rng.choice("$:=+/ A0-\x00\u00e9\u0664")]
        elif op == 1:
            del chars[pos : pos + rng.randint(1, 4)]
        else:
            chars[pos:pos] = [chr(rng.randrange(0x20, 0x7F))]
    return "".join(chars)


@pytest.mark.parametrize("seed", range(100))
def test_parse_scram_secret_fuzz_never_raises(seed):
    rng = random.Random(seed)
    original = PG_SECRETS[seed % len(PG_SECRETS)][1]
    text = mutate_text(rng, original)
    parsed = parse_scram_secret(text)
    if parsed is None:
        assert text != original
    else:
        # only canonical secrets parse; the iteration count may carry leading zeros
        assert text.split(":", 1)[1] == str(parsed).split(":", 1)[1]
        assert text.split(":", 1)[0] == f"SCRAM-SHA-256${parsed.iterations:0{len(text.split(':', 1)[0]) - 14}d}"


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 200])
@pytest.mark.parametrize("msg_len", [0, 1, 55, 56, 64, 300])
def test_keyed_hmac_is_hmac_sha256(key_len, msg_len):
    """KeyedHmac (the stored secret's keys, states copied per message) gives what the hmac module gives, for keys
    shorter and longer than SHA-256's block, and every message; one instance serves many messages."""
    key = bytes(range(key_len % 256)) * (key_len // 256 + 1)
    key = key[:key_len]
    keyed = KeyedHmac(key)
    for msg in (bytes(msg_len), b"\xff" * msg_len):
        assert keyed.digest(msg) == hmac.new(key, msg, "sha256").digest()


def test_a_parsed_secret_carries_its_keyed_hmacs():
    text = make_scram_secret("pw", iterations=64, salt=b"0123456789abcdef")
    parsed = parse_scram_secret(text)
    assert parsed.keyed is not None and str(parsed) == text
    for keyed, key in zip(parsed.keyed, (parsed.stored_key, parsed.server_key), strict=True):
        assert keyed.digest(b"auth message") == hmac.new(key, b"auth message", "sha256").digest()
    # equality and str() ignore the states: a secret made by hand equals the parsed one
    assert parsed == ScramSecret(parsed.iterations, parsed.salt, parsed.stored_key, parsed.server_key)
