"""TLS for both sides: SSLContexts built from client_tls_* / server_tls_* with libpq's sslmode semantics,
kept in one snapshot (`state`) that a reload or SET replaces only when the new settings load cleanly."""

import _ssl
import ctypes
import os
import ssl
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh

CLIENT_KEYS = ("client_tls_sslmode", "client_tls_key_file", "client_tls_cert_file", "client_tls_ca_file",
               "client_tls_protocols", "client_tls_ciphers", "client_tls13_ciphers", "client_tls_ecdhcurve",
               "client_tls_dheparams")
SERVER_KEYS = ("server_tls_sslmode", "server_tls_key_file", "server_tls_cert_file", "server_tls_ca_file",
               "server_tls_protocols", "server_tls_ciphers", "server_tls13_ciphers")

ALPN = "postgresql"
VERIFY_MODES = ("verify-ca", "verify-full")
_V = ssl.TLSVersion
_PROTOCOLS = {"tlsv1.0": _V.TLSv1, "tlsv1.1": _V.TLSv1_1, "tlsv1.2": _V.TLSv1_2, "tlsv1.3": _V.TLSv1_3}
_ORDER = [_V.TLSv1, _V.TLSv1_1, _V.TLSv1_2, _V.TLSv1_3]
_NO_FLAG = {_V.TLSv1: ssl.OP_NO_TLSv1, _V.TLSv1_1: ssl.OP_NO_TLSv1_1,
            _V.TLSv1_2: ssl.OP_NO_TLSv1_2, _V.TLSv1_3: ssl.OP_NO_TLSv1_3}
_PROTOCOL_GROUPS = {"secure": {_V.TLSv1_2, _V.TLSv1_3}, "default": {_V.TLSv1_2, _V.TLSv1_3},
                    "all": set(_ORDER), "legacy": set(_ORDER)}
# our own readings of the cipher keywords PgBouncer accepts (TLS 1.2 and older; 1.3 suites are separate)
_CIPHER_KEYWORDS = {
    "default": "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20",
    "secure": "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20",
    "fast": "ECDHE+AESGCM:ECDHE+CHACHA20",
    "normal": "HIGH:!aNULL:!eNULL",
    "compat": "HIGH:!aNULL:!eNULL",
    "legacy": "ALL:!aNULL:!eNULL",
    "all": "ALL:!aNULL:!eNULL",
    "insecure": "ALL:!aNULL:!eNULL",
}
# RFC 2409 second Oakley group (1024-bit MODP), for client_tls_dheparams=legacy
_OAKLEY2_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF", 16)


class TlsConfigError(Exception):
    """The *_tls_* settings cannot be turned into a working TLS configuration (logged "TLS setup failed: ...")."""


class TlsSettingError(TlsConfigError):
    """A *_tls_* value that is not valid at all ("invalid client_tls_ciphers: X", logged as is, like PgBouncer)."""


# --- parsing the settings (pure) ---
def parse_protocols(spec: str) -> set:
    """client_tls_protocols / server_tls_protocols -> set of ssl.TLSVersion ('+'/'-' prefixes, ',' ':' or space)."""
    words = (spec or "secure").lower().replace(",", " ").replace(":", " ").split()
    result: set = set()
    for word in words or ["secure"]:
        sign = "+"
        if word[0] in "+-!":
            sign, word = word[0], word[1:]
        if word in _PROTOCOL_GROUPS:
            versions = _PROTOCOL_GROUPS[word]
        elif word in _PROTOCOLS:
            versions = {_PROTOCOLS[word]}
        else:
            raise TlsSettingError(f"invalid tls protocol: {word}")
        if sign == "+":
            result |= versions
        else:
            result -= versions
    if not result:
        raise TlsConfigError(f"no TLS protocol left in {spec!r}")
    return result


def cipher_string(spec: str) -> str:
    """A cipher keyword of the *_tls_ciphers settings, or an OpenSSL cipher list as is."""
    spec = (spec or "default").strip()
    return _CIPHER_KEYWORDS.get(spec.lower(), spec)


def tls13_suites(spec: str) -> str | None:
    """*_tls13_ciphers -> OpenSSL ciphersuites string, None for OpenSSL's defaults."""
    spec = (spec or "").strip()
    if spec.lower() in ("", "default", "secure", "all", "normal"):
        return None
    return ":".join(p for p in spec.replace(",", ":").split(":") if p)


# --- the pieces of OpenSSL that Python's ssl module does not expose ---
_libssl = None


def _ctx_ptr(ctx: ssl.SSLContext) -> int:
    """The SSL_CTX* behind an SSLContext (right after the object header), checked against its options."""
    global _libssl
    if _libssl is None:
        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        _libssl = lib
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or _libssl.SSL_CTX_get_options(ptr) != int(ctx.options):
        raise TlsConfigError("this Python's ssl module does not allow setting TLS 1.3 ciphers, curve lists or "
                             "DH parameters")
    return ptr


