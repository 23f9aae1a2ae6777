"""Test certificates made with `cryptography` (works with Debian 12's 38): a CA, server and client certificates,
an unrelated CA for "untrusted" cases, written as PEM files into a directory (TlsFiles)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgbouncer-py tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, cn: str, *, server: bool, hosts: tuple[str, ...] = ()) -> Issued:
    """A leaf certificate signed by `ca`; `hosts` become subjectAltNames (IP addresses or DNS names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False))
    if hosts:
        names = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(b.sign(ca.key, hashes.SHA256()), key)


def write_pair(directory: Path, stem: str, item: Issued) -> tuple[str, str]:
    """Write <stem>.crt and <stem>.key (mode 0600, as PostgreSQL and libpq insist); returns their paths."""
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(item.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(item.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key, 0o600)
    return str(crt), str(key)


class TlsFiles:
    """Everything a TLS test needs, as file paths:

    ca / ca_key            the trusted test CA
    server / server_key    CN=localhost, SAN 127.0.0.1 + localhost, signed by the CA (for PostgreSQL and the pooler)
    wrongname / wrongname_key   signed by the CA, SAN other.invalid only (fails verify-full on 127.0.0.1)
    client_<user> / ..._key     client certificates with CN=<user>, signed by the CA
    other_ca                    an unrelated CA; rogue_<user> client certificates are signed by it
    """

    def __init__(self, directory: Path, users: tuple[str, ...] = ("md5user", "scramuser", "postgres")):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        ca, other = make_ca("pgbouncer-py test CA"), make_ca("untrusted test CA")
        self.ca, _ = write_pair(self.dir, "ca", ca)
        self.other_ca, _ = write_pair(self.dir, "other_ca", other)
        self.server, self.server_key = write_pair(self.dir, "server",
                                                  issue(ca, "localhost", server=True, hosts=("127.0.0.1", "localhost")))
        self.wrongname, self.wrongname_key = write_pair(self.dir, "wrongname",
                                                        issue(ca, "other.invalid", server=True,
                                                              hosts=("other.invalid",)))
        self.clients: dict[str, tuple[str, str]] = {}
        self.rogues: dict[str, tuple[str, str]] = {}
        for user in users:
            self.clients[user] = write_pair(self.dir, f"client_{user}", issue(ca, user, server=False))
            self.rogues[user] = write_pair(self.dir, f"rogue_{user}", issue(other, user, server=False))
        self._ca = ca

    def client_cert(self, cn: str) -> tuple[str, str]:
        """A CA-signed client certificate for any CN (made on demand)."""
        if cn not in self.clients:
            self.clients[cn] = write_pair(self.dir, f"client_{cn}", issue(self._ca, cn, server=False))
        return self.clients[cn]

    def reissue_server(self, stem: str) -> tuple[str, str]:
        """A fresh server certificate (new key) under another file name, for reload tests."""
        return write_pair(self.dir, stem, issue(self._ca, "localhost", server=True, hosts=("127.0.0.1", "localhost")))
