"""The artifact store: identity, atomic commit, resume of partial directories."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.store import ArtifactStore, compute_identity


def test_identity_depends_on_config_version_and_inputs_only():
    a = compute_identity("filter", "1", {"t": 0.5}, {"docs": "x" * 64})
    assert a == compute_identity("filter", "1", {"t": 0.5}, {"docs": "x" * 64})
    assert a != compute_identity("filter", "2", {"t": 0.5}, {"docs": "x" * 64})
    assert a != compute_identity("filter", "1", {"t": 0.6}, {"docs": "x" * 64})
    assert a != compute_identity("filter", "1", {"t": 0.5}, {"docs": "y" * 64})
    # key order does not matter
    assert compute_identity("s", "1", {"a": 1, "b": 2}, {}) == compute_identity("s", "1", {"b": 2, "a": 1}, {})


def test_commit_is_atomic_and_lookup_finds_only_complete(tmp_path):
    store = ArtifactStore(tmp_path)
    ident = compute_identity("dedup", "1", {}, {})
    assert store.lookup("dedup", "d", ident) is None
    pending = store.begin("dedup", "d", ident, resumable=False)
    (pending.partial / "data").mkdir()
    (pending.partial / "data" / "x.txt").write_text("hello")
    # not visible before commit
    assert store.lookup("dedup", "d", ident) is None
    art = pending.commit(config={"k": 1}, inputs={}, metrics={"docs_out": 3})
    found = store.lookup("dedup", "d", ident)
    assert found is not None and found.path == art.path
    m = json.loads((art.dir / "manifest.json").read_text())
    assert m["identity"] == ident and m["metrics"] == {"docs_out": 3}
    assert m["files"]["data/x.txt"]["bytes"] == 5
    assert not store.partial_dir("dedup", "d", ident).exists()


def test_non_resumable_partial_is_wiped_resumable_is_kept(tmp_path):
    store = ArtifactStore(tmp_path)
    ident = "ab" * 32
    p = store.begin("train", "t", ident, resumable=True)
    (p.partial / "checkpoint").mkdir()
    p.release()
    p2 = store.begin("train", "t", ident, resumable=True)
    assert p2.resumed and (p2.partial / "checkpoint").exists()
    p2.release()
    p3 = store.begin("train", "t", ident, resumable=False)
    assert not p3.resumed and not any(p3.partial.iterdir())
    p3.release()


def test_second_writer_is_refused_while_first_holds_the_lock(tmp_path):
    store = ArtifactStore(tmp_path)
    p = store.begin("s", "n", "cd" * 32, resumable=False)
    with pytest.raises(RuntimeError, match="another run is writing"):
        store.begin("s", "n", "cd" * 32, resumable=False)
    p.release()
    store.begin("s", "n", "cd" * 32, resumable=False).release()


def test_killed_writer_never_leaves_a_complete_looking_artifact(tmp_path):
    """SIGKILL a process in the middle of writing: no final directory, lock released."""
    code = textwrap.dedent(f"""
        import os, time
        from pipeline.store import ArtifactStore
        store = ArtifactStore({str(tmp_path)!r})
        p = store.begin("s", "n", "ef" * 32, resumable=False)
        (p.partial / "big").write_bytes(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(os.getcwd())})
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    store = ArtifactStore(tmp_path)
    assert store.lookup("s", "n", "ef" * 32) is None
    assert store.artifacts() == []
    p = store.begin("s", "n", "ef" * 32, resumable=False)     # the lock died with the process
    art = p.commit(config={}, inputs={}, metrics={})
    assert store.lookup("s", "n", "ef" * 32).path == art.path