def _set_tls13(ctx: ssl.SSLContext, spec: str) -> None:
    suites = tls13_suites(spec)
    if suites is None:
        return
    if not _libssl_call(ctx, "set_ciphersuites", suites):
        raise TlsConfigError("failed to set the TLSv1.3 cipher suites")      # PgBouncer 1.25's words


def _libssl_call(ctx, what: str, arg) -> int:
    ptr = _ctx_ptr(ctx)
    if what == "set_ciphersuites":
        return _libssl.SSL_CTX_set_ciphersuites(ptr, arg.encode())
    if what == "groups":
        return _libssl.SSL_CTX_ctrl(ptr, 92, 0, ctypes.c_char_p(arg.encode()))    # SSL_CTRL_SET_GROUPS_LIST
    if what == "dh_auto":
        return _libssl.SSL_CTX_ctrl(ptr, 118, 1, None)                             # SSL_CTRL_SET_DH_AUTO
    raise ValueError(what)


def _apply_common(ctx: ssl.SSLContext, cfg, side: str) -> None:
    versions = parse_protocols(cfg.get(f"{side}_tls_protocols"))
    lo, hi = min(versions, key=_ORDER.index), max(versions, key=_ORDER.index)
    try:
        ctx.minimum_version, ctx.maximum_version = lo, hi
    except ValueError as e:
        raise TlsConfigError(f"{side}_tls_protocols: {e}") from None
    for v in _ORDER[_ORDER.index(lo):_ORDER.index(hi) + 1]:
        if v not in versions:
            ctx.options |= _NO_FLAG[v]
    ciphers = cfg.get(f"{side}_tls_ciphers")
    try:
        ctx.set_ciphers(cipher_string(ciphers))
    except ssl.SSLError:
        raise TlsSettingError(f"invalid {side}_tls_ciphers: {ciphers}") from None
    _set_tls13(ctx, cfg.get(f"{side}_tls13_ciphers"))


def _load(what: str, fn, *paths) -> None:
    try:
        fn(*paths)
    except (OSError, ssl.SSLError, ValueError) as e:
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TlsConfigError(f"{what} {' / '.join(p for p in paths if p)}: {text}") from None


def _set_curves(ctx: ssl.SSLContext, spec: str) -> None:
    spec = (spec or "auto").strip()
    if spec.lower() in ("auto", "default", ""):
        return
    if spec.lower() == "none":
        raise TlsConfigError("client_tls_ecdhcurve=none is not supported (OpenSSL always needs a key exchange group)")
    groups = spec.replace(",", ":")
    if ":" not in groups:
        try:
            ctx.set_ecdh_curve(groups)
            return
        except (ValueError, ssl.SSLError):
            raise TlsSettingError(f"invalid client_tls_ecdhcurve: {spec}") from None
    if not _libssl_call(ctx, "groups", groups):
        raise TlsSettingError(f"invalid client_tls_ecdhcurve: {spec}")


def _set_dh(ctx: ssl.SSLContext, spec: str) -> None:
    spec = (spec or "auto").strip().lower()
    if spec == "none":
        return
    if spec == "auto":
        _libssl_call(ctx, "dh_auto", None)
        return
    if spec != "legacy":
        raise TlsSettingError(f"invalid client_tls_dheparams: {spec} (none, auto or legacy)")
    pem = dh.DHParameterNumbers(_OAKLEY2_P, 2).parameters().parameter_bytes(
        serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3)
    fd, path = tempfile.mkstemp(prefix="pgbpy-dh")
    try:
        os.write(fd, pem)
        os.close(fd)
        ctx.load_dh_params(path)
    finally:
        os.unlink(path)


