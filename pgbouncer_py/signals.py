"""Signals record intent only: HUP reload, INT shutdown waiting for servers, TERM shutdown waiting for clients, QUIT
fast exit, USR1 pause, USR2 resume. The handler queues the signal; the process loop (main.Pooler) acts on it."""

import asyncio
import collections
import signal

HANDLED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class Signals:
    """The signals received and not yet acted on, in arrival order."""

    def __init__(self):
        self.pending: collections.deque[int] = collections.deque()
        self.arrived: asyncio.Event | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self.arrived = asyncio.Event()
        for sig in HANDLED:
            loop.add_signal_handler(sig, self.record, sig)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def record(self, sig: int) -> None:
        """The handler: note the signal and wake the loop, nothing else."""
        self.pending.append(sig)
        if self.arrived is not None:
            self.arrived.set()

    async def next(self) -> int:
        """The next signal to act on (waits for one)."""
        while not self.pending:
            self.arrived.clear()
            await self.arrived.wait()
        return self.pending.popleft()
