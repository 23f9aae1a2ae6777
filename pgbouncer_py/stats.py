"""Per-database traffic counters, stats_period averages and the periodic 'stats:' log line."""

COUNTERS = ("server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
            "xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count",
            "bind_count", "client_login_count")


class Stats:
    """Plain integer counters, added to on the hot path; totals are never reset."""

    __slots__ = COUNTERS

    def __init__(self):
        for c in COUNTERS:
            setattr(self, c, 0)

    def add(self, other: "Stats") -> None:
        for c in COUNTERS:
            setattr(self, c, getattr(self, c) + getattr(other, c))

    def copy(self) -> "Stats":
        s = Stats()
        s.add(self)
        return s

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, c) for c in COUNTERS)


def averages(new: "Stats", old: "Stats", period: float) -> dict[str, int]:
    """Per-second rates for counts/bytes and per-transaction/query averages for times (µs), like PgBouncer."""
    d = {c: getattr(new, c) - getattr(old, c) for c in COUNTERS}
    p = max(period, 1e-9)
    avg = {c: int(d[c] / p) for c in COUNTERS}
    avg["xact_time"] = d["xact_time"] // d["xact_count"] if d["xact_count"] else 0
    avg["query_time"] = d["query_time"] // d["query_count"] if d["query_count"] else 0
    # wait time is averaged over the number of server assignments (clients that waited for a server)
    avg["wait_time"] = d["wait_time"] // d["server_assignment_count"] if d["server_assignment_count"] else 0
    return avg


def stats_log_line(avg: dict[str, int]) -> str:
    return (f"stats: {avg['xact_count']} xacts/s, {avg['query_count']} queries/s, "
            f"{avg['client_parse_count']} client parses/s, {avg['server_parse_count']} server parses/s, "
            f"{avg['bind_count']} binds/s, {avg['client_login_count']} client logins/s, "
            f"in {avg['bytes_received']} B/s, out {avg['bytes_sent']} B/s, "
            f"xact {avg['xact_time']} us, query {avg['query_time']} us, wait {avg['wait_time']} us")
