"""Shared fixtures: `pg` (one PostgreSQL cluster per session), `pooler_factory` / `pooler` / `c_pooler`
(pooler processes stopped at teardown, their logs attached to failure reports); see tests/pgutil.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgutil import C_PGBOUNCER, PgCluster, PoolerFactory  # noqa: E402

try:  # hypothesis keeps an example database in the working directory by default: not in our repo
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("pgbouncer-py", database=None, deadline=None)
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pgbouncer-py"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass

_FACTORY_KEY = pytest.StashKey[PoolerFactory]()


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory):
    """The session's PostgreSQL cluster (roles, passwords and databases: see tests/pgutil.py)."""
    cluster = PgCluster(tmp_path_factory.mktemp("pg"))
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


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
def pooler(pooler_factory: PoolerFactory):
    """pgbouncer-py with the default settings in front of `pg`."""
    return pooler_factory.start()


@pytest.fixture
def c_pooler(pooler_factory: PoolerFactory):
    """Debian's PgBouncer with the default settings in front of `pg` (for side-by-side comparisons)."""
    if not os.access(C_PGBOUNCER, os.X_OK):
        pytest.skip(f"{C_PGBOUNCER} not installed")
    return pooler_factory.start(binary="c")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On a failed setup/call/teardown, attach every pooler's log and the test's PostgreSQL log."""
    outcome = yield
    report = outcome.get_result()
    factory = item.stash.get(_FACTORY_KEY, None)
    if factory is not None and report.failed:
        for title, text in factory.failure_sections():
            report.sections.append((title, text))
