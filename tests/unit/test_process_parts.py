"""The process around the pooler, without a pooler running: signals.py only queues what arrives, main.Pooler maps
each signal to its action and log line, main.wire_hooks connects the core to the console, process.py's pidfile."""

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from pgbouncer_py import hooks, main, process
from pgbouncer_py.admin import console, control
from pgbouncer_py.signals import HANDLED, Signals


class _Cfg:
    pidfile = ""
    so_reuseport = False


# --- signals.py ---
def test_signals_are_queued_in_arrival_order_and_handed_out_one_by_one():
    async def scenario():
        sigs = Signals()
        sigs.arrived = asyncio.Event()
        sigs.record(signal.SIGUSR1)
        sigs.record(signal.SIGHUP)
        assert list(sigs.pending) == [signal.SIGUSR1, signal.SIGHUP]     # recorded, nothing acted on
        got = [await sigs.next(), await sigs.next()]
        waiter = asyncio.ensure_future(sigs.next())
        await asyncio.sleep(0)
        assert not waiter.done()                                          # waits for the next one
        sigs.record(signal.SIGTERM)
        return got, await asyncio.wait_for(waiter, 1)

    assert asyncio.run(scenario()) == ([signal.SIGUSR1, signal.SIGHUP], signal.SIGTERM)


def test_installed_handler_records_a_real_signal():
    async def scenario():
        loop = asyncio.get_running_loop()
        sigs = Signals()
        sigs.install(loop)
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            return await asyncio.wait_for(sigs.next(), 5)
        finally:
            for sig in HANDLED:
                loop.remove_signal_handler(sig)

    previous = signal.getsignal(signal.SIGPIPE)
    try:
        assert asyncio.run(scenario()) == signal.SIGUSR2
    finally:
        signal.signal(signal.SIGPIPE, previous)


# --- main.Pooler: what the loop does with each recorded signal ---
@pytest.mark.parametrize(("sig", "shutting_down", "action", "line"), [
    (signal.SIGINT, False, ("shutdown", "wait_for_servers"), "got SIGINT, shutting down, waiting for servers"),
    (signal.SIGINT, True, ("shutdown", "immediate"), "got SIGINT while shutting down, fast exit"),
    (signal.SIGTERM, False, ("shutdown", "wait_for_clients"), "got SIGTERM, shutting down, waiting for clients"),
    (signal.SIGTERM, True, ("shutdown", "immediate"), "got SIGTERM while shutting down, fast exit"),
    (signal.SIGQUIT, False, ("shutdown", "immediate"), "got SIGQUIT, fast exit"),
    (signal.SIGUSR1, False, ("pause_all",), "got SIGUSR1, pausing all activity"),
    (signal.SIGUSR2, False, ("resume_all",), "got SIGUSR2, continuing"),
    (signal.SIGUSR2, True, None, "got SIGUSR2 while shutting down, ignoring"),
    (signal.SIGHUP, False, ("reload",), "got SIGHUP, re-reading config"),
])
def test_each_signal_has_its_action_and_log_line(monkeypatch, capsys, sig, shutting_down, action, line):
    done = []
    pooler = main.Pooler(_Cfg())
    pooler.shutdown = lambda mode: done.append(("shutdown", mode))
    pooler.loader.reload = lambda: done.append(("reload",))
    monkeypatch.setattr(control, "pause_all", lambda: done.append(("pause_all",)))
    monkeypatch.setattr(control, "resume_all", lambda: done.append(("resume_all",)))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    if shutting_down:
        pooler.shutdown_mode = "wait_for_clients"
    pooler.on_signal(sig)
    assert done == ([action] if action else [])
    assert capsys.readouterr().err.rstrip("\n").endswith(f"LOG {line}")


# --- hooks.py ---
def test_core_hooks_are_inert_until_wired_then_reach_the_console(monkeypatch):
    for name in ("new_console", "hold_transport", "admin_tick"):
        monkeypatch.setattr(hooks, name, getattr(hooks, name))      # restored after the test
    assert hooks.admin_tick(0.0) is None and hooks.hold_transport(None) is None
    with pytest.raises(RuntimeError, match="no admin console wired"):
        hooks.new_console(object())
    main.wire_hooks()
    assert (hooks.new_console, hooks.hold_transport, hooks.admin_tick) == \
        (console.Console, control.hold_transport, control.janitor_tick)


# --- process.py: pidfile ---
def test_pidfile_written_checked_and_removed(tmp_path, capsys):
    path = str(tmp_path / "pgbouncer.pid")
    process.write_pidfile(path)
    assert open(path).read() == f"{os.getpid()}\n"
    with pytest.raises(SystemExit) as e:
        process.check_pidfile(path)              # we are alive: another instance
    assert e.value.code == 1
    assert f"FATAL pidfile '{path}' exists, another instance running?" in capsys.readouterr().err
    process.remove_pidfile(path)
    assert not os.path.exists(path)


def test_stale_pidfile_is_removed_and_a_foreign_one_is_left(tmp_path, capsys):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()                                 # a pid that no process has now
    path = tmp_path / "pgbouncer.pid"
    path.write_text(f"{child.pid}\n")
    process.remove_pidfile(str(path))            # not ours: left alone
    assert path.exists()
    process.check_pidfile(str(path))
    assert not path.exists()
    assert "LOG stale pidfile, removing" in capsys.readouterr().err
