"""auth_type=pam against a real PAM stack: libpam-pwdfile with a test password file as service `pgbouncer`.

The root test (pytest -m root) writes /etc/pam.d/pgbouncer, then runs the unprivileged test below as the
test user (PostgreSQL and the pooler refuse root); without that setup the unprivileged test is skipped."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from authutil import login_result

PAM_FILE = Path("/etc/pam.d/pgbouncer")
PWDFILE_ENV = "PGBPY_PAM_PWDFILE"
PAM_USERS = {"md5user": "md5pass", "pamonly": "pampass"}   # md5user's PAM password is its PostgreSQL one


@pytest.mark.skipif(not os.environ.get(PWDFILE_ENV) or not PAM_FILE.exists(),
                    reason="needs the PAM setup made by test_pam_with_real_pam_stack (root)")
@pytest.mark.parametrize("unix", [False, True])
def test_pam_logins(pooler_factory, unix):
    pooler = pooler_factory.start({"auth_type": "pam"}, userlist={})
    assert login_result(pooler.dsn("testdb", "md5user", "md5pass", unix=unix)) == "OK md5user"
    assert login_result(pooler.dsn("testdb", "md5user", "wrong", unix=unix)) == "PAM authentication failed"
    assert login_result(pooler.dsn("testdb", "nosuchuser", "x", unix=unix)) == "PAM authentication failed"
    # PAM accepts pamonly; PostgreSQL has no such role, and its refusal reaches the client
    assert "pamonly" in login_result(pooler.dsn("testdb", "pamonly", "pampass", unix=unix))


@pytest.mark.root
def test_pam_with_real_pam_stack():
    if os.geteuid() != 0:
        pytest.skip("writes /etc/pam.d/pgbouncer: root only")
    module = Path("/lib/x86_64-linux-gnu/security/pam_pwdfile.so")
    if not module.exists() or shutil.which("openssl") is None:
        pytest.skip("needs libpam-pwdfile and openssl (scripts/install-deps.sh)")
    user = os.environ.get("PGBTEST_USER", "pgbtest")
    pw = pwd.getpwnam(user)
    work = Path(tempfile.mkdtemp(prefix="pgbpam"))   # under /tmp, reachable for the test user
    lines = []
    for name, password in PAM_USERS.items():
        hashed = subprocess.run(["openssl", "passwd", "-6", password], capture_output=True, text=True,
                                check=True).stdout.strip()
        lines.append(f"{name}:{hashed}\n")
    pwdfile = work / "passwd"
    pwdfile.write_text("".join(lines))
    for p in (work, pwdfile):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    backup = PAM_FILE.read_bytes() if PAM_FILE.exists() else None
    PAM_FILE.write_text(f"auth required pam_pwdfile.so pwdfile={pwdfile}\naccount required pam_permit.so\n")
    try:
        here = Path(__file__).resolve()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update({PWDFILE_ENV: str(pwdfile), "HOME": pw.pw_dir, "USER": user, "LOGNAME": user,
                    "TMPDIR": str(work), "PYTHONDONTWRITEBYTECODE": "1"})
        proc = subprocess.run(["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()],
                               sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                               f"{here}::test_pam_logins"],
                              cwd=here.parents[2], capture_output=True, text=True, timeout=300)
    finally:
        if backup is None:
            PAM_FILE.unlink()
        else:
            PAM_FILE.write_bytes(backup)
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
