"""robots.txt per origin (RFC 9309), parsed with protego.

RFC 9309 section 2.3.1: a 4xx robots.txt means "no rules" (crawl everything); a 5xx or
an unreachable host means "disallow everything"; at least 500 KiB must be parsed; up to
five redirects are followed. Results are cached for the whole crawl.
"""

from __future__ import annotations

import asyncio

import httpx
from protego import Protego

from pipeline.crawl.netguard import BlockedAddress
from pipeline.crawl.urls import origin_of

ROBOTS_MAX_BYTES = 512 * 1024   # RFC 9309: parse at least 500 KiB


class RobotsCache:
    def __init__(self, client: httpx.AsyncClient, user_agent: str, timeout_s: float,
                 enabled: bool = True):
        self.client, self.ua, self.timeout_s, self.enabled = client, user_agent, timeout_s, enabled
        self._rules: dict[str, Protego | bool] = {}   # True = allow all, False = disallow all
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetch_log: list[dict] = []

    async def _load(self, origin: str) -> Protego | bool:
        lock = self._locks.setdefault(origin, asyncio.Lock())
        async with lock:
            if origin in self._rules:
                return self._rules[origin]
            url = origin + "/robots.txt"
            status, verdict = None, False
            try:
                async with asyncio.timeout(self.timeout_s):
                    resp = await self.client.get(url, follow_redirects=True)
                status = resp.status_code
                if 200 <= status < 300:
                    text = resp.content[:ROBOTS_MAX_BYTES].decode("utf-8", "replace")
                    verdict = Protego.parse(text)
                elif 400 <= status < 500:
                    verdict = True
            except (BlockedAddress, httpx.HTTPError, TimeoutError, OSError):
                verdict = False
            self.fetch_log.append({"url": url, "status": status})
            self._rules[origin] = verdict
            return verdict

    async def allowed(self, url: str) -> bool:
        if not self.enabled:
            return True
        rules = await self._load(origin_of(url))
        if isinstance(rules, bool):
            return rules
        return rules.can_fetch(url, self.ua)

    async def sitemaps(self, url: str) -> list[str]:
        """Sitemap URLs that robots.txt of ``url``'s origin declares."""
        rules = await self._load(origin_of(url))
        return [] if isinstance(rules, bool) else list(rules.sitemaps)

    async def crawl_delay(self, url: str) -> float:
        """Crawl-delay (or 1/request-rate) for our user agent, 0 if none."""
        if not self.enabled:
            return 0.0
        rules = await self._load(origin_of(url))
        if isinstance(rules, bool):
            return 0.0
        delay = rules.crawl_delay(self.ua) or 0.0
        rate = rules.request_rate(self.ua)
        if rate and rate.requests:
            delay = max(delay, rate.seconds / rate.requests)
        return float(delay)
