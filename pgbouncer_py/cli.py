"""Command line exactly like pgbouncer's: [-d] [-R] [-q] [-v...] [-u USER] [-V] [-h] CONFIG; then the start-up
steps in PgBouncer's order (config, takeover or bind, daemon, pidfile, user) before main.run."""

import os
import ssl
import sys

from pgbouncer_py import VERSION_STRING, __version__, process, takeover
from pgbouncer_py import main as mainmod
from pgbouncer_py.config import ConfigError, load_config
from pgbouncer_py.log import log
from pgbouncer_py.net import listen

# --help: the lines of PgBouncer's usage text (1.18 to 1.25 print the same), then our own closing line.
USAGE = """%(prog)s is a connection pooler for PostgreSQL.

Usage:
  %(prog)s [OPTION]... CONFIG_FILE

Options:
  -d, --daemon         run in background (as a daemon)
  -q, --quiet          run quietly
  -R, --reboot         do an online reboot
  -u, --user=USERNAME  assume identity of USERNAME
  -v, --verbose        increase verbosity
  -V, --version        show version, then exit
  -h, --help           show this help, then exit

pgbouncer-py reproduces PgBouncer's command line, configuration and console: see pgbouncer(1) and pgbouncer(5).
"""

# PgBouncer's option table, in its order (glibc lists the candidates of an ambiguous prefix in this order).
SHORT_OPTIONS = {"q": False, "v": False, "h": False, "d": False, "V": False, "R": False, "u": True}
LONG_OPTIONS = {"quiet": "q", "verbose": "v", "help": "h", "daemon": "d", "version": "V", "reboot": "R", "user": "u"}


class UsageError(Exception):
    """A bad command line, worded as glibc's getopt_long words it for PgBouncer."""


def version_text() -> str:
    lines = [VERSION_STRING, f"pgbouncer-py {__version__}", f"python {sys.version.split()[0]}",
             f"event loop: {process.loop_name()}", f"tls: {ssl.OPENSSL_VERSION}"]
    try:
        import aiodns  # noqa: F401
        lines.append("adns: aiodns")
    except ImportError:
        lines.append("adns: loop resolver")
    lines.append("systemd: yes")     # sd_notify and socket activation without libsystemd
    return "\n".join(lines)


class Options:
    daemon = False
    quiet = False
    reboot = False
    user = None
    verbose = 0
    config = None


def _long_option(arg: str, rest: list[str]) -> tuple[str, str | None]:
    """One --name[=value] argument -> (short letter, value); may take the value from `rest` (--user NAME)."""
    name, eq, value = arg[2:].partition("=")
    if name in LONG_OPTIONS:
        matches = [name]
    else:
        matches = [long for long in LONG_OPTIONS if long.startswith(name)]
    if not matches:
        raise UsageError(f"unrecognized option '{arg}'")
    if len(matches) > 1:
        raise UsageError(f"option '{arg}' is ambiguous; possibilities:" + "".join(f" '--{m}'" for m in matches))
    letter = LONG_OPTIONS[matches[0]]
    if not SHORT_OPTIONS[letter]:
        if eq:
            raise UsageError(f"option '--{matches[0]}' doesn't allow an argument")
        return letter, None
    if eq:
        return letter, value
    if not rest:
        raise UsageError(f"option '--{matches[0]}' requires an argument")
    return letter, rest.pop(0)


def _short_options(arg: str, rest: list[str]):
    """One -abc cluster -> (letter, value) pairs; -uNAME or -u NAME carries a value."""
    i = 1
    while i < len(arg):
        letter = arg[i]
        if letter not in SHORT_OPTIONS:
            raise UsageError(f"invalid option -- '{letter}'")
        if not SHORT_OPTIONS[letter]:
            yield letter, None
            i += 1
            continue
        if i + 1 < len(arg):
            yield letter, arg[i + 1:]
        elif rest:
            yield letter, rest.pop(0)
        else:
            raise UsageError(f"option requires an argument -- '{letter}'")
        return


