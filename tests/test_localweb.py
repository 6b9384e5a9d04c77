"""The generated local web: deterministic, real text, every page kind, served correctly;
and the stage entry point running a crawl of it end to end."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from pipeline.crawl.config import CrawlConfig, LocalSiteConfig
from pipeline.crawl.localweb import LocalSiteServer, build_site, serve_site
from pipeline.crawl.stage import resolve_local_site, run_crawl
from pipeline.stage import StageContext


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("lw")
    return d, build_site(d / "a", LocalSiteConfig(pages=120, seed=7))


def test_build_is_deterministic(built, tmp_path):
    d, info = built
    again = build_site(tmp_path / "b", LocalSiteConfig(pages=120, seed=7))
    assert again["digest"] == info["digest"] and again["kinds"] == info["kinds"]
    other = build_site(tmp_path / "c", LocalSiteConfig(pages=120, seed=8))
    assert other["digest"] != info["digest"]


def test_page_kinds_and_sources(built):
    d, info = built
    k = info["kinds"]
    assert k["docs"] >= 50 and k["code"] == 24
    for kind in ("boilerplate", "near_dup", "exact_dup", "spam", "private", "slow", "json", "pdf"):
        assert k.get(kind, 0) >= 1, kind
    assert 100 <= info["html_pages"] <= 160
    # other languages: real translations shipped with installed packages (apprise es/pt_BR ...)
    assert any(kind.startswith("lang:") and kind != "lang:en" for kind in k)
    site = d / "a"
    # prose is real stdlib documentation, code is real stdlib source
    import ast
    import html

    from pipeline.crawl.localweb import STDLIB

    checked = 0
    for page, kind in info["paths"].items():
        mod = page[len("/docs/"):-len(".html")]
        if kind != "docs" or not page.startswith("/docs/") or "-part" in mod or mod.startswith("index"):
            continue
        src = STDLIB / (mod.replace(".", "/") + ".py")
        src = src if src.exists() else STDLIB / mod.replace(".", "/") / "__init__.py"
        doc = ast.get_docstring(ast.parse(src.read_text(encoding="utf-8")))
        if doc:
            first = " ".join(doc.split("\n\n")[0].split())
            assert html.escape(first) in " ".join((site / page.lstrip("/")).read_text().split())
            checked += 1
    assert checked >= 20
    code_page = next(p for p, kind in info["paths"].items() if kind == "code")
    assert "def " in info["texts"][code_page] or "class " in info["texts"][code_page] \
        or "import " in info["texts"][code_page]
    # exact copies are byte-identical to some docs page
    copy = next(p for p, kind in info["paths"].items() if kind == "exact_dup")
    body = (site / copy.lstrip("/")).read_bytes()
    assert any((site / p.lstrip("/")).read_bytes() == body for p, kind in info["paths"].items() if kind == "docs")


def test_near_duplicates_change_about_two_percent(built):
    d, info = built
    from difflib import SequenceMatcher

    near = [p for p, kind in info["paths"].items() if kind == "near_dup" and "words" in p]
    assert near
    for p in near:
        words = info["texts"][p].split()
        best = max(SequenceMatcher(None, words, info["texts"][q].split(), autojunk=False).ratio()
                   for q, kind in info["paths"].items() if kind == "docs" and q in info["texts"]
                   and abs(len(info["texts"][q].split()) - len(words)) <= 2)
        assert 0.9 < best < 1.0, (p, best)


def test_server_special_paths(built):
    d, _ = built
    with LocalSiteServer(d / "a", slow_delay_s=0.2, trickle_s=0.5) as srv:
        robots = urllib.request.urlopen(srv.url + "/robots.txt").read().decode()
        assert "Disallow: /private/" in robots and f"Sitemap: {srv.url}/sitemap.xml" in robots
        sitemap = urllib.request.urlopen(srv.url + "/sitemap.xml").read().decode()
        assert sitemap.count("<loc>") > 50 and "{{BASE}}" not in sitemap
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.url + "/missing/x.html")
        assert e.value.code == 404
        resp = urllib.request.urlopen(srv.url + "/files/modules.json")
        assert resp.headers["Content-Type"] == "application/json" and json.loads(resp.read())["modules"]
        assert [p for _, p, _ in srv.requests] == ["/robots.txt", "/sitemap.xml", "/missing/x.html",
                                                   "/files/modules.json"]


def test_serve_site_context_manager(built):
    d, _ = built
    with serve_site(d / "a") as base:
        assert base.startswith("http://127.0.0.1:")
        assert b"Local web" in urllib.request.urlopen(base + "/").read()


# ------------------------------------------------------------------------ config + stage
def test_placeholder_is_resolved_outside_identity():
    cfg = CrawlConfig(seeds=["{local_site}/"], allowed_domains=["{local_site}"],
                      allow_patterns=["^{local_site}/docs/"], allow_loopback=True)
    ident = cfg.identity_dict()
    assert ident["seeds"] == ["{local_site}/"] and "per_host_delay_s" not in ident
    r = resolve_local_site(cfg, "http://127.0.0.1:4321")
    assert r.seeds == ["http://127.0.0.1:4321/"] and r.allowed_domains == ["127.0.0.1"]
    assert r.allow_patterns == [r"^http://127\.0\.0\.1:4321/docs/"]


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="seed"):
        CrawlConfig(seeds=["ftp://x"])
    with pytest.raises(ValueError, match="regex"):
        CrawlConfig(allow_patterns=["("])
    with pytest.raises(ValueError, match="extra|Extra"):
        CrawlConfig(max_page=3)


def test_local_site_needs_explicit_loopback(tmp_path):
    ctx = StageContext.for_testing(tmp_path / "out", show_progress=False)
    with pytest.raises(ValueError, match="allow_loopback"):
        run_crawl(CrawlConfig(seeds=["{local_site}/"]), "web", ctx, LocalSiteConfig(pages=20))


def test_run_crawl_on_local_site(tmp_path):
    """The stage entry point as the runner calls it: site built outside the artifact,
    served, crawled, outputs and metrics in place."""
    ctx = StageContext.for_testing(tmp_path / "out", show_progress=False)
    cfg = CrawlConfig(seeds=["{local_site}/docs/index.html"], allow_patterns=["^{local_site}/docs/"],
                      allow_loopback=True, per_host_delay_s=0.0, per_host_concurrency=8, timeout_s=2)
    site_cfg = LocalSiteConfig(pages=40, seed=1)
    summary = run_crawl(cfg, "prose", ctx, site_cfg)
    out = tmp_path / "out"
    rows = pq.read_table(out / "crawl_log.parquet").to_pylist()
    ok = [r for r in rows if r["reason"] == "ok"]
    assert summary["pages_fetched"] == len(ok) >= 15
    assert all("/docs/" in r["url"] for r in ok)
    assert summary["pages_skipped_not_allowed_pattern"] >= 1
    assert (out / "plots" / "status_histogram.png").exists()
    assert (out / "tables" / "crawl_reasons.json").exists()
    assert list((out / "warc").glob("*.warc.gz")) and not list(out.rglob("*.open"))
    assert not (out / "site").exists() and sum(1 for _ in out.rglob("*.html")) == 0
    assert all(isinstance(v, (int, float)) for v in summary.values())
    # calling again on a finished out_dir (a runner retry) does not crawl again
    again = run_crawl(cfg, "prose", ctx, site_cfg)
    assert again["already_complete"] == 1 and again["pages_fetched"] == summary["pages_fetched"]


def test_cached_site_builds_once_and_equals_a_fresh_build(tmp_path, monkeypatch):
    """The user cache holds the same files as a fresh build; later calls (this process or
    another one, which reads the disk) do not build again; server-only fields share the
    cached site, a content field does not."""
    from pipeline.crawl import localweb

    monkeypatch.setenv("FORGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(localweb, "_SITES", {})
    cfg = LocalSiteConfig(pages=40, seed=5)
    site, info, built = localweb.cached_site(cfg)
    assert built and site.is_relative_to(tmp_path / "cache")
    fresh = build_site(tmp_path / "fresh", cfg)
    assert info["digest"] == fresh["digest"]
    files = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "fresh") for p in (tmp_path / "fresh").rglob("*")
                           if p.is_file())
    assert all((site / f).read_bytes() == (tmp_path / "fresh" / f).read_bytes() for f in files)
    assert localweb.cached_site(cfg)[2] is False                       # memory
    monkeypatch.setattr(localweb, "_SITES", {})
    again = localweb.cached_site(cfg.model_copy(update={"slow_delay_s": 0.1, "trickle_s": 1.0}))
    assert again[0] == site and again[2] is False and again[1]["digest"] == info["digest"]  # disk
    other = localweb.cached_site(cfg.model_copy(update={"pages": 41}))
    assert other[2] is True and other[0] != site


def test_crawl_outputs_are_the_same_from_the_cached_site(tmp_path, monkeypatch):
    """A crawl served from the cached site fetches the same pages with the same bytes as one
    that built its site (the first run); only the port in the URLs differs."""
    from pipeline.crawl import localweb

    monkeypatch.setenv("FORGEFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(localweb, "_SITES", {})
    cfg = CrawlConfig(seeds=["{local_site}/"], allow_loopback=True, per_host_delay_s=0.0,
                      per_host_concurrency=8, timeout_s=60, max_pages=200)
    site_cfg = LocalSiteConfig(pages=40, seed=2, adversarial=False)
    logs = []
    for i in range(2):
        ctx = StageContext.for_testing(tmp_path / f"out{i}", show_progress=False)
        summary = run_crawl(cfg, "web", ctx, site_cfg)
        assert summary["local_site_cached"] == i
        rows = pq.read_table(tmp_path / f"out{i}" / "crawl_log.parquet").to_pylist()
        logs.append(sorted((r["url"].split("/", 3)[-1], r["status"], r["reason"], r["bytes"],
                            r["decoded_bytes"], r["depth"]) for r in rows))
    assert logs[0] == logs[1] and len(logs[0]) >= 30
