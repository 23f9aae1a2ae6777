"""Shared fixtures: `pg` (one PostgreSQL cluster per session), `pooler_factory` / `pooler` / `c_pooler`
(pooler processes stopped at teardown, their logs attached to failure reports; see tests/pgutil.py),
and a per-test time limit (PGBTEST_TEST_TIMEOUT seconds, or @pytest.mark.timeout(seconds))."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgutil import PgCluster, PoolerFactory, running  # noqa: E402

try:  # hypothesis keeps an example database in the working directory by default: not in our repo
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("pgbouncer-py", database=None, deadline=None)
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pgbouncer-py"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass

_FACTORY_KEY = pytest.StashKey[PoolerFactory]()
_TIMEOUT_KEY = pytest.StashKey[str]()
TEST_TIMEOUT = float(os.environ.get("PGBTEST_TEST_TIMEOUT", "180"))


class _Watchdog:
    """Per-test time limit. When it expires, SIGALRM makes the main thread fail the test; a test still
    stuck a few seconds later is blocked inside a client library, so its poolers are killed to free it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.armed = False
        self.message = ""

    def on_alarm(self, signum, frame):
        with self.lock:
            if not self.armed:
                return
            self.armed = False
        pytest.fail(self.message, pytrace=True)

    def run(self, item: pytest.Item, limit: float):
        self.message = f"test exceeded its time limit of {limit:g} s (PGBTEST_TEST_TIMEOUT / mark.timeout)"
        done = threading.Event()
        main = threading.main_thread().ident

        def expire():
            with self.lock:
                if done.is_set():
                    return
                item.stash[_TIMEOUT_KEY] = self.message
                signal.pthread_kill(main, signal.SIGALRM)
            if not done.wait(5.0):
                factory = item.stash.get(_FACTORY_KEY, None)
                if factory is not None:
                    item.stash[_TIMEOUT_KEY] += "; its poolers were killed with SIGKILL to unblock it"
                    factory.kill_all()

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        with self.lock:
            self.armed = True
        timer.start()
        return timer, done

    def disarm(self, timer: threading.Timer, done: threading.Event):
        with self.lock:
            self.armed = False
            done.set()
        timer.cancel()


_watchdog = _Watchdog()


def pytest_configure(config: pytest.Config):
    config.addinivalue_line("markers", "timeout(seconds): time limit of this test (default PGBTEST_TEST_TIMEOUT=180)")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, _watchdog.on_alarm)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker is not None and marker.args else TEST_TIMEOUT
    if limit <= 0 or signal.getsignal(signal.SIGALRM) != _watchdog.on_alarm:
        yield
        return
    timer, done = _watchdog.run(item, limit)
    try:
        yield
    finally:
        _watchdog.disarm(timer, done)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory):
    """The session's PostgreSQL cluster (roles, passwords and databases: see tests/pgutil.py)."""
    with running(PgCluster(tmp_path_factory.mktemp("pg"))) as cluster:
        yield cluster


@pytest.fixture
def pooler_factory(request: pytest.FixtureRequest, pg: PgCluster, tmp_path: Path):
    """PoolerFactory: `.start(ini_settings, databases, users, userlist, hba, binary='py'|'c', ...)`."""
    factory = PoolerFactory(pg, tmp_path)
    request.node.stash[_FACTORY_KEY] = factory
    yield factory
    problems = factory.stop_all()
    if problems:
        pytest.fail("pooler teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def factory_for(tmp_path: Path):
    """factory_for(cluster): a PoolerFactory in front of another cluster than `pg` (a module's own one); its
    poolers are stopped at teardown as pooler_factory's are."""
    made: list[PoolerFactory] = []

    def make(cluster: PgCluster) -> PoolerFactory:
        factory = PoolerFactory(cluster, tmp_path / f"cluster{len(made)}")
        made.append(factory)
        return factory
    yield make
    problems = [problem for factory in made for problem in factory.stop_all()]
    if problems:
        pytest.fail("pooler teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def pooler(pooler_factory: PoolerFactory):
    """pgbouncer-py with the default settings in front of `pg`."""
    return pooler_factory.start()


@pytest.fixture
def c_pooler(pooler_factory: PoolerFactory):
    """Debian's PgBouncer with the default settings in front of `pg` (for side-by-side comparisons)."""
    return pooler_factory.start(binary="c")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On a failed setup/call/teardown, attach every pooler's log and the test's PostgreSQL log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _TIMEOUT_KEY in item.stash:
        report.sections.append(("time limit", item.stash[_TIMEOUT_KEY]))
    factory = item.stash.get(_FACTORY_KEY, None)
    if factory is not None and report.failed:
        for title, text in factory.failure_sections():
            report.sections.append((title, text))