# --- building contexts ---
def build_client_context(cfg) -> ssl.SSLContext | None:
    """The context for connections from clients; None when client_tls_sslmode=disable."""
    mode = cfg.client_tls_sslmode
    if mode == "disable":
        return None
    if not cfg.client_tls_key_file or not cfg.client_tls_cert_file:
        raise TlsConfigError(f"client_tls_sslmode={mode} needs client_tls_key_file and client_tls_cert_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load("client_tls_cert_file/client_tls_key_file", ctx.load_cert_chain, cfg.client_tls_cert_file,
          cfg.client_tls_key_file)
    _apply_common(ctx, cfg, "client")
    _set_curves(ctx, cfg.client_tls_ecdhcurve)
    _set_dh(ctx, cfg.client_tls_dheparams)
    if mode in VERIFY_MODES:
        # a certificate is asked for and must chain to client_tls_ca_file (default store when unset)
        if cfg.client_tls_ca_file:
            _load("client_tls_ca_file", ctx.load_verify_locations, cfg.client_tls_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        # allow / prefer / require: a certificate is asked for but optional; one that is sent must chain to
        # client_tls_ca_file (the system store when unset). That is what Debian's PgBouncer does, and what lets
        # auth_type=cert work in these modes.
        if cfg.client_tls_ca_file:
            _load("client_tls_ca_file", ctx.load_verify_locations, cfg.client_tls_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols([ALPN])
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF      # a client that just drops the socket is no TLS error
    return ctx


def build_server_context(cfg) -> ssl.SSLContext | None:
    """The context for connections to PostgreSQL; None when server_tls_sslmode=disable."""
    mode = cfg.server_tls_sslmode
    if mode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_common(ctx, cfg, "server")
    if cfg.server_tls_cert_file or cfg.server_tls_key_file:
        if not (cfg.server_tls_cert_file and cfg.server_tls_key_file):
            raise TlsConfigError("server_tls_cert_file and server_tls_key_file go together")
        _load("server_tls_cert_file/server_tls_key_file", ctx.load_cert_chain, cfg.server_tls_cert_file,
              cfg.server_tls_key_file)
    if mode in VERIFY_MODES:
        if cfg.server_tls_ca_file:
            _load("server_tls_ca_file", ctx.load_verify_locations, cfg.server_tls_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = mode == "verify-full"
        ctx.hostname_checks_common_name = True    # libpq falls back to the CN when there is no SAN
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        # allow / prefer / require: encryption without any certificate check, like libpq without a root cert
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    return ctx


class TlsState:
    """The TLS configuration in use. Replaced as a whole by configure(); readers never see a half-built one."""

    def __init__(self):
        self.client_mode = "disable"
        self.client_ctx: ssl.SSLContext | None = None
        self.server_mode = "disable"
        self.server_ctx: ssl.SSLContext | None = None
        self.client_values: tuple = ()
        self.server_values: tuple = ()
        self.generation = 0          # bumped when the server-side settings change


state = TlsState()


def _values(cfg, keys) -> tuple:
    return tuple(cfg.get(k) for k in keys)


def file_stamp(cfg, keys) -> tuple:
    """mtime/size of the files named by the settings, so RELOAD notices rewritten certificate files."""
    out = []
    for k in keys:
        if k.endswith("_file"):
            path = cfg.get(k)
            try:
                st = os.stat(path) if path else None
                out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
            except OSError:
                out.append("missing")
    return tuple(out)


def configure(cfg, *, force: bool = False) -> bool:
    """Apply cfg's TLS settings; True when the server-side configuration changed (servers need a recycle).
    On failure TlsConfigError says why and the old configuration stays; unchanged settings rebuild nothing."""
    cvals = _values(cfg, CLIENT_KEYS) + file_stamp(cfg, CLIENT_KEYS)
    svals = _values(cfg, SERVER_KEYS) + file_stamp(cfg, SERVER_KEYS)
    client_changed = force or cvals != state.client_values
    server_changed = force or svals != state.server_values
    if not client_changed and not server_changed:
        return False
    cctx = build_client_context(cfg) if client_changed else state.client_ctx
    sctx = build_server_context(cfg) if server_changed else state.server_ctx
    if client_changed:
        state.client_ctx, state.client_mode, state.client_values = cctx, cfg.client_tls_sslmode, cvals
    if server_changed:
        was_off = state.server_ctx is None
        state.server_ctx, state.server_mode, state.server_values = sctx, cfg.server_tls_sslmode, svals
        if was_off and sctx is None:
            return False            # TLS towards servers off before and after: no server is affected
        state.generation += 1
    return server_changed


# --- questions the connection code asks ---
def client_tls_enabled(cfg=None) -> bool:
    """Whether SSLRequest gets 'S' (and direct TLS is accepted)."""
    return state.client_ctx is not None


def client_tls_required() -> bool:
    """client_tls_sslmode require / verify-ca / verify-full: plaintext clients are refused ("SSL required")."""
    return state.client_ctx is not None and state.client_mode in ("require", "verify-ca", "verify-full")


def connection_info(sslobj) -> str:
    """'TLSv1.3/TLS_AES_256_GCM_SHA384' for the login log line and the tls column."""
    if sslobj is None:
        return ""
    cipher = sslobj.cipher()
    return f"{sslobj.version()}/{cipher[0] if cipher else '?'}"


def peer_cert(sslobj) -> dict | None:
    """The verified client certificate as SSLObject.getpeercert() gives it; None when there is none."""
    if sslobj is None:
        return None
    try:
        cert = sslobj.getpeercert()
    except (ValueError, ssl.SSLError):
        return None
    return cert or None


def peer_common_name(cert: dict | None) -> str | None:
    """The subject CN of a getpeercert() dict (cert authentication uses it as the user name)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
