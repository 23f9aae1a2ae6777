"""Console commands: one function per command, looked up by the first (and second) word."""

from pgbouncer_py import VERSION_STRING
from pgbouncer_py.admin.console import FAKE_SHOW, AdminError, parse_command, parse_set, parse_shutdown
from pgbouncer_py.objects import registry
from pgbouncer_py.proto import build

TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700

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


def result(columns: list[tuple[str, int]], rows: list[list], tag: str = "SHOW") -> bytes:
    out = [build.row_description(columns)]
    out.extend(build.data_row(r) for r in rows)
    out.append(build.command_complete(tag))
    return b"".join(out)


def show_version(console, arg):
    return result([("version", TEXT)], [[VERSION_STRING]])


def show_help(console, arg):
    return build.notice_response("Console usage", detail=HELP_TEXT) + build.command_complete("SHOW")


def show_config(console, arg):
    rows = [list(r) for r in registry.cfg.show_rows()]
    return result([("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)], rows)


SHOW_COMMANDS = {"version": show_version, "help": show_help, "config": show_config}
ADMIN_COMMANDS: dict = {}        # name -> fn(console, arg) for commands that need admin_users
SHOW_ONLY_FOR_ADMIN = set()      # SHOW subcommands that need admin_users (e.g. fds)


def execute(console, sql: str):
    """Run one command; returns bytes to send, or 'defer' when the command answers later."""
    if parse_shutdown(sql) is not None and "shutdown" in ADMIN_COMMANDS:
        console.require_admin()
        data = ADMIN_COMMANDS["shutdown"](console, parse_shutdown(sql))
        return _send(console, data)
    st = parse_set(sql)
    if st is not None:
        console.require_admin()
        from pgbouncer_py.admin import control
        return _send(console, control.set_setting(console, st[0], st[1]))
    cmd = parse_command(sql)
    if cmd is None:
        raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
    word, arg = cmd
    if word in ("show", "select"):
        if arg is None:
            raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
        if arg in FAKE_SHOW:
            return _send(console, result([(arg, TEXT)], [[FAKE_SHOW[arg]]]))
        fn = SHOW_COMMANDS.get(arg)
        if fn is None:
            raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
        if arg in SHOW_ONLY_FOR_ADMIN:
            console.require_admin()
        return _send(console, fn(console, arg))
    fn = ADMIN_COMMANDS.get(word)
    if fn is None:
        raise AdminError(f"invalid command '{sql}', use SHOW HELP;")
    console.require_admin()
    return _send(console, fn(console, arg))


def _send(console, data):
    if data == "defer":
        return "defer"
    if data:
        console.send(data)
    return None


def console_closed(console) -> None:
    """Hook for commands that must notice a console leaving (SUSPEND auto-resume)."""
    for hook in CLOSE_HOOKS:
        hook(console)


CLOSE_HOOKS: list = []


def _load_command_modules() -> None:
    from pgbouncer_py.admin import control  # noqa: F401  (registers its commands)


_load_command_modules()
