"""What /metrics needs that SHOW cannot give (pgbouncer-py extension): login and queue-wait histograms and login
failures, recorded by hooks in client.py and pooling.py while the HTTP listener is on (exporter.py exposes them)."""

import bisect
import weakref

from pgbouncer_py.objects import registry

# upper bounds (seconds) of the histogram buckets; +Inf is implied
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Bucket counts of observed durations (seconds); cheap enough for the places that call observe()."""

    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self, extra_zeros: int = 0) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs for the exposition; `extra_zeros` observations of 0 are added."""
        out, n = [], extra_zeros
        for bound, c in zip(BUCKETS, self.counts, strict=False):
            n += c
            out.append((_le(bound), n))
        out.append(("+Inf", n + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


class Recorder:
    """What the console cannot give: the hooks in client.py and pooling.py call it while the listener is on."""

    def __init__(self):
        self.login = weakref.WeakKeyDictionary()     # Database -> Histogram of login durations
        self.wait = weakref.WeakKeyDictionary()      # Database -> Histogram of queue waits that were not zero
        self.login_failures: dict[str, int] = {}     # database name ('' when unknown) -> count

    def logged_in(self, db, seconds: float) -> None:
        h = self.login.get(db)
        if h is None:
            h = self.login[db] = Histogram()
        h.observe(seconds)

    def waited(self, db, seconds: float) -> None:
        h = self.wait.get(db)
        if h is None:
            h = self.wait[db] = Histogram()
        h.observe(seconds)

    def login_failed(self, dbname: str | None) -> None:
        name = dbname if dbname in registry.databases else ""     # no label value per unknown name a client sends
        self.login_failures[name] = self.login_failures.get(name, 0) + 1


recorder: Recorder | None = None      # set by enable(); the hooks test it before anything else


def enable() -> str | None:
    """Start recording; returns why the exposition cannot be served (prometheus_client missing) or None."""
    global recorder
    if recorder is None:
        recorder = Recorder()
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return "the python module prometheus_client is not installed (Debian: python3-prometheus-client)"
    return None


def disable() -> None:
    global recorder
    recorder = None
