"""SHOW FDS (file descriptors passed with SCM_RIGHTS to a same-uid 'pgbouncer' console on the unix socket, which is
how an online restart receives them) and the pgbouncer-py-only SHOW TAKEOVER_STATE that freezes for the handover."""

import os
import time

from pgbouncer_py import takeover
from pgbouncer_py.admin.parse import AdminError
from pgbouncer_py.log import log
from pgbouncer_py.objects import registry
from pgbouncer_py.proto import build

TEXT, INT4, INT8, BYTEA = 25, 23, 20, 17
_FDS_TYPES = (INT4, TEXT, TEXT, TEXT, TEXT, INT4, INT8, INT4, TEXT, TEXT, TEXT, TEXT, TEXT, BYTEA, BYTEA)


def _can_pass_fds(client) -> bool:
    return client.is_unix and client.username == "pgbouncer" and client.peer_uid == os.getuid()


def _wait_flushed(console, then) -> None:
    """Call then() once every socket to hand over has flushed its buffers (or suspend_timeout passed)."""
    loop = registry.loop
    deadline = time.monotonic() + float(registry.cfg.suspend_timeout or 10)

    def check():
        if console.client.transport is None or console.client.transport.is_closing():
            return
        t = console.client.transport
        if (takeover.flushed() and t.get_write_buffer_size() == 0) or time.monotonic() > deadline:
            try:
                then()
            except (AdminError, takeover.TakeoverError, OSError) as e:
                log.error(f"{console.client.prefix()}takeover: {e}")
                console.client.close(str(e))
            return
        loop.call_later(0.01, check)

    loop.call_soon(check)       # after the console has noted the deferred answer


def show_fds(console, arg):
    client = console.client
    cols = list(zip(takeover.FDS_COLUMNS, _FDS_TYPES, strict=True))
    rows = takeover.fds_rows()
    if not _can_pass_fds(client):
        return build.row_description(cols) + b"".join(build.data_row(r) for _, r in rows) + \
            build.command_complete("SHOW")

    def send():
        rows = takeover.fds_rows()
        chunks = [(build.row_description(cols), None)]
        chunks += [(build.data_row(r), fd) for fd, r in rows]
        chunks.append((build.command_complete("SHOW"), None))
        fd = client.transport.get_extra_info("socket").fileno()
        takeover.send_with_fds(fd, chunks, float(registry.cfg.suspend_timeout or 10))
        console.finish_deferred(b"")        # ReadyForQuery, through the (empty) transport buffer
        if registry.suspended and registry.main is not None:
            registry.main.handed_over()
        log.info(f"{client.prefix()}sent {len(rows)} file descriptors")

    _wait_flushed(console, send)
    return "defer"


def show_takeover_state(console, arg):
    client = console.client
    if not _can_pass_fds(client):
        raise AdminError("takeover state is only for an online restart (user pgbouncer over the unix socket)")
    takeover.freeze(client)

    def send():
        out = [build.row_description([("fd", INT4), ("state", TEXT)])]
        out += [build.data_row(r) for r in takeover.state_rows()]
        out.append(build.command_complete("SHOW"))
        console.finish_deferred(b"".join(out))

    _wait_flushed(console, send)
    return "defer"
