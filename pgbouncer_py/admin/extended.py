"""Extended-protocol messages on the console."""


def message(console, mtype: int, body: bytes) -> None:
    """PgBouncer refuses the extended protocol on the console; so do we until it is supported."""
    console.client.close("extended query protocol not supported by admin console", send_error=True)
