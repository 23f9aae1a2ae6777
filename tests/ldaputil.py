"""A throwaway OpenLDAP directory for the LDAP tests: Debian's slapd run as the current (unprivileged) user in a
temp dir, on free ports, with a small organisation loaded by slapadd before it starts (well under a second).
It speaks plain LDAP (StartTLS offered) and LDAPS with a test certificate from tests/tlsutil.py.

Directory (base dc=example,dc=net):
    ou=people   uid=NAME for each of USERS (cn = NAME, mail = NAME@example.net, userPassword = the password);
                uid=ldap_twin1 and uid=ldap_twin2 share `description: ldap_twin` (a search for it is not unique)
    ou=services cn=pgbouncer, password SERVICE_PASSWORD: the account for search+bind
Access: a bound user reads everything but passwords; an anonymous client may only bind.

Use: `slapd_fixture()` makes a module-scoped fixture; `Slapd(dir).start()` / `.stop()` by hand."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from pgutil import HarnessError, free_port, wait_until
from tlsutil import TlsFiles

SLAPD = "/usr/sbin/slapd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
BASE_DN = "dc=example,dc=net"
PEOPLE_DN = f"ou=people,{BASE_DN}"
# names that no other test uses, so that the session's PostgreSQL cluster can have them as roles
USERS = {"ldap_alice": "alice-pw", "ldap_bob": "bob-pw", "ldap_carol": "carol-pw", "ldap_twin1": "twin-pw",
         "ldap_twin2": "twin-pw"}
SERVICE_DN = f"cn=pgbouncer,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "service-pw"


def user_dn(name: str) -> str:
    return f"uid={name},{PEOPLE_DN}"


def _ldif() -> str:
    out = [f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
           f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n",
           f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n",
           f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: pgbouncer\n"
           f"userPassword: {SERVICE_PASSWORD}\n"]
    for name, password in USERS.items():
        entry = (f"dn: {user_dn(name)}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name}\nsn: {name}\n"
                 f"mail: {name}@example.net\nuserPassword: {password}\n")
        if name.startswith("ldap_twin"):
            entry += "description: ldap_twin\n"
        out.append(entry)
    return "\n".join(out)


def _conf(directory: Path, tls: TlsFiles) -> str:
    return "".join(f"{line}\n" for line in (
        *(f"include {SCHEMA_DIR / s}.schema" for s in ("core", "cosine", "inetorgperson")),
        f"pidfile {directory / 'slapd.pid'}",
        f"argsfile {directory / 'slapd.args'}",
        f"modulepath {MODULE_DIR}",
        "moduleload back_mdb",
        f"TLSCACertificateFile {tls.ca}",
        f"TLSCertificateFile {tls.server}",
        f"TLSCertificateKeyFile {tls.server_key}",
        "database mdb",
        "maxsize 16777216",
        f'suffix "{BASE_DN}"',
        f'rootdn "cn=admin,{BASE_DN}"',
        f"directory {directory / 'db'}",
        "access to attrs=userPassword by anonymous auth by * none",
        "access to * by users read by anonymous auth",
    ))


class Slapd:
    """slapd in `directory`: .port (ldap://, StartTLS offered), .tls_port (ldaps://), .tls (the certificates).
    It listens on 127.0.0.1 and on `wrong_host`, an address its certificate does not name."""

    host = "127.0.0.1"
    wrong_host = "127.0.0.3"

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.tls = TlsFiles(self.dir / "tls")
        self.port = 0
        self.tls_port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "slapd.log"

    def start(self) -> Slapd:
        if not Path(SLAPD).exists():
            pytest.skip("needs Debian's slapd and ldap-utils (scripts/install-deps.sh)")
        conf = self.dir / "slapd.conf"
        conf.write_text(_conf(self.dir, self.tls))
        (self.dir / "db").mkdir(exist_ok=True)
        (self.dir / "data.ldif").write_text(_ldif())
        load = subprocess.run(["/usr/sbin/slapadd", "-q", "-f", conf, "-l", self.dir / "data.ldif"],
                              capture_output=True, text=True, timeout=60)
        if load.returncode != 0:
            raise HarnessError(f"slapadd failed: {load.stdout}{load.stderr}")
        for _attempt in range(3):
            self.port, self.tls_port = free_port(), free_port()
            urls = " ".join(f"{scheme}://{host}:{port}/" for host in (self.host, self.wrong_host)
                            for scheme, port in (("ldap", self.port), ("ldaps", self.tls_port)))
            with open(self.log_path, "ab") as log:
                # -d keeps slapd in the foreground (our child); level 0 logs only what goes wrong
                self.proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", urls, "-d", os.environ.get("SLAPD_DEBUG", "0")],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
            try:
                wait_until(lambda: self.proc.poll() is not None or self.answers(), 15,
                           message="slapd to listen")
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                return self
            if "Address already in use" not in self.log():
                break
        raise HarnessError(f"slapd did not start (exit {self.proc.returncode}):\n{self.log()[-3000:]}")

    def answers(self) -> bool:
        for port in (self.port, self.tls_port):
            try:
                socket.create_connection((self.host, port), timeout=1).close()
            except OSError:
                return False
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # option lines (pg_hba.conf syntax) for this directory; extra=value replaces or adds, extra=None drops
    def simple_bind(self, **extra: str | None) -> str:
        return options(**{"ldapserver": self.host, "ldapport": str(self.port), "ldapprefix": "uid=",
                          "ldapsuffix": f",{PEOPLE_DN}", **extra})

    def search_bind(self, **extra: str | None) -> str:
        return options(**{"ldapserver": self.host, "ldapport": str(self.port), "ldapbasedn": BASE_DN,
                          "ldapbinddn": SERVICE_DN, "ldapbindpasswd": SERVICE_PASSWORD, **extra})


def options(**opts: str | None) -> str:
    """name=value pairs for an hba ldap line; values with blanks, commas or quotes go in double quotes."""
    out = []
    for name, value in opts.items():
        if value is None:
            continue
        if value and not any(c in value for c in ' \t,"#='):
            out.append(f"{name}={value}")
        else:
            out.append(f'{name}="{value.replace(chr(34), chr(34) * 2)}"')
    return " ".join(out)


def slapd_fixture(scope: str = "module"):
    """A pytest fixture that runs one Slapd for the module (or the given scope)."""

    @pytest.fixture(scope=scope)
    def slapd(tmp_path_factory):
        d = tmp_path_factory.mktemp("slapd")
        server = Slapd(d)
        try:
            yield server.start()
        finally:
            server.stop()
            with contextlib.suppress(OSError):
                shutil.rmtree(d / "db")

    return slapd
