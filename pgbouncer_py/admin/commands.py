"""Console command dispatch over two static tables (show.SHOW_COMMANDS and ADMIN_COMMANDS below): SHOW/SELECT,
SET, SHUTDOWN and the control words, with the admin access checks, and the encoding of their row sets."""

import struct

from pgbouncer_py.admin import control, show
from pgbouncer_py.admin.parse import AdminError, parse_command, parse_pause_timeout, parse_set, parse_shutdown
from pgbouncer_py.admin.show import INT4, INT8, NUMERIC, TEXT, Result  # noqa: F401  (re-exported)
from pgbouncer_py.proto import build

HELP_TEXT = """
\tSHOW HELP|CONFIG|USERS|DATABASES|POOLS|CLIENTS|SERVERS|VERSION
\tSHOW PEERS|PEER_POOLS
\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE
\tSHOW DNS_HOSTS|DNS_ZONES
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS
\tSET key = arg
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL <db>
\tKILL_CLIENT <client_id>
\tSUSPEND
\tSHUTDOWN
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS
\tWAIT_CLOSE [<db>]"""

# SHOW/SELECT of a session setting some drivers ask the console for: a constant answer
FAKE_SHOW = {"client_encoding": "UTF-8", "default_transaction_isolation": "read committed",
             "standard_conforming_strings": "on", "datestyle": "ISO", "timezone": "GMT"}


def result(columns: list[tuple[str, int]], rows: list[list], tag: str = "SHOW") -> bytes:
    """Simple-protocol encoding of a row set (RowDescription, DataRows, CommandComplete)."""
    return encode(Result(columns, rows, tag))


def encode(res: Result, *, describe: bool = True, formats: list[int] | None = None) -> bytes:
    out = [build.row_description(res.columns)] if describe else []
    if formats and any(formats):
        fmts = [formats[0]] * len(res.columns) if len(formats) == 1 else formats
        oids = [c[1] for c in res.columns]
        out.extend(build.data_row([binary_value(v, oid) if f else v for v, oid, f in zip(r, oids, fmts, strict=True)])
                   for r in res.rows)
    else:
        out.extend(build.data_row(r) for r in res.rows)
    out.append(build.command_complete(res.tag))
    return b"".join(out)


def row_description(columns: list[tuple[str, int]], formats: list[int] | None = None) -> bytes:
    """RowDescription with the result format codes a Bind asked for (text when none)."""
    if not formats or not any(formats):
        return build.row_description(columns)
    fmts = [formats[0]] * len(columns) if len(formats) == 1 else formats
    parts = [struct.pack("!H", len(columns))]
    for (name, oid), f in zip(columns, fmts, strict=True):
        size = {INT4: 4, INT8: 8}.get(oid, -1)
        parts.append(build.cstr(name) + struct.pack("!IhIhih", 0, 0, oid, size, -1, f))
    return build.msg(b"T", b"".join(parts))


def binary_value(v, oid: int):
    """A value in PostgreSQL's binary format for the column type (None stays NULL)."""
    if v is None:
        return None
    if oid == INT4:
        return int(v).to_bytes(4, "big", signed=True)
    if oid == INT8:
        return int(v).to_bytes(8, "big", signed=True)
    if oid == NUMERIC:
        return numeric_binary(int(v))
    if isinstance(v, bytes):
        return v
    return str(v).encode()


def numeric_binary(n: int) -> bytes:
    """An integer as a binary numeric: ndigits, weight, sign, dscale, then base-10000 digits."""
    sign = 0x4000 if n < 0 else 0
    n = abs(n)
    digits = []
    while n:
        digits.append(n % 10000)
        n //= 10000
    digits.reverse()
    weight = len(digits) - 1 if digits else 0
    while digits and digits[-1] == 0:     # trailing zero groups are implied by the weight
        digits.pop()
    head = len(digits).to_bytes(2, "big") + weight.to_bytes(2, "big", signed=True) + \
        sign.to_bytes(2, "big") + (0).to_bytes(2, "big")
    return head + b"".join(d.to_bytes(2, "big") for d in digits)


def help_answer() -> bytes:
    return build.notice_response("Console usage", detail=HELP_TEXT) + build.command_complete("SHOW")


# name -> fn(console, arg) for the commands that need admin_users ("set" and "shutdown" are reached through their
# own parsers only)
ADMIN_COMMANDS = {
    "pause": control.cmd_pause, "pause_timeout": control.cmd_pause_timeout, "resume": control.cmd_resume,
    "suspend": control.cmd_suspend, "disable": control.cmd_disable, "enable": control.cmd_enable,
    "reconnect": control.cmd_reconnect, "kill": control.cmd_kill, "kill_client": control.cmd_kill_client,
    "wait_close": control.cmd_wait_close, "reload": control.reload, "shutdown": control.shutdown,
    "set": control.cmd_set,
}
SHOW_ONLY_FOR_ADMIN = frozenset(("fds", "takeover_state"))    # SHOW subcommands that need admin_users


def execute(console, sql: str):
    """Run one command: a Result, raw bytes to send, 'defer' (answers later), or None (nothing to send)."""
    mode = parse_shutdown(sql)
    if mode is not None:
        console.require_admin()
        return ADMIN_COMMANDS["shutdown"](console, mode)
    st = parse_set(sql)
    if st is not None:
        console.require_admin()
        return ADMIN_COMMANDS["set"](console, st)
    bounded = parse_pause_timeout(sql)
    if bounded is not None:
        console.require_admin()
        return ADMIN_COMMANDS["pause_timeout"](console, bounded)
    cmd = parse_command(sql)
    if cmd is None:
        raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
    word, arg = cmd
    if word in ("show", "select"):
        if arg is None:
            raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
        if arg in FAKE_SHOW:
            return Result([(arg, TEXT)], [[FAKE_SHOW[arg]]])
        if arg == "help":
            return help_answer()
        fn = show.SHOW_COMMANDS.get(arg)
        if fn is None:
            raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
        if arg in SHOW_ONLY_FOR_ADMIN:
            console.require_admin()
        return fn(console, arg)
    fn = ADMIN_COMMANDS.get(word)
    if fn is None or word in ("set", "shutdown"):
        raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
    console.require_admin()
    return fn(console, arg)


def is_show(sql: str) -> bool:
    """Whether the command returns rows (the extended protocol describes it without running it twice)."""
    cmd = parse_command(sql)
    return cmd is not None and cmd[0] in ("show", "select") and cmd[1] is not None and cmd[1] != "help"


def console_closed(console) -> None:
    """A console left: commands that wait for it forget it (SUSPEND auto-resume, deferred answers)."""
    control.console_closed(console)
