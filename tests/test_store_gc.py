"""Store maintenance: the runs log, `forgeflow gc` and lineage in `forgeflow artifacts`."""

from __future__ import annotations

import os
import time

from flows.cli import main as cli
from pipeline.store import RUNS_LOG, ArtifactStore, compute_identity


def _commit(store, stage, name, inputs=None, run_id="r"):
    ident = compute_identity(stage, "1", {"n": name}, inputs or {})
    p = store.begin(stage, name, ident, resumable=False)
    (p.partial / "data.bin").write_bytes(os.urandom(3000))
    art = p.commit(config={}, inputs=inputs or {}, metrics={}, extra={"key": f"{stage}.{name}",
                                                                      "mlflow_run_id": run_id})
    return art


def _uses(*arts):
    return {f"{a.stage}.{a.name}": (a.stage, a.name, a.identity) for a in arts}


def _world(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _commit(store, "dedup", "a", run_id="run-a")
    b = _commit(store, "dedup", "b", inputs={"docs": a.identity}, run_id="run-b")
    c = _commit(store, "dedup", "c")
    d = _commit(store, "dedup", "d")
    store.record_run("run1", "spec_s", _uses(a)).close()
    store.record_run("run2", "spec_s", _uses(b)).close()
    store.record_run("run3", "spec_t", _uses(c)).close()
    # a partial nobody writes or needs, one being written, one a kept run will resume
    stale = store.begin("train", "stale", "1" * 64, resumable=True)
    (stale.partial / "ckpt").write_bytes(b"x" * 5000)
    stale.release()
    live = store.begin("train", "live", "2" * 64, resumable=True)
    store.record_run("run4", "spec_t", {**_uses(c), "train.r": ("train", "r", "3" * 64)}).close()
    resume = store.begin("train", "r", "3" * 64, resumable=True)
    (resume.partial / "ckpt").write_bytes(b"y" * 10)
    resume.release()
    # an orphaned lock (its artifact committed long ago) and a fresh one
    old_lock = tmp_path / "dedup" / f".lock-a-{a.short}"
    os.utime(old_lock, (time.time() - 7200, time.time() - 7200))
    # Prefect result records: one of a live artifact, one of an artifact that will be gone
    storage = tmp_path / "prefect" / "storage"
    storage.mkdir(parents=True)
    for art in (a, b, c, d):
        (storage / f"forgeflow-{art.identity}").write_text("{}")
    (storage / f"forgeflow-{'9' * 64}").write_text("{}")          # artifact deleted by hand
    return store, dict(a=a, b=b, c=c, d=d, live=live, stale=stale, resume=resume, old_lock=old_lock,
                       storage=storage)


def test_runs_log_skips_a_line_cut_by_a_kill(tmp_path):
    store = ArtifactStore(tmp_path)
    store.record_run("r1", "s", {"x": ("dedup", "x", "a" * 64)}).close()
    with open(tmp_path / RUNS_LOG, "a") as f:
        f.write('{"run": "r2", "spec": "s", "identi')          # killed mid-line
    store.record_run("r3", "s", {"x": ("dedup", "x", "b" * 64)}).close()
    assert [r["run"] for r in store.runs()] == ["r1", "r3"]
    assert store.kept_identities(1) == {"b" * 64}
    assert store.kept_identities(5) == {"a" * 64, "b" * 64}


def test_gc_dry_run_then_for_real(tmp_path, capsys):
    store, w = _world(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert cli(["gc", "--workdir", str(tmp_path), "--keep-runs", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert sorted(p for p in tmp_path.rglob("*")) == before          # dry run touches nothing
    assert f"would remove artifact" in out and str(w["a"].dir) in out and str(w["d"].dir) in out
    assert str(w["b"].dir) not in out.replace("kept", "")
    w["live"].release()          # (re-taken below: the dry run saw it held)

    live = store.begin("train", "live", "2" * 64, resumable=True)
    report = store.gc(keep_runs=1)
    removed = {(kind, p) for kind, p, _ in report.removed}
    # not used by the last run of spec_s (b) nor of spec_t (c + the resumable partial)
    assert ("artifact", w["a"].dir) in removed and ("artifact", w["d"].dir) in removed
    assert w["b"].dir.exists() and w["c"].dir.exists()
    assert not w["a"].dir.exists() and not w["d"].dir.exists()
    assert ("partial", w["stale"].partial) in removed and not w["stale"].partial.exists()
    assert w["resume"].partial.exists() and live.partial.exists()     # resumable / being written
    assert ("lock", w["old_lock"]) in removed and not w["old_lock"].exists()
    assert (tmp_path / "dedup" / f".lock-b-{w['b'].short}").exists()   # fresh: kept
    records = {p.name for p in w["storage"].iterdir()}
    assert records == {f"forgeflow-{w['b'].identity}", f"forgeflow-{w['c'].identity}"}
    assert report.freed >= 3000 * 2 + 5000
    live.release()
    # everything left verifies; a second gc takes only the partial its writer gave up
    assert all(not problems for _, problems in store.verify(deep=True))
    assert [(k, p) for k, p, _ in store.gc(keep_runs=1).removed] == [("partial", live.partial)]
    assert store.gc(keep_runs=1).removed == []


def test_gc_never_deletes_artifacts_while_a_run_is_alive(tmp_path):
    store, w = _world(tmp_path)
    guard = store.record_run("run5", "spec_s", _uses(w["b"]))       # a live run
    report = store.gc(keep_runs=1)
    assert w["a"].dir.exists() and w["d"].dir.exists()
    assert any(p == w["a"].dir and "a run is alive" in why for p, why, _ in report.kept)
    assert ("partial", w["stale"].partial) in {(k, p) for k, p, _ in report.removed}
    guard.close()
    store.gc(keep_runs=1)
    assert not w["a"].dir.exists()


def test_gc_without_a_runs_log_keeps_every_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _commit(store, "dedup", "a")
    report = store.gc(keep_runs=1)
    assert a.dir.exists() and report.removed == []
    assert "no runs log" in report.kept[0][1]


def test_artifacts_shows_lineage(tmp_path, capsys):
    store = ArtifactStore(tmp_path)
    a = _commit(store, "dedup", "a", run_id="run-a")
    b = _commit(store, "tokenize", "b", inputs={"docs": a.identity, "gone": "f" * 64}, run_id="run-b")
    assert cli(["artifacts", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    block = out[out.index("tokenize.b"):]
    assert "produced by MLflow run run-b" in block
    assert f"<- docs: dedup.a {a.short} (run run-a)" in block
    assert f"<- gone: {'f' * 12} (no longer in the store)" in block
    assert b.short in out