def _getopt(args: list[str]):
    """GNU getopt_long over PgBouncer's options: yields (letter, value) in order, then (None, operands).

    Options and operands may be mixed (GNU permutation); `--` ends the options."""
    rest = list(args)
    operands = []
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            operands += rest
            break
        if arg.startswith("--"):
            yield _long_option(arg, rest)
        elif arg.startswith("-") and arg != "-":
            yield from _short_options(arg, rest)
        else:
            operands.append(arg)
    yield None, operands


def _usage_error(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: {message}\nTry \"{prog} --help\" for more information.\n")
    raise SystemExit(1)


def parse_args(argv: list[str]) -> Options:
    """PgBouncer's command line: each option acts when reached (-h and -V exit there), then exactly one
    operand, the configuration file. Errors are glibc's getopt words and PgBouncer's hint, exit status 1."""
    prog = argv[0] if argv else "pgbouncer"  # as given, like PgBouncer's messages
    o = Options()
    try:
        for flag, value in _getopt(argv[1:]):
            if flag is None:
                if len(value) != 1:
                    _usage_error(prog, "no configuration file specified")
                o.config = value[0]
            elif flag == "d":
                o.daemon = True
            elif flag == "q":
                o.quiet = True
            elif flag == "R":
                o.reboot = True
            elif flag == "u":
                o.user = value
            elif flag == "v":
                o.verbose += 1
            elif flag == "V":
                print(version_text())
                raise SystemExit(0)
            elif flag == "h":
                print(USAGE % {"prog": prog}, end="")
                raise SystemExit(0)
    except UsageError as e:
        _usage_error(prog, str(e))
    return o


def main(argv: list[str] | None = None) -> int:
    """Order as PgBouncer: config, root check, takeover or bind, daemonize, pidfile, switch user, run."""
    argv = sys.argv if argv is None else argv
    o = parse_args(argv)
    log.quiet = o.quiet
    log.verbose = o.verbose
    log._cli_verbose = o.verbose
    try:
        cfg = load_config(o.config)
    except ConfigError as e:
        if e.logfile:
            # a logfile set before the bad line gets the lines too, as PgBouncer's (an init script's -d start
            # leaves its reason in /var/log/postgresql, not only on a stderr nobody reads)
            log.logfile_path = e.logfile
        for text in e.messages:
            log.error(text)
        log.fatal("cannot load config file")
        return 1
    except OSError as e:
        log.error(f"could not open config file {o.config}: {e.strerror}")
        log.fatal("cannot load config file")
        return 1
    log.configure(cfg, quiet=o.quiet, verbose=o.verbose)
    user = o.user or cfg.user or None
    if os.geteuid() == 0 and not user:
        log.fatal("PgBouncer should not run as root")
        return 1
    if o.daemon and not cfg.pidfile:
        log.fatal("daemon needs pidfile configured")
        return 1
    pw = process.lookup_user(user) if user else None
    inherited = None
    listeners = None
    if o.reboot:
        log.warning("Online restart is deprecated, use so_reuseport instead")
        if pw is not None:
            process.switch_user(user)      # the old process admits only its own OS user on its unix socket
        inherited = takeover.take_over(cfg)
    process.check_pidfile(cfg.pidfile)
    if inherited is not None:
        listeners = [listen.adopt_socket(fd, cfg) for fd in inherited.listeners]
    else:
        try:
            listeners = mainmod.open_listeners(cfg)
        except listen.ListenError as e:
            log.fatal(str(e))
            return 1
    if o.daemon:
        process.daemonize()
    try:
        process.write_pidfile(cfg.pidfile)
    except OSError as e:
        log.fatal(f"could not write pidfile '{cfg.pidfile}': {e.strerror}")
        return 1
    try:
        if pw is not None and os.geteuid() != pw.pw_uid:
            # after binding (privileged ports, root-owned dirs): hand our files to the user, then switch
            for lst in listeners:
                listen.chown_socket(lst, pw.pw_uid, pw.pw_gid)
            process.chown(cfg.pidfile, pw)
            log.debug(f"switching to user {user}")
            if cfg.logfile:
                if not os.path.exists(cfg.logfile):
                    open(cfg.logfile, "a").close()
                process.chown(cfg.logfile, pw)
            log.close_logfile()
            process.switch_user(user)
        return mainmod.run(cfg, listeners=listeners, takeover=inherited)
    finally:
        process.remove_pidfile(cfg.pidfile)
