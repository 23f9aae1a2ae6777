"""Reload safety against real PostgreSQL: a broken pgbouncer.ini, auth_file or hba file on RELOAD/SIGHUP keeps
the old configuration, every connected client and the ability to log in."""

from __future__ import annotations

import psycopg
import pytest
from rawpg import alive_and_serving

BROKEN_INI = "[pgbouncer\nlisten_port = = =\n"


def _setting(p, name):
    return {r["key"]: r["value"] for r in p.admin_dicts("SHOW CONFIG")}[name]


@pytest.mark.parametrize("how", ["RELOAD", "SIGHUP"])
def test_broken_ini_keeps_old_config_and_clients(pooler_factory, how):
    p = pooler_factory.start({"pool_mode": "transaction", "default_pool_size": 3})
    held = p.connect(autocommit=True)
    good = p.ini_path.read_text()
    p.ini_path.write_text(BROKEN_INI)
    mark = p.log_mark()
    if how == "RELOAD":
        with pytest.raises(Exception, match="RELOAD failed"):
            p.admin("RELOAD")
    else:
        p.reload()
    p.wait_for_log(r"syntax error in configuration", since=mark)
    assert held.execute("select 1").fetchone()[0] == 1
    assert _setting(p, "default_pool_size") == "3"
    assert _setting(p, "pool_mode") == "transaction"
    alive_and_serving(p)
    p.ini_path.write_text(good.replace("default_pool_size = 3", "default_pool_size = 4"))
    p.admin("RELOAD")
    assert _setting(p, "default_pool_size") == "4"
    assert held.execute("select 1").fetchone()[0] == 1


@pytest.mark.parametrize("content", ['"md5user" "md5pass"\n"broken', '"md5user" "md5pass"\n\0\0\0',
                                     '"md5user" "md5pass"\nscramuser scrampass\n'])
def test_broken_userlist_keeps_connections(pooler_factory, content):
    """Like PgBouncer, a broken auth_file line stops parsing: users before it are loaded, the rest cannot log
    in (tests/integration/test_auth_query.py pins that). What must hold: the pooler lives, every connected
    client keeps working, and the users read before the broken line log in."""
    p = pooler_factory.start()
    held = [p.connect(autocommit=True), p.connect("testdb", "scramuser", "scrampass", autocommit=True)]
    userlist = p.workdir / "userlist.txt"
    userlist.write_text(content)
    mark = p.log_mark()
    p.admin("RELOAD")
    p.wait_for_log(r"broken auth file", since=mark)
    for h in held:
        assert h.execute("select 1").fetchone()[0] == 1
    alive_and_serving(p)


def test_missing_userlist_keeps_users(pooler_factory):
    p = pooler_factory.start()
    (p.workdir / "userlist.txt").unlink()
    try:
        p.admin("RELOAD")
    except Exception:
        pass
    with psycopg.connect(p.dsn("testdb", "scramuser", "scrampass"), autocommit=True, connect_timeout=5) as c:
        assert c.execute("select 1").fetchone()[0] == 1
    alive_and_serving(p)


@pytest.mark.parametrize("content", ["host all all 0.0.0.0/0 nosuchmethod\n", "hostx\n", "host all all 999.1/77 md5\n"])
def test_broken_hba_keeps_old_rules(pooler_factory, content):
    p = pooler_factory.start(hba="host all md5user 0.0.0.0/0 md5\nhost all all 0.0.0.0/0 reject\n")
    held = p.connect(autocommit=True)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn("testdb", "scramuser", "scrampass"))
    (p.workdir / "hba.conf").write_text(content)
    try:
        p.admin("RELOAD")
    except Exception:
        pass
    assert held.execute("select 1").fetchone()[0] == 1
    with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=5) as c:      # old rules: md5user allowed
        assert c.execute("select 1").fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError):                                   # ... and the rest rejected
        psycopg.connect(p.dsn("testdb", "scramuser", "scrampass"))
    assert p.is_running()
