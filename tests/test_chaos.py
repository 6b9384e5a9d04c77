"""The chaos mechanism on a tiny pipeline: SIGKILL right after a commit, during training
(which resumes) and during evaluation; after every kill every artifact verifies; the final
identities are the statically computed ones and every metric equals an uninterrupted run's.
The full 20-kill quickstart run is `make chaos` (bench/chaos.py)."""

from __future__ import annotations

import sys

import pytest

from tests.e2e_util import REPO
from tests.tiny_pipeline import write_tiny_spec


def _chaos():
    sys.path.insert(0, str(REPO / "bench"))
    import chaos
    return chaos


def test_moments_are_seeded_in_pipeline_order_with_commit_kills():
    chaos = _chaos()
    m = chaos.moments(chaos.STAGE_ORDER, 20, seed=0)
    assert m == chaos.moments(chaos.STAGE_ORDER, 20, seed=0) != chaos.moments(chaos.STAGE_ORDER, 20, seed=1)
    targets = [t for t, _ in m]
    assert targets.count("commit") == 5
    order = [chaos.STAGE_ORDER.index(t) for t in targets if t != "commit"]
    assert order == sorted(order) and set(targets) - {"commit"} == set(chaos.STAGE_ORDER)
    assert all(0 <= d <= 3 for _, d in m)


def test_integrity_and_metric_comparison_catch_violations(tmp_path):
    from pipeline.store import ArtifactStore, compute_identity
    chaos = _chaos()
    store = ArtifactStore(tmp_path)
    ident = compute_identity("dedup", "1", {}, {})
    p = store.begin("dedup", "d", ident, resumable=False)
    (p.partial / "x.bin").write_bytes(b"abc")
    art = p.commit(config={}, inputs={}, metrics={"docs_out": 5, "seconds_total": 1.0},
                   extra={"key": "dedup"})
    assert chaos.integrity(tmp_path) == []
    got = chaos.final_state(tmp_path)
    assert chaos.compare_metrics({"dedup": ident}, got, got) == []
    want = {"dedup": {ident: {"docs_out": 6, "seconds_total": 9.0}}}
    assert chaos.compare_metrics({"dedup": ident}, got, want) == ["dedup.docs_out: 5 after kills vs 6 uninterrupted"]
    assert "not committed" in chaos.compare_metrics({"dedup": "f" * 64}, got, want)[0]
    (art.dir / "x.bin").write_bytes(b"abd")                 # same size, other content
    assert "SHA-256 differs" in chaos.integrity(tmp_path)[0]


def test_only_clocks_and_crawl_bookkeeping_are_left_out():
    chaos = _chaos()
    keys = {"crawl.web": "a", "ingest.web": "b", "ingest.docs": "c", "dedup": "d"}
    assert chaos.ignored("crawl.web", "resumed", keys) and chaos.ignored("crawl.web", "tcp_connects", keys)
    assert not chaos.ignored("crawl.web", "pages_fetched", keys)
    assert chaos.ignored("ingest.web", "bytes_in", keys)         # gzipped WARC of a crawl
    assert not chaos.ignored("ingest.docs", "bytes_in", keys)    # a file the user gave
    assert not chaos.ignored("ingest.web", "docs_out", keys)
    assert chaos.ignored("dedup", "seconds", keys) and not chaos.ignored("dedup", "docs_out", keys)


@pytest.mark.slow
def test_kills_at_commit_and_mid_training_then_identical_results(tmp_path):
    chaos = _chaos()
    spec = write_tiny_spec(tmp_path / "spec", name="chaos")
    lines = []

    def log(msg):
        lines.append(msg)
        print(msg, flush=True)          # shown by pytest on a failure
    report = chaos.chaos(str(spec), [], tmp_path / "chaos", tmp_path / "baseline", kills=2, seed=0,
                         timeout=1200, log=log,
                         at=[("commit", 0.0), ("train", 0.5)])   # `make chaos`: 20 seeded moments
    assert report["violations"] == [], "\n".join(lines + report["violations"])
    assert report["killed"] >= 2, lines            # the moments really came (not finished first)
    whats = [k["what"] for k in report["kills"]]
    assert any("right after committing" in w for w in whats), whats
    assert report["stages_compared"] == 9
