"""Online restart (-R): take the sockets of a running pgbouncer-py over its unix socket."""

from pgbouncer_py.log import log


def take_over(cfg):
    """Returns the inherited listening fds, or None when there is nothing to take over."""
    log.fatal("online restart (-R) is not supported by this version of pgbouncer-py; use so_reuseport")
    raise SystemExit(1)
