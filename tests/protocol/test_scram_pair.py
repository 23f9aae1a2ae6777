"""Our ScramClient against our ScramServer in memory: password and pass-through logins, failures, tampering.

A small independent client written here with hashlib/hmac checks the server on its own as well.
"""

import base64
import hashlib
import hmac
import random

import pytest

from pgbouncer_py.auth.scram import (
    ScramAuthFailed,
    ScramClient,
    ScramError,
    ScramSecret,
    ScramServer,
    make_scram_secret,
    parse_scram_secret,
)

PASSWORD = "s3cr\u00e9t p\u00e4ss"
SECRET_TEXT = make_scram_secret(PASSWORD, iterations=64, salt=b"0123456789abcdef")
SECRET = parse_scram_secret(SECRET_TEXT)


def identity(message: bytes) -> bytes:
    return message


def run(client: ScramClient, server: ScramServer, tamper=None) -> None:
    """One full exchange; tamper maps a step name to a function that rewrites that message in transit."""
    tamper = tamper or {}
    first = tamper.get("client_first", identity)(client.client_first())
    server_first = tamper.get("server_first", identity)(server.handle_client_first(first))
    final = tamper.get("client_final", identity)(client.client_final(server_first))
    server_final = tamper.get("server_final", identity)(server.handle_client_final(final))
    client.verify_server_final(server_final)


def reference_client_final(password: bytes, gs2_header: bytes, client_first_bare: bytes, server_first: bytes):
    """Independent RFC 5802 client step: returns (client-final-message, expected server signature)."""
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    without_proof = b"c=" + base64.b64encode(gs2_header) + b",r=" + attrs[b"r"]
    auth = client_first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return without_proof + b",p=" + base64.b64encode(proof), hmac.new(server_key, auth, "sha256").digest()


@pytest.mark.parametrize("secret", [SECRET, SECRET_TEXT, PASSWORD], ids=["ScramSecret", "text", "plain"])
def test_password_login(secret):
    server = ScramServer(secret, iterations=64)
    client = ScramClient("someone", password=PASSWORD)
    run(client, server)
    assert server.client_key is not None and len(server.client_key) == 32
    assert hashlib.sha256(server.client_key).digest() == server.secret.stored_key
    assert server.server_key == server.secret.server_key


@pytest.mark.parametrize("flag", [b"n", b"y"])
def test_independent_client_with_gs2_flags(flag):
    server = ScramServer(SECRET)
    bare = b"n=,r=independent"
    server_first = server.handle_client_first(flag + b",," + bare)
    final, expected_signature = reference_client_final(
        PASSWORD.encode("utf-8"), flag + b",,", bare, server_first
    )
    assert server.handle_client_final(final) == b"v=" + base64.b64encode(expected_signature)


def test_y_flag_needs_matching_channel_binding_attribute():
    server = ScramServer(SECRET)
    bare = b"n=,r=independent"
    server_first = server.handle_client_first(b"y,," + bare)
    final, _ = reference_client_final(PASSWORD.encode(), b"n,,", bare, server_first)  # c=biws
    with pytest.raises(ScramError, match="channel-binding attribute"):
        server.handle_client_final(final)


@pytest.mark.parametrize("cb_name", [b"tls-server-end-point", b"tls-unique", b"tls-exporter", b""])
def test_channel_binding_p_is_refused(cb_name):
    server = ScramServer(SECRET)
    with pytest.raises(ScramError, match="channel binding.*not supported"):
        server.handle_client_first(b"p=" + cb_name + b",,n=,r=abc")
    assert server.client_key is None


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_pass_through_chain(hops):
    """Client -> pooler(s) -> PostgreSQL: keys recovered at each hop log in to the next one."""
    server = ScramServer(SECRET)
    run(ScramClient(password=PASSWORD), server)
    for _ in range(hops):
        client = ScramClient(client_key=server.client_key, server_key=server.server_key)
        next_server = ScramServer(SECRET_TEXT)  # same secret, fresh nonce
        run(client, next_server)
        assert next_server.client_key == server.client_key
        server = next_server


def test_pass_through_keys_do_not_fit_another_salt():
    server = ScramServer(SECRET)
    run(ScramClient(password=PASSWORD), server)
    other = ScramServer(make_scram_secret(PASSWORD, iterations=64))  # same password, new salt
    client = ScramClient(client_key=server.client_key, server_key=server.server_key)
    with pytest.raises(ScramAuthFailed):
        run(client, other)


