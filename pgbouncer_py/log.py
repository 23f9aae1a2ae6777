"""Logging in PgBouncer's format: 'YYYY-MM-DD HH:MM:SS.mmm TZ [PID] LEVEL message' to stderr, logfile and syslog."""

import os
import sys
import syslog
import time

LEVELS = {"FATAL": 0, "ERROR": 1, "WARNING": 2, "LOG": 3, "DEBUG": 4, "NOISE": 5}
_SYSLOG_PRIO = {"FATAL": 2, "ERROR": 3, "WARNING": 4, "LOG": 6, "DEBUG": 7, "NOISE": 7}


_second_cache: list = [None, "", ""]       # [whole second, "YYYY-MM-DD HH:MM:SS", "TZ"]


def format_time(t: float, with_ms: bool = True) -> str:
    sec = int(t)
    c = _second_cache
    if c[0] != sec:
        lt = time.localtime(sec)
        c[1] = time.strftime("%Y-%m-%d %H:%M:%S", lt)
        c[2] = time.strftime("%Z", lt)
        c[0] = sec
    if with_ms:
        return f"{c[1]}.{int((t - sec) * 1000):03d} {c[2]}"
    return f"{c[1]} {c[2]}"


_time = time.time
_MILLIS = tuple(f"{i:03d}" for i in range(1000))


def _write_rest(fd: int, data: bytes, n: int) -> None:
    """The rest of a line of which os.write took only n bytes (a pipe takes a long line in pieces)."""
    while n < len(data):
        data = data[n:]
        n = os.write(fd, data)


class Logger:
    """One logger per process; configured from the config and the -q/-v flags."""

    def __init__(self):
        self.verbose = 0
        self.quiet = False
        self.logfile_path = ""
        self.logfile = None
        self.syslog_on = False
        self.syslog_ident = "pgbouncer"
        self.syslog_facility = "daemon"
        self._syslog = None
        self.pid = os.getpid()
        self._head = (None, "", "", None)   # write(): (second, "date time.", " TZ [PID] ", pid)

    def _new_head(self, t: float) -> tuple:
        format_time(t)
        c = _second_cache
        self._head = h = (c[0], c[1] + ".", f" {c[2]} [{self.pid}] ", self.pid)
        return h

    def configure(self, cfg, quiet: bool | None = None, verbose: int | None = None) -> None:
        if quiet is not None:
            self.quiet = quiet
        if verbose is not None:
            self._cli_verbose = verbose
        self.verbose = max(getattr(self, "_cli_verbose", 0), int(cfg.verbose))
        if cfg.logfile != self.logfile_path:
            self.close_logfile()
            self.logfile_path = cfg.logfile
        self.syslog_on = bool(cfg.syslog)
        if self.syslog_on:
            self._open_syslog(cfg.syslog_ident, cfg.syslog_facility)

    def _open_syslog(self, ident: str, facility: str) -> None:
        fac = {"auth": syslog.LOG_AUTH, "authpriv": getattr(syslog, "LOG_AUTHPRIV", syslog.LOG_AUTH),
               "daemon": syslog.LOG_DAEMON, "user": syslog.LOG_USER}
        for i in range(8):
            fac[f"local{i}"] = getattr(syslog, f"LOG_LOCAL{i}")
        if (ident, facility) != (self.syslog_ident, self.syslog_facility) or self._syslog is None:
            syslog.openlog(ident, syslog.LOG_PID, fac.get(facility, syslog.LOG_DAEMON))
            self.syslog_ident, self.syslog_facility = ident, facility
            self._syslog = syslog

    def reopen(self) -> None:
        """Reopen the logfile (RELOAD/SIGHUP), so logrotate's rename works too."""
        self.close_logfile()

    def close_logfile(self) -> None:
        if self.logfile is not None:
            try:
                os.close(self.logfile)
            except OSError:
                pass
            self.logfile = None

    def enabled(self, level: str) -> bool:
        return LEVELS[level] <= 3 + self.verbose

    def write(self, level: str, message: str) -> None:
        if LEVELS[level] > 3 + self.verbose:
            return
        if "\n" in message:
            message = message.replace("\n", "\n\t")
        # one formatting, one encoding; each destination gets the bytes in one write(2) (no text layer).
        # The line's head is kept per second and pid ("YYYY-MM-DD HH:MM:SS." and " TZ [PID] ") and the
        # milliseconds come from a table: a format spec (":03d") and the pid's str() cost ~2,500 instructions
        # per line, two lines per login (bench/README.md, eleventh run)
        t = _time()
        sec = int(t)
        h = self._head
        if h[0] != sec or h[3] != self.pid:
            h = self._new_head(t)
        line = f"{h[1]}{_MILLIS[int((t - sec) * 1000)]}{h[2]}{level} {message}\n"
        data = None
        if not self.quiet:
            err = sys.stderr
            if err is sys.__stderr__ and err is not None:
                data = line.encode("utf-8", "replace")
                try:
                    n = os.write(2, data)        # (one call less per line than a helper: 2 per login)
                    if n < len(data):
                        _write_rest(2, data, n)
                except (OSError, ValueError):
                    pass
            else:                   # replaced (a test's capture): through its text layer
                try:
                    err.write(line)
                    err.flush()
                except (OSError, ValueError, AttributeError):
                    pass
        if self.logfile_path:
            if self.logfile is None:
                try:
                    self.logfile = os.open(self.logfile_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                           0o666)
                except OSError as e:
                    self.logfile_path_error = str(e)
            if self.logfile is not None:
                try:
                    if data is None:
                        data = line.encode("utf-8", "replace")
                    n = os.write(self.logfile, data)
                    if n < len(data):
                        _write_rest(self.logfile, data, n)
                except OSError:
                    pass
        if self.syslog_on and self._syslog is not None:
            self._syslog.syslog(_SYSLOG_PRIO[level], message)

    def fatal(self, m: str) -> None:
        self.write("FATAL", m)

    def error(self, m: str) -> None:
        self.write("ERROR", m)

    def warning(self, m: str) -> None:
        self.write("WARNING", m)

    def info(self, m: str) -> None:
        self.write("LOG", m)

    def debug(self, m: str) -> None:
        if self.verbose >= 1:
            self.write("DEBUG", m)

    def noise(self, m: str) -> None:
        if self.verbose >= 2:
            self.write("NOISE", m)


log = Logger()
