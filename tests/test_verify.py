"""Verified cache hits: a corrupted or incomplete artifact is named, moved aside, recomputed."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main as cli
from pipeline.plan import Node
from pipeline.runner import RunEnv, execute
from pipeline.spec import validate_spec
from pipeline.store import DIGEST_KEY, MANIFEST, QUARANTINE, ArtifactStore, compute_identity

PARQUET = "data/part-0.parquet"


def _table(n: int = 200) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(n)], "text": [f"document number {i} " * 5 for i in range(n)]})


def _commit(store: ArtifactStore, name: str = "d") -> tuple[str, object]:
    ident = compute_identity("dedup", "1", {"name": name}, {})
    pending = store.begin("dedup", name, ident, resumable=False)
    (pending.partial / "data").mkdir()
    pq.write_table(_table(), pending.partial / PARQUET)
    (pending.partial / "stats.json").write_text('{"docs": 200}')
    return ident, pending.commit(config={"name": name}, inputs={}, metrics={"docs_out": 200})


def _quarantined(store: ArtifactStore) -> list:
    return sorted((store.workdir / QUARANTINE).glob("*/*"))


def test_commit_seals_the_manifest(tmp_path):
    store = ArtifactStore(tmp_path)
    ident, art = _commit(store)
    m = json.loads((art.dir / MANIFEST).read_text())
    assert len(m[DIGEST_KEY]) == 64
    assert store.lookup("dedup", "d", ident).path == art.path
    assert store.verify(deep=True) == [(art.dir, [])]


def test_truncated_parquet_is_reported_moved_aside_and_missed(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    ident, art = _commit(store)
    size = (art.dir / PARQUET).stat().st_size
    with open(art.dir / PARQUET, "r+b") as f:
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="forgeflow"):
        assert store.lookup("dedup", "d", ident) is None
    assert PARQUET in caplog.text and str(art.dir) in caplog.text
    assert not art.dir.exists()
    [moved] = _quarantined(store)
    assert moved.parent.name == "dedup" and moved.name.startswith(f"d-{ident[:12]}-")
    note = json.loads((moved / "QUARANTINE.json").read_text())
    assert note["from"] == str(art.dir)
    assert note["problems"] == [f"{PARQUET}: {size // 2} bytes, manifest says {size}"]
    assert (moved / PARQUET).stat().st_size == size // 2      # kept, never deleted
    # the next writer commits a fresh copy in place
    ident2, art2 = _commit(store)
    assert ident2 == ident and store.lookup("dedup", "d", ident).path == art.path


@pytest.mark.parametrize("damage", ["delete_file", "edit_manifest", "delete_manifest", "garbage_manifest"])
def test_every_kind_of_damage_is_a_miss(tmp_path, damage):
    store = ArtifactStore(tmp_path)
    ident, art = _commit(store)
    mpath = art.dir / MANIFEST
    if damage == "delete_file":
        (art.dir / "stats.json").unlink()
    elif damage == "edit_manifest":
        m = json.loads(mpath.read_text())
        m["metrics"]["docs_out"] = 10**6
        mpath.write_text(json.dumps(m))
    elif damage == "delete_manifest":
        mpath.unlink()
    else:
        mpath.write_bytes(b"{\x00 not json")
    assert store.lookup("dedup", "d", ident) is None
    [moved] = _quarantined(store)
    problems = json.loads((moved / "QUARANTINE.json").read_text())["problems"]
    expected = {"delete_file": "stats.json: missing", "edit_manifest": "does not match its manifest_digest",
                "delete_manifest": "manifest.json: missing", "garbage_manifest": "manifest.json: unreadable"}
    assert any(expected[damage] in p for p in problems), problems


def test_verify_cli_names_bad_artifacts_and_files(tmp_path, capsys):
    store = ArtifactStore(tmp_path)
    _, good = _commit(store, "good")
    _, bad = _commit(store, "bad")
    # same size, one byte flipped: only the deep check sees it
    data = bytearray((bad.dir / PARQUET).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad.dir / PARQUET).write_bytes(bytes(data))

    assert cli(["verify", "--workdir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli(["verify", "--workdir", str(tmp_path), "--deep"]) == 1
    out = capsys.readouterr().out
    assert f"BAD  {bad.dir}" in out and f"{PARQUET}: SHA-256 differs" in out
    assert str(good.dir) not in out
    assert "2 artifact(s) re-hashed: 1 ok, 1 bad" in out
    assert bad.dir.exists()                                  # report only, unless asked
    assert cli(["verify", "--workdir", str(tmp_path), "--deep", "--quarantine"]) == 1
    assert not bad.dir.exists() and len(_quarantined(store)) == 1
    assert cli(["verify", "--workdir", str(tmp_path), "--deep"]) == 0


def test_runner_recomputes_a_corrupted_artifact(tmp_path):
    spec = validate_spec({"run": {"name": "verify", "show_progress": False},
                          "sources": [{"name": "a", "type": "jsonl", "paths": ["x.jsonl"]}]})
    calls = []

    def run(ctx, inputs):
        calls.append(1)
        (ctx.out_dir / "data").mkdir()
        pq.write_table(_table(), ctx.out_dir / PARQUET)
        return {"docs_out": 200}

    node = Node(key="dedup", stage="dedup", name="deduped", version="1", config={"t": 1},
                inputs={}, run=run)
    env = RunEnv.start(spec, tmp_path)
    try:
        first = execute(node, {}, env)
        assert not first.cached and len(calls) == 1
        assert execute(node, {}, env).cached and len(calls) == 1
        target = first.artifact.dir / PARQUET
        original = target.read_bytes()
        target.write_bytes(original[:100])
        again = execute(node, {}, env)
        assert not again.cached and len(calls) == 2
        assert again.artifact.path == first.artifact.path
        assert pq.read_table(target).equals(_table())
        assert len(_quarantined(env.store)) == 1
        assert env.store.verify(deep=True) == [(first.artifact.dir, [])]
    finally:
        env.finish()