@pytest.mark.parametrize(
    "password",
    ["wrong", PASSWORD.upper(), PASSWORD + " ", PASSWORD[:-1], "s3cr\u00e9t pa\u0308ss!"],
)
def test_wrong_password(password):
    server = ScramServer(SECRET)
    with pytest.raises(ScramAuthFailed, match="wrong password"):
        run(ScramClient(password=password), server)
    assert server.client_key is None and server.server_key is None


def test_normalised_password_is_the_same_password():
    run(ScramClient(password="s3cr\u00e9t pa\u0308ss"), ScramServer(SECRET))  # NFD of PASSWORD


def test_impostor_server_without_server_key_is_detected():
    """A server that stole only StoredKey can accept the proof but cannot sign."""
    impostor = ScramServer(ScramSecret(SECRET.iterations, SECRET.salt, SECRET.stored_key, bytes(32)))
    client = ScramClient(password=PASSWORD)
    with pytest.raises(ScramError, match="invalid server signature"):
        run(client, impostor)
    assert impostor.client_key is not None  # the proof itself was fine


def flip_last_b64_char(message: bytes) -> bytes:
    return message[:-2] + (b"A" if message[-2:-1] != b"A" else b"E") + message[-1:]


@pytest.mark.parametrize("mode", ["password", "pass-through"])
@pytest.mark.parametrize(
    "step, rewrite, error",
    [
        ("client_first", lambda m: m.replace(b"n=", b"n=mallory"), ScramAuthFailed),
        ("client_first", lambda m: m + b"x", ScramAuthFailed),  # longer nonce still prefixes
        ("client_first", lambda m: m + b",x=ext", ScramAuthFailed),
        ("client_first", lambda m: b"y" + m[1:], "channel-binding attribute"),
        ("client_first", lambda m: b"p=tls-unique" + m[1:], "not supported"),
        ("server_first", lambda m: m.replace(b",i=64", b",i=65"), ScramAuthFailed),
        ("server_first", lambda m: m.replace(b",i=64", b",i=0"), "iteration count"),
        ("server_first", lambda m: m.replace(b",s=MDEy", b",s=MDEz"), ScramAuthFailed),
        ("server_first", lambda m: m.replace(b",s=", b",s=x"), "invalid salt"),
        ("server_first", lambda m: m.replace(b",s=", b"x,s="), "nonce mismatch"),
        ("server_first", lambda m: m[:5] + b"," + m[5:], "nonce mismatch"),
        ("server_first", lambda m: m + b",x=ext", ScramAuthFailed),
        ("client_final", flip_last_b64_char, ScramAuthFailed),
        ("client_final", lambda m: m.replace(b"c=biws", b"c=eSws"), "channel-binding attribute"),
        ("client_final", lambda m: m.replace(b",p=", b"x,p="), "nonce mismatch"),
        ("client_final", lambda m: m[:-1], "malformed proof"),
        ("server_final", flip_last_b64_char, "invalid server signature"),
        ("server_final", lambda m: m[:-1], "failed to verify server signature"),
        ("server_final", lambda m: b"e=other-error", "failed to verify server signature"),
    ],
)
def test_tampered_messages(mode, step, rewrite, error):
    server = ScramServer(SECRET)
    if mode == "password":
        client = ScramClient(password=PASSWORD)
    else:
        seed_server = ScramServer(SECRET)
        run(ScramClient(password=PASSWORD), seed_server)
        client = ScramClient(client_key=seed_server.client_key, server_key=seed_server.server_key)
    if isinstance(error, str):
        with pytest.raises(ScramError, match=error):
            run(client, server, {step: rewrite})
    else:
        with pytest.raises(error):
            run(client, server, {step: rewrite})


def mutate(rng: random.Random, message: bytes) -> bytes:
    data = bytearray(message)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[pos % len(data)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes([rng.choice(b",=\x00\xff\x80nyprcsivem0123456789+/ ")])
        elif op == 2:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            data[pos:pos] = rng.randbytes(rng.randint(1, 6))
        else:
            data = data[:pos]
    return bytes(data)


@pytest.mark.parametrize("step", ["client_first", "server_first", "client_final", "server_final"])
@pytest.mark.parametrize("seed", range(60))
def test_fuzzed_messages_only_raise_scram_error(step, seed):
    rng = random.Random(f"{step}-{seed}")
    server = ScramServer(SECRET)
    client = ScramClient(password=PASSWORD)
    mutated = []

    def rewrite(message: bytes) -> bytes:
        new = mutate(rng, message)
        mutated.append(new != message)
        return new

    try:
        run(client, server, {step: rewrite})
    except ScramError as e:
        assert str(e)
    else:
        assert not mutated[0]  # only an unchanged exchange may succeed
