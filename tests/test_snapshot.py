"""Runs that are new when the world is new, and the same when it is not.

``snapshot`` enters a source's identity (a weekly template reruns everything downstream
next week, never on the same day); crawled document ids come from URL + content with the
local web's random port mapped away, so two fresh crawls give the same corpus, split and
token counts; Prefect's task cache is scoped to the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.crawl.config import CrawlConfig, LocalSiteConfig
from pipeline.crawl.stage import run_crawl
from pipeline.engine import parquet_files
from pipeline.ingest.config import ExtractConfig
from pipeline.ingest.stage import run_ingest
from pipeline.ingest.warc import LOCAL_SITE_URL
from pipeline.plan import build_plan
from pipeline.runner import plan_identities
from pipeline.spec import SpecError, load_spec, resolve_snapshot
from pipeline.stage import StageContext
from pipeline.tokenize.config import TokenizeConfig
from pipeline.tokenize.stage import run_tokenize, run_train_tokenizer
from tests.conftest import shared_path
from tests.e2e_util import REPO, mlflow_runs

QUICKSTART = REPO / "configs" / "quickstart.yaml"
MON = datetime(2026, 11, 30, 9, tzinfo=timezone.utc)      # ISO week 49
MON_LATE = datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc)
SUN = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)      # still week 49
NEXT_MON = datetime(2026, 12, 7, 0, 1, tzinfo=timezone.utc)


def test_resolve_snapshot_templates():
    assert resolve_snapshot("{date}", MON) == "2026-11-30"
    assert resolve_snapshot("{week}", SUN) == "2026-W49"
    assert resolve_snapshot("{week}", NEXT_MON) == "2026-W50"
    assert resolve_snapshot("cc-{month}", MON) == "cc-2026-11"
    assert resolve_snapshot("CC-MAIN-2026-49", MON) == "CC-MAIN-2026-49"
    assert resolve_snapshot(None, MON) is None
    with pytest.raises(SpecError, match=r"unknown snapshot field\(s\) \['day'\]"):
        load_spec(QUICKSTART, ["sources.0.snapshot='{day}'"])


def test_snapshot_identity_reruns_downstream_only_when_it_changes():
    def ids(now, *overrides):
        return plan_identities(build_plan(load_spec(QUICKSTART, list(overrides)), now=now))

    plain = ids(MON)
    assert ids(NEXT_MON) == plain                    # no snapshot: time does not matter
    weekly = ("sources.0.snapshot={week}",)          # unquoted, as one types it on a shell
    a, same_week, next_week = ids(MON, *weekly), ids(SUN, *weekly), ids(NEXT_MON, *weekly)
    assert a == same_week                             # a rerun in the same week: all cache hits
    changed = {k for k in a if a[k] != next_week[k]}
    # the snapshotted crawl and everything downstream of it; the other sources stay
    assert {"crawl.docs", "ingest.docs", "model.quality", "filter", "dedup", "tokenizer",
            "tokenize", "pretrain", "continual.code", "evaluate"} == changed
    assert a["crawl.web"] == plain["crawl.web"] and a["crawl.docs"] != plain["crawl.docs"]
    daily = ids(MON, "sources.0.snapshot='{date}'")
    assert daily == ids(MON_LATE, "sources.0.snapshot='{date}'") != ids(NEXT_MON, "sources.0.snapshot='{date}'")
    pinned = ids(NEXT_MON, "sources.1.snapshot=CC-MAIN-2026-49")     # a fixed value
    assert pinned["crawl.web"] == ids(MON, "sources.1.snapshot=CC-MAIN-2026-49")["crawl.web"] \
        != plain["crawl.web"]


def test_snapshot_of_a_file_source_enters_its_ingest_identity(tmp_path):
    spec = tmp_path / "f.yaml"
    spec.write_text(yaml.safe_dump({"sources": [{"name": "web", "type": "jsonl", "paths": [
        str(shared_path("docs", "cc_en_head-0091.jsonl"))]}]}))

    def ids(*overrides):
        return plan_identities(build_plan(load_spec(spec, list(overrides)), now=MON))

    plain, snap = ids(), ids("sources.0.snapshot=2026-11")
    assert snap["ingest.web"] != plain["ingest.web"] and snap["tokenize"] != plain["tokenize"]
    assert snap == ids("sources.0.snapshot={month}")


def _fresh_crawl_and_ingest(out: Path) -> tuple[list[dict], str]:
    site = LocalSiteConfig(pages=40, seed=3, slow_pages=0, adversarial=False)
    cfg = CrawlConfig(seeds=["{local_site}/docs/index.html"], allow_patterns=["/docs/"],
                      allow_loopback=True, per_host_delay_s=0.0, per_host_concurrency=8,
                      max_depth=8, timeout_s=5)
    crawl_ctx = StageContext.for_testing(out / "crawl", show_progress=False)
    run_crawl(cfg, "docs", crawl_ctx, local_site=site, snapshot="2026-W49")
    served = next(line for line in crawl_ctx.summary if "served at" in line).rsplit(" ", 1)[1]
    ctx = StageContext.for_testing(out / "ingest", show_progress=False)
    run_ingest("docs", "warc", sorted((out / "crawl" / "warc").glob("*.warc*")), ExtractConfig(),
               ctx, use_ray=False)
    rows = pq.read_table(parquet_files(out / "ingest")).select(["id", "url", "text"]).to_pylist()
    return rows, served


@pytest.mark.slow
def test_two_fresh_crawls_give_identical_ids_and_token_counts(ray_local, tmp_path):
    a, served_a = _fresh_crawl_and_ingest(tmp_path / "a")
    b, served_b = _fresh_crawl_and_ingest(tmp_path / "b")
    assert served_a != served_b                               # two random ports
    assert len(a) >= 15
    assert sorted(r["id"] for r in a) == sorted(r["id"] for r in b)
    assert len({r["id"] for r in a}) == len(a)
    assert sorted((r["id"], r["url"], r["text"]) for r in a) == sorted((r["id"], r["url"], r["text"]) for r in b)
    assert all(r["url"].startswith(LOCAL_SITE_URL + "/docs/") for r in a)
    # the same split and token counts downstream, tokenizer trained in each workdir
    counts = []
    for run in ("a", "b"):
        cfg = TokenizeConfig(tokenizer={"vocab_size": 400, "sample_docs": 1000}, val_fraction=0.2)
        tctx = StageContext.for_testing(tmp_path / run / "tokenizer", show_progress=False)
        run_train_tokenizer(cfg, tmp_path / run / "ingest", tctx)
        sctx = StageContext.for_testing(tmp_path / run / "tokenize", num_cpus=2, show_progress=False)
        m = run_tokenize(cfg, tmp_path / run / "ingest", tctx.out_dir / "tokenizer", sctx)
        counts.append({k: v for k, v in m.items() if k.startswith(("tokens.", "docs."))})
    assert counts[0] == counts[1] and counts[0]["docs.docs.val"] > 0


def test_warc_ids_ignore_the_record_id(tmp_path):
    """The same captures rewritten with new WARC-Record-IDs keep their document ids."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    src = shared_path("warc", "dolma-sample-0000.warc.gz")
    copy = tmp_path / "copy.warc.gz"
    with open(src, "rb") as fin, open(copy, "wb") as fout:
        writer = WARCWriter(fout, gzip=True)
        for rec in ArchiveIterator(fin):
            rec.rec_headers.replace_header("WARC-Record-ID", f"<urn:uuid:{os.urandom(16).hex()}>")
            writer.write_record(rec)
    ids = []
    for name, f in (("orig", src), ("copy", copy)):
        ctx = StageContext.for_testing(tmp_path / name, show_progress=False)
        run_ingest("web", "warc", [f], ExtractConfig(), ctx, use_ray=False)
        ids.append(sorted(pq.read_table(parquet_files(ctx.out_dir)).column("id").to_pylist()))
    assert ids[0] == ids[1] and len(ids[0]) == 22


