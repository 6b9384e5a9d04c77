"""The crawl stage: seed URLs -> polite, resumable, SSRF-safe fetching -> WARC files.

* ``config.py``    ``CrawlConfig`` and ``LocalSiteConfig`` (the spec sections)
* ``stage.py``     ``run_crawl(cfg, source, ctx, local_site=None)``: the entry point
* ``crawler.py``   the asyncio crawler (frontier, politeness, fetching, redirects)
* ``urls.py``      URL normalisation, link extraction, scope
* ``netguard.py``  the SSRF guard in the connection layer
* ``robots.py``    robots.txt per origin (protego, RFC 9309)
* ``warc.py``      WARC writing (warcio), the crawl log, the resume checkpoint
* ``localweb.py``  the generated local web site and its server
* ``bench.py``     concurrent vs sequential crawl throughput
"""

from pipeline.crawl.config import CrawlConfig, LocalSiteConfig

_LAZY = {"run_crawl": "pipeline.crawl.stage", "build_site": "pipeline.crawl.localweb",
         "serve_site": "pipeline.crawl.localweb", "LocalSiteServer": "pipeline.crawl.localweb"}


def __getattr__(name):   # keep `import pipeline.spec` light: httpx/warcio load on first use
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)

__all__ = ["CrawlConfig", "LocalSiteConfig", "run_crawl", "build_site", "serve_site",
           "LocalSiteServer"]
