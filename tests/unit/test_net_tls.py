"""net/tls.py: the setting parsers, context building per sslmode, and the keep-old-config-on-error rule."""

import ssl
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgbouncer_py.net import tls

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tlsutil import TlsFiles  # noqa: E402

V = ssl.TLSVersion


@pytest.mark.parametrize(("spec", "expected"), [
    ("secure", {V.TLSv1_2, V.TLSv1_3}),
    ("", {V.TLSv1_2, V.TLSv1_3}),
    ("all", {V.TLSv1, V.TLSv1_1, V.TLSv1_2, V.TLSv1_3}),
    ("legacy", {V.TLSv1, V.TLSv1_1, V.TLSv1_2, V.TLSv1_3}),
    ("tlsv1.3", {V.TLSv1_3}),
    ("TLSv1.2,tlsv1.3", {V.TLSv1_2, V.TLSv1_3}),
    ("tlsv1.2:tlsv1.3", {V.TLSv1_2, V.TLSv1_3}),
    ("all,-tlsv1.0,-tlsv1.1", {V.TLSv1_2, V.TLSv1_3}),
    ("tlsv1.0 tlsv1.2", {V.TLSv1, V.TLSv1_2}),
])
def test_parse_protocols(spec, expected):
    assert tls.parse_protocols(spec) == expected


@pytest.mark.parametrize("spec", ["tlsv1.4", "sslv3", "secure,-tlsv1.2,-tlsv1.3"])
def test_parse_protocols_rejects(spec):
    with pytest.raises(tls.TlsConfigError):
        tls.parse_protocols(spec)


@pytest.mark.parametrize(("spec", "expected"), [
    ("default", tls._CIPHER_KEYWORDS["default"]),
    ("FAST", tls._CIPHER_KEYWORDS["fast"]),
    ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
])
def test_cipher_string(spec, expected):
    assert tls.cipher_string(spec) == expected


@pytest.mark.parametrize(("spec", "expected"), [
    ("", None), ("default", None),
    ("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
    ("TLS_AES_128_GCM_SHA256,TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"),
])
def test_tls13_suites(spec, expected):
    assert tls.tls13_suites(spec) == expected


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return TlsFiles(tmp_path_factory.mktemp("unit-tls"), users=("md5user",))


def _cfg(certs, **over):
    base = {"client_tls_sslmode": "disable", "client_tls_key_file": certs.server_key,
            "client_tls_cert_file": certs.server, "client_tls_ca_file": certs.ca, "client_tls_protocols": "secure",
            "client_tls_ciphers": "default", "client_tls13_ciphers": "", "client_tls_ecdhcurve": "auto",
            "client_tls_dheparams": "auto", "server_tls_sslmode": "prefer", "server_tls_key_file": "",
            "server_tls_cert_file": "", "server_tls_ca_file": certs.ca, "server_tls_protocols": "secure",
            "server_tls_ciphers": "default", "server_tls13_ciphers": ""}
    base.update(over)
    ns = SimpleNamespace(**base)
    ns.get = lambda k: base[k]
    return ns


@pytest.mark.parametrize(("mode", "ca", "verify"), [
    ("allow", True, ssl.CERT_OPTIONAL), ("prefer", True, ssl.CERT_OPTIONAL), ("require", True, ssl.CERT_OPTIONAL),
    ("require", False, ssl.CERT_OPTIONAL),
    ("verify-ca", True, ssl.CERT_REQUIRED), ("verify-full", True, ssl.CERT_REQUIRED),
])
def test_client_context_certificate_request(certs, mode, ca, verify):
    ctx = tls.build_client_context(_cfg(certs, client_tls_sslmode=mode, client_tls_ca_file=certs.ca if ca else ""))
    assert ctx.verify_mode == verify
    assert ctx.minimum_version == V.TLSv1_2


@pytest.mark.parametrize(("mode", "verify", "check_hostname"), [
    ("allow", ssl.CERT_NONE, False), ("prefer", ssl.CERT_NONE, False), ("require", ssl.CERT_NONE, False),
    ("verify-ca", ssl.CERT_REQUIRED, False), ("verify-full", ssl.CERT_REQUIRED, True),
])
def test_server_context_per_sslmode(certs, mode, verify, check_hostname):
    ctx = tls.build_server_context(_cfg(certs, server_tls_sslmode=mode))
    assert (ctx.verify_mode, ctx.check_hostname) == (verify, check_hostname)


@pytest.mark.parametrize("over", [
    {"client_tls_key_file": "/nonexistent.key"},
    {"client_tls_key_file": ""},
    {"client_tls_protocols": "tlsv9"},
    {"client_tls_ciphers": "NO-SUCH-CIPHER"},
    {"client_tls13_ciphers": "NO_SUCH_SUITE"},
    {"client_tls_ecdhcurve": "nosuchcurve"},
    {"client_tls_dheparams": "huge"},
])
def test_broken_settings_keep_the_old_configuration(certs, over):
    tls.configure(_cfg(certs, client_tls_sslmode="require"), force=True)
    before = tls.state.client_ctx
    with pytest.raises(tls.TlsConfigError):
        tls.configure(_cfg(certs, client_tls_sslmode="require", **over))
    assert tls.state.client_ctx is before and tls.state.client_mode == "require"


@pytest.mark.parametrize(("over", "server_changed"), [
    ({}, False),
    ({"client_tls_ciphers": "fast"}, False),
    ({"server_tls_sslmode": "verify-full"}, True),
    ({"server_tls13_ciphers": "TLS_AES_256_GCM_SHA384"}, True),
])
def test_configure_reports_server_side_changes(certs, over, server_changed):
    tls.configure(_cfg(certs, client_tls_sslmode="require"), force=True)
    assert tls.configure(_cfg(certs, client_tls_sslmode="require", **over)) is server_changed


@pytest.mark.parametrize(("cert", "cn"), [
    ({"subject": ((("organizationName", "x"),), (("commonName", "md5user"),))}, "md5user"),
    ({"subject": ((("organizationName", "x"),),)}, None),
    (None, None),
])
def test_peer_common_name(cert, cn):
    assert tls.peer_common_name(cert) == cn
