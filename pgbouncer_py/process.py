"""The operating-system process around the pooler: event loop choice, pidfile, daemon fork, user switch, the open
files limit and systemd notifications (sd_notify without libsystemd)."""

import asyncio
import os
import pwd
import resource
import socket

from pgbouncer_py.log import log
from pgbouncer_py.proto import scan


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
        return f"uvloop {uvloop.__version__}"
    except ImportError:
        return "asyncio"


def scan_name() -> str:
    return "compiled" if scan.COMPILED else "python"


def new_event_loop():
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# --- pidfile ---
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


# --- daemon, user ---
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


def lookup_user(name: str):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        log.fatal(f"could not find user '{name}' to switch to")
        raise SystemExit(1) from None


def switch_user(name: str) -> None:
    pw = lookup_user(name)
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


def chown(path: str, pw) -> None:
    if path:
        try:
            os.chown(path, pw.pw_uid, pw.pw_gid)
        except OSError as e:
            log.warning(f"could not chown {path} to {pw.pw_name}: {e.strerror}")


# --- limits and the host ---
def log_fd_limit(cfg) -> None:
    """Log the open files limit against what the configuration may use; raise the soft limit when it is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n_db = max(len(cfg.databases), 1)
    expected = cfg.max_client_conn + cfg.default_pool_size * n_db
    log.info(f"kernel file descriptor limit: {soft} (hard: {hard}); max_client_conn: {cfg.max_client_conn}, "
             f"max expected fd use: {expected}")
    if expected > soft and hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(expected + 100, soft)), hard))
        except (ValueError, OSError):
            pass


def warn_without_tcp_migrate_req() -> None:
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            if f.read().strip() != "0":
                return
    except OSError:
        return
    log.warning("so_reuseport: net.ipv4.tcp_migrate_req is 0, connections still being accepted when this process "
                "stops may be reset; set it to 1 for rolling restarts that lose nothing")


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about READY=1, RELOADING=1, STOPPING=1, STATUS=...; nothing without NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(state.encode())
    except OSError:
        pass
