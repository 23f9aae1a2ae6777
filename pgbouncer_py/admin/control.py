"""Console commands that change the process: SET, RELOAD, SHUTDOWN (more come with the admin issue)."""

from pgbouncer_py.admin.console import AdminError
from pgbouncer_py.config import ConfigError
from pgbouncer_py.log import log
from pgbouncer_py.objects import registry
from pgbouncer_py.proto import build


def set_setting(console, key: str, value: str):
    if key in ("client_encoding", "datestyle", "timezone", "standard_conforming_strings",
               "default_transaction_isolation"):
        return build.notice_response("SET ignored") + build.command_complete("SET")
    try:
        new = registry.cfg.with_setting(key, value)
    except ConfigError as e:
        log.warning(str(e))
        raise AdminError(str(e)) from None
    registry.main.apply_config(new)
    return build.command_complete("SET")


def reload(console, arg):
    if arg is not None:
        raise AdminError(f"invalid command 'RELOAD {arg}', use SHOW HELP;")
    ok = registry.main.reload()
    if not ok:
        raise AdminError("RELOAD failed, see logs for additional details", "F0000")
    return build.command_complete("RELOAD")


def shutdown(console, mode: str):
    registry.main.shutdown(mode or "immediate")
    return "defer"


def register() -> None:
    from pgbouncer_py.admin import commands
    commands.ADMIN_COMMANDS.update({"reload": reload, "shutdown": shutdown})


register()
