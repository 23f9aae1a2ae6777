"""The worker threads that run LDAP checks (auth/ldap.py _Workers): results reach the event loop, checks run in
parallel up to the pool size, a check cancelled while queued never runs, and the threads are daemons (a process
that exits never waits for a hung directory). No network: the jobs are plain functions."""

from __future__ import annotations

import asyncio
import threading

from pgbouncer_py.auth import ldap as ldapauth
from pgbouncer_py.config.ldapopts import LdapConfig


def test_results_exceptions_parallelism_and_cancel():
    workers = ldapauth._Workers(2)
    gate = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        ran.append(name)
        if name.startswith("slow"):
            gate.wait(10)
        if name == "boom":
            raise ValueError("boom")
        return name.upper()

    async def main():
        loop = asyncio.get_running_loop()
        slow = [workers.submit(loop, job, "slow1"), workers.submit(loop, job, "slow2")]
        queued = workers.submit(loop, job, "never")       # both threads are busy: it waits in the queue
        queued.cancel()
        await asyncio.sleep(0.05)
        assert sorted(ran) == ["slow1", "slow2"]           # two at once
        gate.set()
        assert await asyncio.gather(*slow) == ["SLOW1", "SLOW2"]
        fast = workers.submit(loop, job, "fast")
        boom = workers.submit(loop, job, "boom")
        assert await fast == "FAST"
        try:
            await boom
        except ValueError as e:
            assert str(e) == "boom"
        else:
            raise AssertionError("the job's exception did not reach the future")

    asyncio.run(main())
    assert "never" not in ran
    assert workers.threads == 2
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("ldap-"))


def test_check_without_server_fails_clearly():
    outcome = ldapauth.authenticate(LdapConfig(basedn="dc=x"), "alice", "pw")
    assert not outcome.ok and outcome.level == "ERROR"
    assert outcome.reason.startswith("LDAP server not specified (ldapserver)") or \
        outcome.reason.startswith(ldapauth.LIBRARY_MISSING)


def test_search_refuses_filter_characters_before_any_network():
    outcome = ldapauth.authenticate(LdapConfig(servers=("192.0.2.1",), basedn="dc=x"), "a*", "pw")
    assert outcome == ldapauth.Outcome(False, "invalid character in user name for LDAP authentication") or \
        outcome.reason.startswith(ldapauth.LIBRARY_MISSING)
