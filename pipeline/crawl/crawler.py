"""The asynchronous crawler: a breadth-first frontier, politeness, fetching, WARC output.

Read top to bottom: ``Crawler.run`` walks the frontier one depth level at a time;
``_process`` fetches one frontier URL and follows its redirects; ``_fetch`` is one HTTP
exchange (politeness slot, retries, total deadline, size caps); ``_build_level`` turns
the links found on one level into the next (scope, SSRF, robots, budget); ``_commit``
and ``_checkpoint`` write WARC records, crawl-log rows and the resume state.

Why level-synchronous BFS: the set of pages fetched under ``max_pages``/``max_depth``
then depends only on the site, not on which response happened to arrive first, so
concurrency settings are true resources (not part of the artifact identity) and a
resumed crawl fetches the same pages as an uninterrupted one.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from pipeline.crawl.config import CrawlConfig
from pipeline.crawl.netguard import BlockedAddress, guarded_client, resolve_checked
from pipeline.crawl.robots import RobotsCache
from pipeline.crawl.urls import BadURL, Scope, extract_links, host_of, normalize
from pipeline.crawl.warc import (WarcRoller, read_state, write_log_part, write_state)

RETRY_STATUS = {429, 500, 502, 503, 504}        # transient (RFC 9110 / common practice)
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_ROW_URL = 2048                               # invalid hrefs are truncated in the log


@dataclass
class Fetch:
    """Result of one HTTP exchange (after retries)."""
    url: str
    status: int | None = None
    reason_phrase: str = ""
    http_version: str = "HTTP/1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    wire_bytes: int = 0
    content_type: str = ""
    charset: str | None = None
    started: float = 0.0
    elapsed: float = 0.0
    attempts: int = 0
    skip: str | None = None          # reason when nothing is kept
    ip: str | None = None
    location: str | None = None


@dataclass
class Outcome:
    """Everything one frontier URL produced; committed to disk in one go."""
    url: str
    rows: list[dict] = field(default_factory=list)
    records: list[Fetch] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    claims: set[str] = field(default_factory=set)    # redirect targets this task took


def _row(url, depth, parent, reason, f: Fetch | None = None, redirect_to=None) -> dict:
    return {
        "url": url[:MAX_ROW_URL], "host": host_of(url) if reason not in ("invalid_url",) else "",
        "depth": depth, "status": f.status if f else None, "reason": reason,
        "bytes": f.wire_bytes if f else 0, "decoded_bytes": len(f.body) if f and reason == "ok" else 0,
        "content_type": f.content_type if f else "", "started": f.started if f else time.time(),
        "elapsed_s": f.elapsed if f else 0.0, "attempts": f.attempts if f else 0,
        "parent": parent, "redirect_to": redirect_to, "warc_file": None,
    }


class _Decoder:
    """Incremental Content-Encoding decoder that never inflates more than ``limit`` bytes
    (a 50 KB gzip bomb that would expand to 50 MB is stopped after ``limit``)."""

    def __init__(self, encoding: str):
        enc = encoding.strip().lower()
        if enc in ("", "identity"):
            self.z = None
        elif enc in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self.z = zlib.decompressobj()          # zlib-wrapped; raw fallback below
            self._raw_fallback = True
        else:
            raise ValueError(enc)
        self.enc = enc

    def feed(self, data: bytes, limit: int) -> bytes:
        if self.z is None:
            return data
        out = []
        total = 0
        while data and total <= limit:
            try:
                chunk = self.z.decompress(data, limit + 1 - total)
            except zlib.error:
                if self.enc == "deflate" and getattr(self, "_raw_fallback", False) and total == 0:
                    self.z, self._raw_fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise
            out.append(chunk)
            total += len(chunk)
            data = self.z.unconsumed_tail
        return b"".join(out)


class Crawler:
    def __init__(self, cfg: CrawlConfig, out_dir: Path, on_progress=None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.scope = Scope(cfg.allowed_domains or sorted({host_of(s) for s in cfg.seeds}),
                           cfg.allow_patterns, cfg.deny_patterns)
        self.on_progress = on_progress or (lambda outcome, queued: None)
        self.kept_types = {t.lower() for t in cfg.content_types}
        # frontier state (what state.json holds)
        self.depth = 0
        self.level: list[tuple[str, str | None]] = []      # (url, parent) in order
        self.done: set[str] = set()                         # checkpointed URLs of this level
        self.outlinks: dict[str, list[str]] = {}            # of checkpointed URLs of this level
        self.seen: set[str] = set()
        self.bad_seen: set[str] = set()                     # invalid hrefs already logged
        self.scheduled = 0
        self.ckpt = 0
        # uncommitted work since the last checkpoint
        self.pending_rows: list[dict] = []
        self.pending_done: dict[str, list[str]] = {}
        self.inflight_claims: set[str] = set()
        # per-host politeness
        self._host_sem: dict[str, asyncio.Semaphore] = {}
        self._host_next: dict[str, float] = {}
        self._host_gate: dict[str, asyncio.Lock] = {}
        self._host_delay: dict[str, float] = {}
        self._dns_verdict: dict[str, str | None] = {}
        self.stopped_by_deadline = False

    # ------------------------------------------------------------------ resume state
    @property
    def state_path(self) -> Path:
        return self.out_dir / "state.json"

    def _load_state(self) -> int:
        """Restore the last checkpoint (if any); returns the next WARC file index."""
        st = read_state(self.state_path)
        warc_dir, log_dir = self.out_dir / "warc", self.out_dir / "log"
        warc_index = 0
        if st:
            self.depth, self.level = st["depth"], [tuple(x) for x in st["level"]]
            self.done, self.outlinks = set(st["done"]), st["outlinks"]
            self.seen, self.bad_seen = set(st["seen"]), set(st["bad_seen"])
            self.scheduled, self.ckpt, warc_index = st["scheduled"], st["ckpt"], st["warc_index"]
        if st and st.get("publish") and (warc_dir / (st["publish"] + ".open")).exists():
            os.replace(warc_dir / (st["publish"] + ".open"), warc_dir / st["publish"])
        # drop whatever was written after the last checkpoint
        for p in list(warc_dir.glob("*.open")) if warc_dir.exists() else []:
            p.unlink()
        for p in list(warc_dir.glob("crawl-*.warc.gz")) if warc_dir.exists() else []:
            if int(p.name.split("-")[1].split(".")[0]) >= warc_index:
                p.unlink()
        for p in list(log_dir.glob("part-*")) if log_dir.exists() else []:
            if not p.name.endswith(".parquet") or int(p.name[5:10]) >= self.ckpt:
                p.unlink()
        return warc_index

    def _checkpoint(self, complete: bool = False) -> None:
        """Commit: close the WARC, write the pending log rows and the state file, then
        publish the WARC (see ``pipeline.crawl.warc`` for why in this order)."""
        name = self.warc.close()
        if self.pending_rows or name:
            write_log_part(self.out_dir / "log", self.ckpt, self.pending_rows)
            self.ckpt += 1
        for url, links in self.pending_done.items():
            self.done.add(url)
            self.outlinks[url] = links
        self.pending_rows, self.pending_done = [], {}
        write_state(self.state_path, {
            "version": 1, "complete": complete, "depth": self.depth,
            "level": self.level, "done": sorted(self.done), "outlinks": self.outlinks,
            "seen": sorted(self.seen - self.inflight_claims), "bad_seen": sorted(self.bad_seen),
            "scheduled": self.scheduled, "ckpt": self.ckpt, "warc_index": self.warc.index,
            "stopped_by_deadline": self.stopped_by_deadline, "publish": name,
        })
        if name:
            self.warc.publish(name)

    def _commit(self, o: Outcome) -> None:
        """Write one outcome's records and rows; roll (checkpoint) when the WARC is full."""
        for f in o.records:
            name = self.warc.write_pair(f.url, self._req_headers(f.url), f.status, f.reason_phrase,
                                        f.http_version, f.headers, f.body, f.ip, f.started)
            for r in o.rows:
                if r["url"] == f.url and r["reason"] == "ok":
                    r["warc_file"] = name
        self.pending_rows.extend(o.rows)
        self.pending_done[o.url] = o.links
        self.inflight_claims -= o.claims
        if self.warc.full():
            self._checkpoint()

    def _req_headers(self, url: str) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.client.headers.items()] + [("Host", url.split("/")[2])]

    # ------------------------------------------------------------------ politeness
    async def _slot(self, host: str):
        """Wait for a per-host slot, then for the per-host delay since the previous
        request start. The delay gate is a lock held while sleeping, so starts are at
        least ``delay`` apart in reality, not just on paper (a late wake-up of one task
        cannot squeeze the next one closer)."""
        sem = self._host_sem.setdefault(host, asyncio.Semaphore(self.cfg.per_host_concurrency))
        gate = self._host_gate.setdefault(host, asyncio.Lock())
        await sem.acquire()
        try:
            async with gate:
                while (wait := self._host_next.get(host, 0.0) - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                self._host_next[host] = time.monotonic() + self._host_delay.get(
                    host, self.cfg.per_host_delay_s)
        except BaseException:
            sem.release()
            raise
        return sem

    # ------------------------------------------------------------------ one exchange
    async def _fetch(self, url: str) -> Fetch:
        cfg = self.cfg
        f = Fetch(url=url, started=time.time())
        t0 = time.monotonic()
        host = host_of(url)
        for attempt in range(cfg.retries + 1):
            f.attempts = attempt + 1
            retry = False
            sem = await self._slot(host)
            if attempt == 0:
                f.started, t0 = time.time(), time.monotonic()
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    await self._exchange(f)
                if f.status in RETRY_STATUS and attempt < cfg.retries:
                    retry = True
            except BlockedAddress:
                f.skip = "blocked_address"
            except TimeoutError:
                # headers arrived but the body did not finish (slow-loris): not transient
                f.skip, retry = "timeout", attempt < cfg.retries and f.status is None
            except httpx.InvalidURL:
                f.skip = "invalid_url"
            except (httpx.TransportError, OSError):
                f.skip, retry = "connection_error", attempt < cfg.retries
            except (httpx.DecodingError, zlib.error, ValueError):
                f.skip = "decoding_error"
            finally:
                sem.release()
            if not retry:
                break
            wait = cfg.backoff_s * 2 ** attempt
            retry_after = dict((k.lower(), v) for k, v in f.headers).get("retry-after", "")
            if retry_after.isdigit():              # RFC 9110 10.2.3, capped at the request deadline
                wait = max(wait, min(float(retry_after), cfg.timeout_s))
            f.skip, f.status, f.body, f.wire_bytes, f.headers = None, None, b"", 0, []
            await asyncio.sleep(wait)
        f.elapsed = time.monotonic() - t0
        if f.skip is None and f.status is not None and not (200 <= f.status < 300) \
                and f.status not in REDIRECT_STATUS:
            f.skip = f"http_{f.status}"
        return f

    async def _exchange(self, f: Fetch) -> None:
        """GET with streaming; stops early on type or size; fills ``f``."""
        cfg = self.cfg
        async with self.client.stream("GET", f.url) as resp:
            f.status, f.reason_phrase = resp.status_code, resp.reason_phrase
            f.http_version = resp.http_version
            f.headers = list(resp.headers.multi_items())
            stream = resp.extensions.get("network_stream")
            if stream is not None:
                addr = stream.get_extra_info("server_addr")
                f.ip = addr[0] if addr else None
            ctype = resp.headers.get("content-type", "")
            f.content_type = ctype.split(";")[0].strip().lower()
            f.charset = resp.charset_encoding
            if f.status in REDIRECT_STATUS:
                f.location = resp.headers.get("location")
                return
            if not (200 <= f.status < 300):
                return
            if f.content_type not in self.kept_types:
                f.skip = "content_type"
                return
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cfg.max_response_bytes:
                f.skip = "too_large"
                return
            try:
                decoder = _Decoder(resp.headers.get("content-encoding", ""))
            except ValueError:
                f.skip = "unsupported_encoding"
                return
            chunks, size = [], 0
            async for raw in resp.aiter_raw():
                f.wire_bytes += len(raw)
                if f.wire_bytes > cfg.max_response_bytes:
                    f.skip = "too_large"
                    return
                data = decoder.feed(raw, cfg.max_response_bytes - size)
                size += len(data)
                if size > cfg.max_response_bytes:
                    f.skip = "decoded_too_large"
                    return
                chunks.append(data)
            f.body = b"".join(chunks)

    # ------------------------------------------------------------------ one frontier URL
    async def _process(self, url: str, depth: int, parent: str | None) -> Outcome:
        o = Outcome(url=url)
        chain = [url]
        while True:
            f = await self._fetch(url)
            if f.status in REDIRECT_STATUS and f.skip is None:
                target, why = None, None
                try:
                    target = normalize(f.location, base=url) if f.location else None
                except BadURL:
                    pass
                if target is None:
                    why = "invalid_redirect"
                if target is not None:
                    if target in chain:
                        why = "redirect_loop"
                    elif len(chain) > self.cfg.max_redirects:
                        why = "too_many_redirects"
                o.rows.append(_row(url, depth, parent, why or "redirect", f, redirect_to=target))
                if why:
                    break
                if target in self.seen:
                    break                                      # fetched (or queued) elsewhere
                self.seen.add(target)
                o.claims.add(target)
                self.inflight_claims.add(target)
                skip = await self._admit(target)
                if skip:
                    o.rows.append(_row(target, depth, url, skip))
                    break
                parent, url = url, target
                chain.append(url)
                continue
            if f.skip:
                o.rows.append(_row(url, depth, parent, f.skip, f))
                break
            o.rows.append(_row(url, depth, parent, "ok", f))
            o.records.append(f)
            if f.content_type in ("text/html", "application/xhtml+xml") and depth < self.cfg.max_depth:
                o.links = self._links(f, depth, url, o)
            break
        return o

    def _links(self, f: Fetch, depth: int, page: str, o: Outcome) -> list[str]:
        hrefs, meta_nofollow = extract_links(f.body, page, f.charset)
        if meta_nofollow and not self.cfg.follow_nofollow:
            return []
        links: list[str] = []
        for href, nofollow in hrefs:
            if nofollow and not self.cfg.follow_nofollow:
                continue
            try:
                links.append(normalize(href, base=page))
            except BadURL as e:
                if href not in self.bad_seen:
                    self.bad_seen.add(href)
                    o.rows.append(_row(href, depth + 1, page, e.reason))
        return list(dict.fromkeys(links))

    async def _admit(self, url: str) -> str | None:
        """Skip reason for a URL about to enter the frontier, or ``None``."""
        why = self.scope.reason(url)
        if why:
            return why
        host = host_of(url)
        if host not in self._dns_verdict:
            try:
                parts = urlsplit(url)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                async with asyncio.timeout(self.cfg.connect_timeout_s):
                    await resolve_checked(host, port, self.cfg.allow_loopback, self.cfg.allow_private)
                self._dns_verdict[host] = None
            except BlockedAddress:
                self._dns_verdict[host] = "blocked_address"
            except (OSError, TimeoutError):
                self._dns_verdict[host] = "dns_error"
        if self._dns_verdict[host]:
            return self._dns_verdict[host]
        if not await self.robots.allowed(url):
            return "robots_disallowed"
        if host not in self._host_delay:
            self._host_delay[host] = max(self.cfg.per_host_delay_s, await self.robots.crawl_delay(url))
        return None

    async def _sitemap_urls(self, seeds: list[str]) -> list[tuple[str, str]]:
        """(url, sitemap) pairs from the sitemaps robots.txt declares for the seeds'
        origins; a sitemap index is followed one level. Sitemaps are fetched through the
        same guard, politeness and size cap as pages."""
        import lxml.etree

        out: list[tuple[str, str]] = []
        todo = []
        for origin in dict.fromkeys(s.split("/", 3)[0] + "//" + s.split("/", 3)[2] for s in seeds):
            for sm in await self.robots.sitemaps(origin + "/"):
                todo.append((sm, 0))
        seen_maps: set[str] = set()
        while todo:
            sm, level = todo.pop(0)
            try:
                sm = normalize(sm)
            except BadURL:
                continue
            if sm in seen_maps or await self._admit(sm):
                continue
            seen_maps.add(sm)
            sem = await self._slot(host_of(sm))
            try:
                async with asyncio.timeout(self.cfg.timeout_s):
                    resp = await self.client.get(sm)
                body = resp.content[: self.cfg.max_response_bytes] if resp.status_code == 200 else b""
            except (BlockedAddress, httpx.HTTPError, TimeoutError, OSError):
                body = b""
            finally:
                sem.release()
            try:
                root = lxml.etree.fromstring(body, lxml.etree.XMLParser(resolve_entities=False, no_network=True))
            except (lxml.etree.XMLSyntaxError, ValueError):
                continue
            locs = [t.strip() for t in root.xpath("//*[local-name()='loc']/text()")]
            if etree_name(root) == "sitemapindex":
                todo.extend((loc, level + 1) for loc in locs if level == 0)
                continue
            for loc in locs:
                try:
                    out.append((normalize(loc), sm))
                except BadURL:
                    continue
        return out

    # ------------------------------------------------------------------ levels
    async def _build_level(self, candidates: list[tuple[str, str | None]], depth: int
                           ) -> list[tuple[str, str | None]]:
        level = []
        for url, parent in candidates:
            if url in self.seen:
                continue
            self.seen.add(url)
            why = await self._admit(url)
            if why is None and self.scheduled >= self.cfg.max_pages:
                why = "max_pages"
            if why:
                self.pending_rows.append(_row(url, depth, parent, why))
                continue
            self.scheduled += 1
            level.append((url, parent))
        return level

    async def _run_level(self) -> None:
        todo = [(u, p) for u, p in self.level if u not in self.done]
        queue: asyncio.Queue = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def worker():
            while True:
                try:
                    url, parent = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    o = await self._process(url, self.depth, parent)
                except Exception as e:   # a bug or an odd page must not end the crawl
                    o = Outcome(url=url, rows=[_row(url, self.depth, parent,
                                                    f"crawler_error:{type(e).__name__}")])
                self._commit(o)
                self.on_progress(o, queue.qsize())

        await asyncio.gather(*(worker() for _ in range(min(self.cfg.global_concurrency, max(1, len(todo))))))

    async def run(self, warc_info: dict) -> dict:
        warc_index = self._load_state()
        st = read_state(self.state_path)
        self.warc = WarcRoller(self.out_dir / "warc", self.cfg.warc_max_bytes, warc_index, warc_info)
        if st and st.get("complete"):
            return {"resumed": 1, "already_complete": 1}
        self.client, self.backend = guarded_client(
            self.cfg.user_agent, self.cfg.allow_loopback, self.cfg.allow_private,
            self.cfg.connect_timeout_s, self.cfg.global_concurrency)
        self.robots = RobotsCache(self.client, self.cfg.user_agent, self.cfg.timeout_s,
                                  self.cfg.respect_robots)
        try:
            async with asyncio.timeout(self.cfg.deadline_s):
                if not st:
                    seeds = []
                    for s in self.cfg.seeds:
                        try:
                            seeds.append((normalize(s), None))
                        except BadURL as e:
                            self.pending_rows.append(_row(s, 0, None, e.reason))
                    if self.cfg.use_sitemaps:
                        seeds += await self._sitemap_urls([u for u, _ in seeds])
                    self.level = await self._build_level(seeds, 0)
                while self.level:
                    await self._run_level()
                    if self.depth >= self.cfg.max_depth:
                        break
                    candidates = [(link, url) for url, _ in self.level
                                  for link in self.outlinks.get(url, self.pending_done.get(url, []))]
                    # links of this level that are checkpointed live in outlinks, others pending
                    next_level = await self._build_level(candidates, self.depth + 1)
                    self._promote_level(next_level)
        except TimeoutError:
            self.stopped_by_deadline = True
            for url, parent in self.level:
                if url not in self.done and url not in self.pending_done:
                    self.pending_rows.append(_row(url, self.depth, parent, "deadline"))
                    self.pending_done[url] = []
        finally:
            await self.client.aclose()
        self._checkpoint(complete=True)
        return {"resumed": int(bool(st)), "already_complete": 0,
                "robots_fetched": len(self.robots.fetch_log),
                "stopped_by_deadline": int(self.stopped_by_deadline),
                "tcp_connects": len(self.backend.connects)}

    def _promote_level(self, next_level) -> None:
        """Move to the next depth. Outcomes of the finished level that are not yet
        checkpointed keep their rows and WARC records pending; the next checkpoint commits
        them together with the state of the new level. If the crawl dies before that, the
        last state still describes the old level, so its unfinished pages are fetched
        again and the new level is rebuilt the same way."""
        self.depth += 1
        self.level = next_level
        self.done, self.outlinks, self.pending_done = set(), {}, {}


def etree_name(el) -> str:
    """Local name of an lxml element (namespace stripped)."""
    tag = el.tag if isinstance(el.tag, str) else ""
    return tag.rsplit("}", 1)[-1]
