"""Spec models for the crawl stage and for the generated local web site.

Defaults follow common polite-crawler practice (Scrapy's AutoThrottle and Heritrix's
politeness defaults: ~1 s between requests to one host, a handful of connections per
host; RFC 9309 for robots.txt). The quickstart spec overrides the politeness delay for
the loopback site, which is ours to hammer.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.specbase import Model


class CrawlConfig(Model):
    """What to fetch, how politely, and where the limits are.

    ``{local_site}`` in ``seeds``, ``allow_patterns`` and ``deny_patterns`` is replaced
    at run time by the base URL of the served local site (and in ``allowed_domains`` by
    its host), so the spec and the artifact identity never contain a random port.
    """

    seeds: list[str] = Field(default_factory=list, description="start URLs")
    user_agent: str = "forgeflow-crawler/0.1 (+https://github.com/forgeflow/forgeflow)"
    # --- scope ------------------------------------------------------------------------
    allowed_domains: list[str] = Field(
        default_factory=list,
        description="hosts (and their subdomains) to stay on; empty = the seeds' hosts")
    allow_patterns: list[str] = Field(
        default_factory=list, description="regexes; if any are given a URL must match one")
    deny_patterns: list[str] = Field(
        default_factory=list, description="regexes; a URL matching any is skipped")
    max_depth: int = Field(5, ge=0, description="link hops from a seed (seeds are depth 0)")
    max_pages: int = Field(10_000, ge=1, description="URLs fetched at most (incl. failures)")
    max_response_bytes: int = Field(
        5_000_000, ge=1, description="cap on wire bytes AND on decoded bytes of one body")
    content_types: list[str] = Field(
        default_factory=lambda: ["text/html", "application/xhtml+xml", "text/plain"],
        description="MIME types whose responses are kept")
    follow_nofollow: bool = False
    use_sitemaps: bool = Field(
        False, description="also seed from the sitemaps robots.txt lists for the seeds' hosts "
        "(sitemap URLs join depth 0; one level of sitemap index is followed)")
    # --- politeness (resources: they change timing, not which pages are fetched) -------
    per_host_concurrency: int = Field(2, ge=1)
    per_host_delay_s: float = Field(
        1.0, ge=0.0, description="minimum seconds between request starts to one host; "
        "robots.txt Crawl-delay raises it, never lowers it")
    global_concurrency: int = Field(16, ge=1)
    # --- network ------------------------------------------------------------------------
    timeout_s: float = Field(
        20.0, gt=0, description="TOTAL deadline per request (connect + headers + body), "
        "so slow-loris bodies cannot hold a worker forever")
    connect_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, description="extra attempts on 5xx/429/timeouts/conn errors")
    backoff_s: float = Field(0.5, ge=0, description="retry i waits backoff_s * 2**i")
    max_redirects: int = Field(5, ge=0)
    respect_robots: bool = True
    allow_loopback: bool = Field(False, description="allow 127.0.0.0/8 and ::1 (local crawls, tests)")
    allow_private: bool = Field(False, description="allow RFC 1918 / ULA / link-local addresses")
    # --- output and stopping -------------------------------------------------------------
    warc_max_bytes: int = Field(
        100_000_000, ge=1, description="roll to a new WARC file once one reaches this size "
        "(each roll is a resume checkpoint)")
    deadline_s: float = Field(3600.0, gt=0, description="stop cleanly after this many seconds")

    _resource_fields = frozenset({
        "per_host_concurrency", "per_host_delay_s", "global_concurrency", "warc_max_bytes",
    })

    @field_validator("seeds")
    @classmethod
    def _seeds_are_http(cls, v: list[str]) -> list[str]:
        for s in v:
            if not (s.startswith("http://") or s.startswith("https://") or s.startswith("{local_site}")):
                raise ValueError(f"seed {s!r} must be an http(s) URL or start with {{local_site}}")
        return v

    @field_validator("allow_patterns", "deny_patterns")
    @classmethod
    def _patterns_compile(cls, v: list[str]) -> list[str]:
        import re
        for p in v:
            try:
                re.compile(p.replace("{local_site}", "http://127.0.0.1:1"))
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regex: {e}") from None
        return v


class LocalSiteConfig(Model):
    """The generated local web site (see ``pipeline.crawl.localweb``).

    Page kinds are fractions of ``pages``; the ``docs`` section takes the rest. The text
    comes from the Python installation itself (standard-library docstrings and sources,
    translation catalogs of installed packages), so it is real human writing that exists
    on any machine after install, and the site is a pure function of (seed, pages, the
    Python version).
    """

    pages: int = Field(300, ge=20, description="HTML pages to generate (approximate)")
    seed: int = 0
    code_frac: float = Field(0.2, ge=0, le=1, description="stdlib source pages under /code/")
    boilerplate_frac: float = Field(0.08, ge=0, le=1, description="nav/footer/cookie-heavy pages")
    near_dup_frac: float = Field(0.05, ge=0, le=1, description="~2% words changed or a boilerplate paragraph added")
    exact_dup_frac: float = Field(0.03, ge=0, le=1, description="byte-identical copies at another URL")
    spam_frac: float = Field(0.03, ge=0, le=1, description="keyword-stuffed pages")
    other_lang_frac: float = Field(0.05, ge=0, le=1, description="non-English pages under /lang/")
    private_frac: float = Field(0.03, ge=0, le=1, description="robots-disallowed pages under /private/")
    slow_pages: int = Field(3, ge=0, description="pages under /slow/ answered after a delay")
    broken_link_frac: float = Field(0.03, ge=0, le=1, description="pages with a link to a 404")
    adversarial: bool = Field(True, description="link the /bad/ section (bombs, loops, slow-loris)")
    links_per_page: int = Field(4, ge=0, description="related-page links on each content page")
    slow_delay_s: float = Field(1.0, ge=0, description="server delay for /slow/ pages")
    trickle_s: float = Field(30.0, ge=0, description="how long /bad/trickle.html keeps dripping bytes")
    index_page_size: int = Field(25, ge=2, description="entries per section index page (pagination adds depth)")
