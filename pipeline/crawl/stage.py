"""Stage entry point: crawl seed URLs (or the generated local site) into WARC files.

Outputs under ``ctx.out_dir``: ``warc/crawl-NNNNN.warc.gz`` (request + response pairs),
``crawl_log.parquet`` (one row per URL considered: status, bytes, timings, depth,
reason), ``state.json`` (the resume checkpoint), ``log/`` (per-checkpoint log parts),
``plots/status_histogram.png`` and ``tables/crawl_reasons.json``.

Resumable: if ``ctx.out_dir`` holds the state of a killed run, the crawl continues from
its last checkpoint (a WARC roll) and refetches nothing that is in a closed WARC file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from pipeline.crawl.config import CrawlConfig, LocalSiteConfig
from pipeline.crawl.crawler import Crawler
from pipeline.crawl.localweb import cached_site, serve_site
from pipeline.crawl.warc import merge_log
from pipeline.ingest.warc import LOCAL_SITE_FIELD
from pipeline.stage import StageContext

PLACEHOLDER = "{local_site}"


def resolve_local_site(cfg: CrawlConfig, base_url: str) -> CrawlConfig:
    """Replace ``{local_site}`` by the served base URL (by its host in allowed_domains,
    regex-escaped in patterns)."""
    host = base_url.split("//", 1)[1].split(":", 1)[0]
    return cfg.model_copy(update={
        "seeds": [s.replace(PLACEHOLDER, base_url) for s in cfg.seeds],
        "allowed_domains": [d.replace(PLACEHOLDER, host) for d in cfg.allowed_domains],
        "allow_patterns": [p.replace(PLACEHOLDER, re.escape(base_url)) for p in cfg.allow_patterns],
        "deny_patterns": [p.replace(PLACEHOLDER, re.escape(base_url)) for p in cfg.deny_patterns],
    })


def _uses_placeholder(cfg: CrawlConfig) -> bool:
    return any(PLACEHOLDER in s for s in
               cfg.seeds + cfg.allowed_domains + cfg.allow_patterns + cfg.deny_patterns)


def _run_async(coro):
    """asyncio.run, also from a thread that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def summarize(table: pa.Table) -> dict:
    """Flat numbers from the crawl log (so a resumed crawl reports the whole crawl)."""
    rows = table.select(["host", "status", "reason", "bytes", "decoded_bytes", "warc_file"]).to_pylist()
    reasons = Counter(r["reason"] for r in rows)
    ok = [r for r in rows if r["reason"] == "ok"]
    out = {
        "pages_fetched": len(ok),
        "bytes": sum(r["bytes"] for r in ok),
        "decoded_bytes": sum(r["decoded_bytes"] for r in ok),
        "hosts": len({r["host"] for r in ok}),
        "redirects": reasons.get("redirect", 0),
        "urls_considered": len(rows),
        "warc_files": len({r["warc_file"] for r in ok if r["warc_file"]}),
        "pages_skipped": sum(v for k, v in reasons.items() if k not in ("ok", "redirect")),
    }
    for reason, n in sorted(reasons.items()):
        if reason not in ("ok", "redirect"):
            out[f"pages_skipped_{reason}"] = n
    for status, n in sorted(Counter(r["status"] for r in rows if r["status"] is not None).items()):
        out[f"status_{status}"] = n
    return out


def _plot_status(ctx: StageContext, summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(k[7:], v) for k, v in summary.items() if k.startswith("status_")]
    if not items:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([k for k, _ in items], [v for _, v in items], color="#4472c4")
    ax.set_xlabel("HTTP status")
    ax.set_ylabel("responses")
    ax.set_title("crawl: status histogram")
    ctx.figure(fig, "status_histogram.png")


