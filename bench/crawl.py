"""Crawl throughput on the generated local site: concurrent vs sequential, same code.

    .venv/bin/python bench/crawl.py [--pages 300] [--repeat 1]

Builds the local site once (``adversarial=False``, so timeouts of the trap pages do not
dominate the timing), serves it on 127.0.0.1 in this process, and crawls it twice into
temp dirs with ``per_host_delay_s=0``: the baseline with one request at a time
(``global_concurrency=1, per_host_concurrency=1``) and the concurrent crawler
(``global_concurrency=16, per_host_concurrency=8``). Prints pages/s, MB/s and the
speed-up. Both runs fetch the same pages (the level-synchronous frontier makes the page
set independent of concurrency); the script checks that.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.crawl.config import CrawlConfig, LocalSiteConfig
from pipeline.crawl.localweb import build_site, serve_site
from pipeline.crawl.stage import resolve_local_site, run_crawl
from pipeline.stage import StageContext


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-crawl-"))
    try:
        t = time.perf_counter()
        info = build_site(tmp / "site", LocalSiteConfig(pages=args.pages, adversarial=False))
        print(f"site: {info['html_pages']} HTML pages built in {time.perf_counter() - t:.2f}s")
        results = {}
        with serve_site(tmp / "site", slow_delay_s=0.2) as base:
            for name, conc, per_host in (("sequential", 1, 1), ("concurrent", 16, 8)):
                best = None
                for r in range(args.repeat):
                    out = tmp / f"{name}-{r}"
                    cfg = resolve_local_site(CrawlConfig(
                        seeds=["{local_site}/"], allow_loopback=True, per_host_delay_s=0.0,
                        global_concurrency=conc, per_host_concurrency=per_host, max_depth=10), base)
                    ctx = StageContext.for_testing(out, show_progress=False)
                    t = time.perf_counter()
                    s = run_crawl(cfg, "bench", ctx)
                    dt = time.perf_counter() - t
                    urls = {row["url"] for row in pq.read_table(out / "crawl_log.parquet").to_pylist()
                            if row["reason"] == "ok"}
                    if best is None or dt < best[0]:
                        best = (dt, s, urls)
                results[name] = best
                dt, s, _ = best
                print(f"{name:>11}: {s['pages_fetched']} pages in {dt:.2f}s = "
                      f"{s['pages_fetched'] / dt:.1f} pages/s, {s['bytes'] / dt / 1e6:.2f} MB/s")
        assert results["sequential"][2] == results["concurrent"][2], "page sets differ"
        print(f"speed-up concurrent / sequential: {results['sequential'][0] / results['concurrent'][0]:.2f}x "
              f"(same {len(results['concurrent'][2])} pages)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
