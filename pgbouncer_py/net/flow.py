"""Backpressure between a linked client and server: when one side's send buffer is full, stop reading the other."""


class LinkedFlow:
    """Mixin for the client and server protocols: `link` is the peer, `paused_peer` whether we paused it."""

    __slots__ = ()

    def pause_writing(self) -> None:
        peer = self.link
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()
            self.paused_peer = True

    def resume_writing(self) -> None:
        peer = self.link
        if self.paused_peer and peer is not None and peer.transport is not None:
            self.paused_peer = False
            peer.transport.resume_reading()