# ---- Prefect's cache and the store ---------------------------------------------------------

@pytest.mark.slow
def test_prefect_cache_never_returns_another_workdirs_artifact(tmp_path):
    """Two workdirs share one Prefect home: B, then A, then B again. B's second run is all
    cache hits, and every artifact it reports is B's own."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "run": {"name": "scope", "num_cpus": 2},
        "sources": [{"name": "web", "type": "jsonl",
                     "paths": [str(shared_path("docs", "cc_en_head-0091.jsonl"))]}],
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_ADDRESS"))}
    env.update(PREFECT_HOME=str(tmp_path / "shared-prefect"), PYTHONPATH=str(REPO),
               TOKENIZERS_PARALLELISM="false")

    def run(wd: Path) -> str:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec), "--workdir",
                               str(wd), "--until", "ingest"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    a, b = tmp_path / "a", tmp_path / "b"
    run(b)
    run(a)
    out = run(b)
    assert "1 stages (0 ran, 1 cached)" in out, out
    _, parents, children = mlflow_runs(b, "scope")
    last = children[parents[-1].info.run_id]
    assert [r.data.tags["forgeflow.cached"] for r in last] == ["true"]
    assert all(r.data.tags["forgeflow.artifact"].startswith(str(b) + "/") for r in last)
    assert not any(str(a) in r.data.tags.get("forgeflow.artifact", "") for rs in children.values() for r in rs)