def run_crawl(cfg: CrawlConfig, source: str, ctx: StageContext,
              local_site: LocalSiteConfig | None = None, snapshot: str | None = None) -> dict:
    """Crawl ``cfg.seeds`` into ``ctx.out_dir``; returns flat metrics (see ``summarize``).

    With ``local_site`` the site is generated once into the user cache (outside the
    artifact, see ``localweb.cached_site``), served on 127.0.0.1 for the duration of the
    crawl, and ``{local_site}`` in the spec is replaced by its URL. That needs ``allow_loopback: true``: the spec
    must say so explicitly. ``snapshot`` (the source's resolved
    ``snapshot``, part of the identity) is recorded in every WARC file's warcinfo record.
    """
    t0 = time.monotonic()
    out_dir = Path(ctx.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra: dict = {}
    with contextlib.ExitStack() as stack:
        if local_site is not None:
            if not cfg.allow_loopback:
                raise ValueError(f"crawl source {source!r}: a local_site is served on 127.0.0.1, "
                                 "so the crawl spec must set allow_loopback: true")
            t_site = time.perf_counter()
            site_dir, info, built = cached_site(local_site)
            base = stack.enter_context(serve_site(site_dir, slow_delay_s=local_site.slow_delay_s,
                                                  trickle_s=local_site.trickle_s))
            cfg = resolve_local_site(cfg, base)
            extra = {"local_site_files": info["files"], "local_site_html_pages": info["html_pages"],
                     "local_site_build_s": round(time.perf_counter() - t_site, 3),
                     "local_site_cached": int(not built)}
            ctx.note(f"- local site: {info['html_pages']} HTML pages, digest `{info['digest'][:12]}`, "
                     f"served at {base}")
        elif _uses_placeholder(cfg):
            raise ValueError(f"crawl source {source!r} uses {PLACEHOLDER} but the spec has no local_site")
        if not cfg.seeds:
            raise ValueError(f"crawl source {source!r}: no seeds")

        progress = ctx.progress(total=None, unit="pages", desc=f"{ctx.name}:{source}")
        totals = Counter()

        def on_progress(outcome, queued):
            for r in outcome.rows:
                totals["ok" if r["reason"] == "ok" else "skipped"] += 1
                totals["bytes"] += r["bytes"] if r["reason"] == "ok" else 0
            progress.update(1, fetched=totals["ok"], skipped=totals["skipped"],
                            MB=totals["bytes"] / 1e6, queue=queued)

        warc_info = {"software": "forgeflow-crawl/1", "format": "WARC File Format 1.1",
                     "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
                     "robots": "obey" if cfg.respect_robots else "ignore",
                     "http-header-user-agent": cfg.user_agent, "isPartOf": f"{ctx.name}:{source}"}
        if local_site is not None:      # ingest maps this random-port URL to a stable one
            warc_info[LOCAL_SITE_FIELD] = base
        if snapshot is not None:
            warc_info["forgeflow-snapshot"] = snapshot
            ctx.note(f"- snapshot `{snapshot}`")
        run_info = _run_async(Crawler(cfg, out_dir, on_progress).run(warc_info))
        progress.close()

    table = merge_log(out_dir / "log", out_dir / "crawl_log.parquet")
    summary = summarize(table)
    elapsed = time.monotonic() - t0
    summary.update({k: v for k, v in run_info.items()}, **extra)
    summary["elapsed_s"] = round(elapsed, 3)
    summary["pages_per_s"] = round(summary["pages_fetched"] / max(elapsed, 1e-9), 2)
    ctx.metrics(summary)
    _plot_status(ctx, summary)
    ctx.table([{"reason": k[len("pages_skipped_"):], "pages": v} for k, v in summary.items()
               if k.startswith("pages_skipped_")], "crawl_reasons.json")
    ctx.note(f"- crawl `{source}`: {summary['pages_fetched']} pages, {summary['bytes'] / 1e6:.2f} MB, "
             f"{summary['pages_skipped']} skipped, {summary['warc_files']} WARC files, "
             f"{summary['pages_per_s']} pages/s")
    return summary
