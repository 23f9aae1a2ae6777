"""Asynchronous host name resolution with a cache: answers live dns_max_ttl seconds (or less when the DNS
record says so), failures dns_nxdomain_ttl seconds. Uses aiodns when importable, else the event loop's
resolver (getaddrinfo in its thread pool), so the loop itself never blocks."""

import asyncio
import ipaddress
import socket
import time

from pgbouncer_py.log import log

try:  # optional: c-ares through aiodns gives TTLs and no threads
    import aiodns
except ImportError:  # pragma: no cover - depends on the machine
    aiodns = None


class DNSError(OSError):
    """A host name could not be resolved; str() is the message for logs and clients."""


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class Resolver:
    """One per process; resolve() is a coroutine, concurrent lookups of one name share one query."""

    def __init__(self):
        self.cache: dict[str, tuple[float, list[str] | None, str]] = {}   # host -> (expires, addrs, error)
        self.inflight: dict[str, asyncio.Future] = {}
        self._aiodns = None

    def backend_name(self) -> str:
        return "aiodns" if aiodns is not None else "getaddrinfo"

    async def resolve(self, host: str, cfg) -> list[str]:
        """IP addresses for host (an IP literal is returned as is); raises DNSError."""
        if is_ip_literal(host):
            return [host.strip("[]")]
        now = time.monotonic()
        hit = self.cache.get(host)
        if hit is not None and hit[0] > now:
            if hit[1] is None:
                raise DNSError(hit[2])
            return hit[1]
        fut = self.inflight.get(host)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self.inflight[host] = fut
            try:
                addrs, ttl = await self._lookup(host, cfg)
                max_ttl = cfg.dns_max_ttl
                ttl = max_ttl if ttl is None else min(ttl, max_ttl)
                self.cache[host] = (time.monotonic() + ttl, addrs, "")
                log.debug(f"DNS: {host} = {', '.join(addrs)} (ttl {ttl:g}s)")
                fut.set_result(addrs)
            except (TimeoutError, OSError, ValueError) as e:
                msg = f"DNS lookup failed: {host}: {getattr(e, 'strerror', None) or e}"
                self.cache[host] = (time.monotonic() + cfg.dns_nxdomain_ttl, None, msg)
                log.warning(msg)
                fut.set_exception(DNSError(msg))
            finally:
                self.inflight.pop(host, None)
        return await asyncio.shield(fut)

    async def _lookup(self, host: str, cfg) -> tuple[list[str], float | None]:
        if aiodns is not None:
            return await self._lookup_aiodns(host)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addrs: list[str] = []
        for family, _t, _p, _c, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in addrs:
                addrs.append(sockaddr[0])
        if not addrs:
            raise DNSError(f"no addresses for {host}")
        return addrs, None

    async def _lookup_aiodns(self, host: str) -> tuple[list[str], float | None]:
        if self._aiodns is None:
            self._aiodns = aiodns.DNSResolver(loop=asyncio.get_running_loop())
        addrs: list[str] = []
        ttl = None
        for qtype in ("A", "AAAA"):
            try:
                answers = await self._aiodns.query(host, qtype)
            except aiodns.error.DNSError:
                continue
            for a in answers:
                addrs.append(a.host)
                ttl = a.ttl if ttl is None else min(ttl, a.ttl)
        if not addrs:
            # /etc/hosts names (localhost) are not in DNS: ask the system resolver
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            addrs = list(dict.fromkeys(i[4][0] for i in infos))
            if not addrs:
                raise DNSError(f"no addresses for {host}")
        return addrs, ttl


resolver = Resolver()
