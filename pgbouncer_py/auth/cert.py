"""Certificate authentication: the common name (CN) of a verified TLS client certificate must be the
database user, or be mapped to it by an auth_ident_file map."""

from __future__ import annotations

from pgbouncer_py.auth.peer import peer_allowed


def cert_common_name(peer_cert: dict | None) -> str | None:
    """The subject CN of an ssl.SSLSocket.getpeercert() dict (the last one if there are several)."""
    if not peer_cert:
        return None
    cn = None
    for rdn in peer_cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
    return cn


def cert_allowed(peer_cert: dict | None, db_user: str, mapname: str | None, ident) -> bool:
    """Whether the certificate's CN may log in as `db_user`."""
    return peer_allowed(cert_common_name(peer_cert), db_user, mapname, ident)
