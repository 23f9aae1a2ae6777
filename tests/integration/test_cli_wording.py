"""The command line's words against the real PgBouncer (Debian's 1.18 and 1.24.1): bad options get glibc's
getopt messages and PgBouncer's hint, --help lists the same lines, exit statuses agree.

Each binary names itself by its argv[0] in these texts; the test replaces that name by PROG before comparing.
Ours runs in this process (pgbouncer_py.cli.parse_args, what every launcher calls first), to keep this fast; one
test runs `python -m pgbouncer_py` for real.
"""

from __future__ import annotations

import contextlib
import functools
import io
import subprocess
import sys
from pathlib import Path

import pytest
from pgutil import C_PGBOUNCER, PGB124, check_c_pgbouncer, check_pgbouncer_124, clean_env

from pgbouncer_py import cli

OURS_NAME = "/usr/sbin/pgbouncer"

BAD_COMMAND_LINES = [
    ["--bogus"], ["--bogus=1"], ["---x"], ["-x"], ["-dx"], ["-u"], ["-qu"], ["--user"], ["--us"],
    ["--ver"], ["--v"], ["--ver=1"], ["--=x"], ["--help=x"], ["--he=1"], ["--daemon="],
    [], ["--"], ["a.ini", "b.ini"], ["-d", "-q"], ["--dae"], ["-u", "nobody"], ["-x", "-h"],
]


def run(cmd: list[str], args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=clean_env(),
                          stdin=subprocess.DEVNULL)


@functools.cache
def program_name(cmd: tuple[str, ...]) -> str:
    """argv[0] as the program sees it, read from its own --help."""
    first = run(list(cmd), ["--help"]).stdout.splitlines()[0]
    assert first.endswith(" is a connection pooler for PostgreSQL."), first
    return first.removesuffix(" is a connection pooler for PostgreSQL.")


def normalized(cmd: list[str] | None, args: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a real binary, or of ours when cmd is None."""
    if cmd is None:
        code, out, err = ours(args)
        return code, out.replace(OURS_NAME, "PROG"), err.replace(OURS_NAME, "PROG")
    name = program_name(tuple(cmd))
    res = run(cmd, args)
    return res.returncode, res.stdout.replace(name, "PROG"), res.stderr.replace(name, "PROG")


def ours(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.parse_args([OURS_NAME, *args])
        except SystemExit as e:
            code = e.code
    # a good command line returns its options; PgBouncer would go on to load the file
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", params=["c", "c124"])
def real(request) -> list[str]:
    if request.param == "c":
        check_c_pgbouncer()
        return [C_PGBOUNCER]
    check_pgbouncer_124()
    return [PGB124]


@pytest.mark.parametrize("args", BAD_COMMAND_LINES, ids=lambda a: " ".join(a) or "no-args")
def test_bad_command_line_is_worded_as_pgbouncer(real, args):
    expected = normalized(real, args)
    assert expected[0] == 1 and expected[2].endswith('Try "PROG --help" for more information.\n'), expected
    assert normalized(None, args) == expected


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["--he"], ["-h", "-x"], ["-h", "--bogus"], ["-qh"]])
def test_help_lists_the_same_lines(real, args):
    rc, out, err = normalized(real, args)
    ours_rc, ours_out, ours_err = normalized(None, args)
    assert (ours_rc, ours_err) == (rc, err) == (0, "")
    # Everything up to the options' last line is PgBouncer's; the closing line is ours (PgBouncer's points to its
    # own bug tracker and home page).
    head = out.split("\n\nReport bugs to", 1)[0]
    assert head.count("\n") >= 10
    assert ours_out.startswith(head + "\n\n")
    assert "pgbouncer-py" in ours_out[len(head):]


@pytest.mark.parametrize("args", [["-V"], ["--version"], ["-V", "--bogus"], ["-dV"]])
def test_version_first_line_and_status(real, args):
    res = run(real, args)
    code, out, err = ours(args)
    assert (code, err) == (res.returncode, res.stderr) == (0, "")
    assert res.stdout.startswith("PgBouncer 1.")
    assert out.startswith("PgBouncer 1.25.2 (pgbouncer-py ")


def test_python_m_names_the_program_as_started():
    res = run([sys.executable, "-m", "pgbouncer_py"], ["--bogus"])
    prog = f"{Path(sys.executable).name} -m pgbouncer_py"
    assert res.stderr == (f"{prog}: unrecognized option '--bogus'\n"
                          f'Try "{prog} --help" for more information.\n')
    assert res.returncode == 1


@pytest.mark.parametrize("args, expected", [
    (["-dqvv", "--user=bob", "x.ini"], (True, True, False, "bob", 2, "x.ini")),
    (["x.ini", "-R", "-u", "bob", "--verb"], (False, False, True, "bob", 1, "x.ini")),
    (["-ubob", "--", "-x.ini"], (False, False, False, "bob", 0, "-x.ini")),
    (["--daemon", "--quiet", "--reboot", "--user", "", "-"], (True, True, True, "", 0, "-")),
])
def test_good_command_lines(args, expected):
    o = cli.parse_args(["pgbouncer", *args])
    assert (o.daemon, o.quiet, o.reboot, o.user, o.verbose, o.config) == expected
