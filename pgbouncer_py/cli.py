"""Command line exactly like pgbouncer's: [-d] [-R] [-q] [-v...] [-u USER] [-V] [-h] CONFIG."""

import getopt
import os
import pwd
import sys

from pgbouncer_py import VERSION_STRING, __version__
from pgbouncer_py.log import log

USAGE = """%(prog)s is a connection pooler for PostgreSQL.

Usage:
  %(prog)s [OPTION]... CONFIG_FILE

Options:
  -d, --daemon         run in the background (as a daemon)
  -q, --quiet          run quietly
  -R, --reboot         do an online reboot
  -u, --user=USERNAME  assume identity of USERNAME
  -v, --verbose        increase verbosity
  -V, --version        show version, then exit
  -h, --help           show this help, then exit
"""


def version_text() -> str:
    import ssl

    from pgbouncer_py.main import loop_name
    lines = [VERSION_STRING, f"pgbouncer-py {__version__}", f"python {sys.version.split()[0]}",
             f"event loop: {loop_name()}", f"tls: {ssl.OPENSSL_VERSION}"]
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


def parse_args(argv: list[str]) -> Options:
    prog = os.path.basename(argv[0]) if argv else "pgbouncer"
    try:
        opts, args = getopt.gnu_getopt(argv[1:], "dqRu:vVh",
                                       ["daemon", "quiet", "reboot", "user=", "verbose", "version", "help"])
    except getopt.GetoptError as e:
        sys.stderr.write(f"{prog}: {e}\nTry \"{prog} --help\" for more information.\n")
        raise SystemExit(1) from None
    o = Options()
    for flag, value in opts:
        if flag in ("-d", "--daemon"):
            o.daemon = True
        elif flag in ("-q", "--quiet"):
            o.quiet = True
        elif flag in ("-R", "--reboot"):
            o.reboot = True
        elif flag in ("-u", "--user"):
            o.user = value
        elif flag in ("-v", "--verbose"):
            o.verbose += 1
        elif flag in ("-V", "--version"):
            print(version_text())
            raise SystemExit(0)
        elif flag in ("-h", "--help"):
            print(USAGE % {"prog": prog}, end="")
            raise SystemExit(0)
    if len(args) > 1:
        sys.stderr.write(f"{prog}: too many arguments\n")
        raise SystemExit(1)
    o.config = args[0] if args else None
    return o


def check_pidfile(path: str) -> None:
    if not path:
        return
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return
    except OSError as e:
        log.fatal(f"could not read pidfile '{path}': {e.strerror}")
        raise SystemExit(1) from None
    try:
        pid = int(text)
        os.kill(pid, 0)
        alive = True
    except ValueError:
        alive = False
    except ProcessLookupError:
        alive = False
    except PermissionError:
        alive = True
    if alive:
        log.fatal(f"pidfile '{path}' exists, another instance running?")
        raise SystemExit(1)
    log.info("stale pidfile, removing")
    try:
        os.unlink(path)
    except OSError as e:
        log.fatal(f"could not remove stale pidfile '{path}': {e.strerror}")
        raise SystemExit(1) from None


def write_pidfile(path: str) -> None:
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str) -> None:
    if not path:
        return
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(fd, n)
    if fd > 2:
        os.close(fd)
    log.quiet = True
    log.pid = os.getpid()


def switch_user(name: str) -> None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        log.fatal(f"could not find user '{name}' to switch to")
        raise SystemExit(1) from None
    if os.geteuid() == pw.pw_uid:
        return
    try:
        os.initgroups(name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except PermissionError:
        log.fatal(f"setuid() failed to user '{name}': permission denied")
        raise SystemExit(1) from None
    os.environ["HOME"] = pw.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = name


def _lookup_user(name: str):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        log.fatal(f"could not find user '{name}' to switch to")
        raise SystemExit(1) from None


def _chown(path: str, pw) -> None:
    if path:
        try:
            os.chown(path, pw.pw_uid, pw.pw_gid)
        except OSError as e:
            log.warning(f"could not chown {path} to {pw.pw_name}: {e.strerror}")


def main(argv: list[str] | None = None) -> int:
    """Order as PgBouncer: config, root check, takeover or bind, daemonize, pidfile, switch user, run."""
    from pgbouncer_py.config import ConfigError, load_config
    argv = sys.argv if argv is None else argv
    o = parse_args(argv)
    log.quiet = o.quiet
    log.verbose = o.verbose
    log._cli_verbose = o.verbose
    if o.config is None:
        sys.stderr.write("no configuration file specified\n")
        return 1
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
    pw = _lookup_user(user) if user else None
    from pgbouncer_py import main as mainmod
    from pgbouncer_py.net import listen
    inherited = None
    listeners = None
    if o.reboot:
        from pgbouncer_py import takeover
        log.warning("Online restart is deprecated, use so_reuseport instead")
        if pw is not None:
            switch_user(user)      # the old process admits only its own OS user on its unix socket
        inherited = takeover.take_over(cfg)
    check_pidfile(cfg.pidfile)
    if inherited is not None:
        listeners = [listen.adopt_socket(fd, cfg) for fd in inherited.listeners]
    else:
        try:
            listeners = mainmod.open_listeners(cfg)
        except listen.ListenError as e:
            log.fatal(str(e))
            return 1
    if o.daemon:
        daemonize()
    try:
        write_pidfile(cfg.pidfile)
    except OSError as e:
        log.fatal(f"could not write pidfile '{cfg.pidfile}': {e.strerror}")
        return 1
    try:
        if pw is not None and os.geteuid() != pw.pw_uid:
            # after binding (privileged ports, root-owned dirs): hand our files to the user, then switch
            for lst in listeners:
                listen.chown_socket(lst, pw.pw_uid, pw.pw_gid)
            _chown(cfg.pidfile, pw)
            log.debug(f"switching to user {user}")
            if cfg.logfile:
                if not os.path.exists(cfg.logfile):
                    open(cfg.logfile, "a").close()
                _chown(cfg.logfile, pw)
            log.close_logfile()
            switch_user(user)
        return mainmod.run(cfg, listeners=listeners, takeover=inherited)
    finally:
        remove_pidfile(cfg.pidfile)
