"""PAM authentication (auth_type=pam, service `pgbouncer`): the blocking PAM conversation runs in a worker
thread so the event loop never waits for it; python3-pampy (module `pam`) talks to libpam."""

from __future__ import annotations

import concurrent.futures

SERVICE = "pgbouncer"

# PAM modules are not all thread-safe and PgBouncer runs one PAM thread: one worker, requests queue up
_executor: concurrent.futures.ThreadPoolExecutor | None = None


class PamUnavailable(Exception):
    """The python PAM binding is not installed."""


def _check_password(user: str, password: str) -> bool:
    try:
        import pam as pampy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise PamUnavailable("auth_type=pam needs the python3-pampy package (module pam)") from e
    p = pampy.PamAuthenticator()
    return bool(p.authenticate(user, password, service=SERVICE, resetcreds=False))


def check_password(loop, user: str, password: str):
    """Start a PAM check in the worker thread; returns an asyncio future with True/False."""
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pam")
    return loop.run_in_executor(_executor, _check_password, user, password)
