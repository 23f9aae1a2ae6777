"""TLS contexts from client_tls_* / server_tls_* settings, with libpq's sslmode semantics."""

import ssl

_PROTOCOLS = {"tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
              "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}


def _apply_protocols(ctx: ssl.SSLContext, spec: str) -> None:
    spec = (spec or "secure").lower().replace(",", " ").split()
    if spec == ["secure"] or not spec:
        versions = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
    elif "all" in spec:
        versions = list(_PROTOCOLS.values())
    else:
        versions = []
        for word in spec:
            if word == "legacy":
                versions += list(_PROTOCOLS.values())
            elif word in _PROTOCOLS:
                versions.append(_PROTOCOLS[word])
            else:
                raise ValueError(f"invalid tls protocol: {word}")
    ctx.minimum_version = min(versions)
    ctx.maximum_version = max(versions)


def _apply_ciphers(ctx: ssl.SSLContext, ciphers: str) -> None:
    c = (ciphers or "default").lower()
    if c in ("default", "secure", "normal", "fast"):
        return
    if c in ("all", "compat", "legacy"):
        ctx.set_ciphers("ALL")
        return
    ctx.set_ciphers(ciphers)


def client_tls_enabled(cfg) -> bool:
    return cfg.client_tls_sslmode != "disable" and bool(cfg.client_tls_key_file and cfg.client_tls_cert_file)


def client_context(cfg) -> ssl.SSLContext:
    """Server-side context for connections from clients."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg.client_tls_cert_file, cfg.client_tls_key_file)
    _apply_protocols(ctx, cfg.client_tls_protocols)
    _apply_ciphers(ctx, cfg.client_tls_ciphers)
    mode = cfg.client_tls_sslmode
    if cfg.client_tls_ca_file:
        ctx.load_verify_locations(cfg.client_tls_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if mode in ("verify-ca", "verify-full") else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(cfg, host: str) -> tuple[ssl.SSLContext, str | None]:
    """Client-side context for connections to PostgreSQL and the server_hostname to check (verify-full)."""
    mode = cfg.server_tls_sslmode
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_protocols(ctx, cfg.server_tls_protocols)
    _apply_ciphers(ctx, cfg.server_tls_ciphers)
    if cfg.server_tls_cert_file and cfg.server_tls_key_file:
        ctx.load_cert_chain(cfg.server_tls_cert_file, cfg.server_tls_key_file)
    if mode in ("verify-ca", "verify-full"):
        if cfg.server_tls_ca_file:
            ctx.load_verify_locations(cfg.server_tls_ca_file)
        else:
            ctx.load_default_certs()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = mode == "verify-full"
        return ctx, host if mode == "verify-full" else None
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx, None
