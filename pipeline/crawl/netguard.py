"""SSRF guard: resolve a host, check EVERY address, then connect to a checked address.

The check lives in the connection layer (an httpcore network backend), so it covers
every connection httpx opens, redirects included, and there is no window between the
check and the connect in which DNS could answer differently (DNS rebinding): the
socket is opened to the very IP that was checked. A refused address raises
``BlockedAddress`` before any packet is sent to it.
"""

from __future__ import annotations

import ipaddress
import socket

import anyio
import httpcore
import httpx


class BlockedAddress(Exception):
    """The host resolves to an address class the spec does not allow."""

    def __init__(self, host: str, addr: str, why: str):
        super().__init__(f"{host} resolves to {addr} ({why}); refused")
        self.host, self.addr, self.why = host, addr, why


def address_verdict(ip: str, allow_loopback: bool, allow_private: bool) -> str | None:
    """``None`` if ``ip`` may be contacted, else a short reason."""
    a = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        a = a.ipv4_mapped
    if a.is_loopback:
        return None if allow_loopback else "loopback"
    if a.is_link_local:                    # 169.254/16 incl. cloud metadata, fe80::/10
        return None if allow_private else "link_local"
    if a.is_private:                        # RFC 1918, ULA, CGNAT is not here (is_private False)
        return None if allow_private else "private"
    if a.is_multicast or a.is_unspecified or a.is_reserved:
        return "reserved"
    if isinstance(a, ipaddress.IPv4Address) and a in ipaddress.ip_network("100.64.0.0/10"):
        return None if allow_private else "private"   # carrier-grade NAT (RFC 6598)
    return None


async def resolve_checked(host: str, port: int, allow_loopback: bool, allow_private: bool
                          ) -> list[str]:
    """All addresses of ``host``, after checking each; raises ``BlockedAddress``."""
    h = host.strip("[]")
    try:
        ipaddress.ip_address(h.split("%", 1)[0])
        addrs = [h]                                    # literal: no DNS needed
    except ValueError:
        infos = await anyio.getaddrinfo(h, port, type=socket.SOCK_STREAM)
        addrs = list(dict.fromkeys(info[4][0] for info in infos))
    for a in addrs:
        why = address_verdict(a, allow_loopback, allow_private)
        if why:
            raise BlockedAddress(h, a, why)
    return addrs


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that only ever connects to addresses that passed the check.
    ``connects`` counts real TCP connection attempts (tests assert on it)."""

    def __init__(self, allow_loopback: bool, allow_private: bool):
        self.inner = httpcore.AnyIOBackend()
        self.allow_loopback, self.allow_private = allow_loopback, allow_private
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addrs = await resolve_checked(host, port, self.allow_loopback, self.allow_private)
        last: Exception | None = None
        for addr in addrs:
            self.connects.append((addr, port))
            try:
                return await self.inner.connect_tcp(addr, port, timeout=timeout,
                                                    local_address=local_address,
                                                    socket_options=socket_options)
            except httpcore.ConnectError as e:
                last = e
        raise last or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(self, *a, **k):   # pragma: no cover - never used
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_client(user_agent: str, allow_loopback: bool, allow_private: bool,
                   connect_timeout_s: float, max_connections: int) -> tuple[httpx.AsyncClient, GuardedBackend]:
    """An httpx AsyncClient whose every TCP connection goes through ``GuardedBackend``.

    httpx has no public hook for the network backend, so the transport's connection
    pool is swapped for one built with it (``AsyncHTTPTransport._pool``, stable since
    httpx 0.18). Redirects are NOT followed by httpx: the crawler follows them itself so
    every hop is checked for scope, robots and loops and logged.
    """
    backend = GuardedBackend(allow_loopback, allow_private)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=max_connections, max_keepalive_connections=max_connections,
        keepalive_expiry=5.0, http1=True, http2=False, network_backend=backend)
    client = httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False,
        headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate",
                 "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"},
        timeout=httpx.Timeout(None, connect=connect_timeout_s))
    return client, backend
