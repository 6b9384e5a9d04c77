"""The artifact store: identity, atomic commit, resume of partial directories."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pipeline.store import (Artifact, ArtifactStore, LockTimeout, compute_identity, file_digest,
                            seal_manifest)


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


def test_second_writer_waits_then_times_out_naming_the_holder(tmp_path):
    store = ArtifactStore(tmp_path)
    p = store.begin("s", "n", "cd" * 32, resumable=False, holder="run alpha (MLflow run abc)")
    t0 = time.monotonic()
    with pytest.raises(LockTimeout, match=r"pid \d+ on .*run alpha \(MLflow run abc\)"):
        store.begin("s", "n", "cd" * 32, resumable=False, timeout_s=0.4)
    assert time.monotonic() - t0 >= 0.4              # it waited before giving up
    p.release()
    store.begin("s", "n", "cd" * 32, resumable=False).release()


def test_a_waiter_gets_the_artifact_committed_while_it_waited(tmp_path):
    """In-process (threads): the second begin() blocks until the first commits, then
    returns the committed artifact instead of a partial directory to write."""
    store = ArtifactStore(tmp_path)
    ident = "aa" * 32
    first = store.begin("s", "n", ident, resumable=False, holder="first")
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=store.begin("s", "n", ident, resumable=False)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()                          # blocked on the lock, not failed
    (first.partial / "x").write_text("from first")
    art = first.commit(config={}, inputs={}, metrics={"n": 1})
    waiter.join(10)
    assert isinstance(got["r"], Artifact) and got["r"].path == art.path
    assert (art.dir / "x").read_text() == "from first"


def test_commit_never_deletes_a_committed_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    ident = "bb" * 32
    final = store.final_dir("s", "n", ident)
    # a leftover without manifest (not an artifact) is replaced ...
    p = store.begin("s", "n", ident, resumable=False)
    final.mkdir(parents=True)
    (final / "junk").write_text("half-copied")
    (p.partial / "x").write_text("mine")
    art = p.commit(config={}, inputs={}, metrics={})
    assert (art.dir / "x").read_text() == "mine" and not (art.dir / "junk").exists()
    # ... but a committed artifact that appears under a writer (one that ignored the
    # lock) is kept, and the late writer's copy is dropped
    assert isinstance(store.begin("s", "n", ident, resumable=False), Artifact)
    ident2 = "bc" * 32
    p3 = store.begin("s", "n", ident2, resumable=False)
    rogue_final = store.final_dir("s", "n", ident2)
    rogue_partial = tmp_path / "rogue"
    rogue_partial.mkdir()
    (rogue_partial / "x").write_text("rogue")
    rogue_partial.rename(rogue_final)
    (rogue_final / "manifest.json").write_text(json.dumps(seal_manifest(
        {"identity": ident2, "stage": "s", "name": "n",
         "files": {"x": {"bytes": 5, "sha256": file_digest(rogue_final / "x")}}})))
    (p3.partial / "x").write_text("late")
    kept = p3.commit(config={}, inputs={}, metrics={})
    assert kept.path == str(rogue_final) and (rogue_final / "x").read_text() == "rogue"
    assert not p3.partial.exists()


RACER = textwrap.dedent("""
    import logging, os, sys, time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipeline.store import Artifact, ArtifactStore
    workdir, go_at, who = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    store = ArtifactStore(workdir)
    ident = "ee" * 32
    while time.time() < go_at:
        time.sleep(0.005)
    got = store.begin("s", "n", ident, resumable=False, holder=who, message_every_s=0.3)
    if isinstance(got, Artifact):
        print("CACHED", got.path, flush=True)
        sys.exit(0)
    (got.partial / "who").write_text(who)
    time.sleep(2.5)                     # a slow stage: the other process must wait for it
    art = got.commit(config={}, inputs={}, metrics={})
    print("COMPUTED", art.path, flush=True)
""")


def test_two_processes_racing_on_one_identity_compute_it_once(tmp_path):
    """Real subprocesses released at the same instant: one computes, the other waits
    (saying who it waits for) and gets the committed artifact as a cache hit."""
    go_at = time.time() + 3.0
    env = {**os.environ, "PYTHONPATH": str(os.getcwd())}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(go_at), f"racer-{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = sorted(o[0].split()[0] for o in outs)
    assert lines == ["CACHED", "COMPUTED"], outs
    paths = {o[0].split()[1] for o in outs}
    assert len(paths) == 1
    computer = next(i for i, o in enumerate(outs) if o[0].startswith("COMPUTED"))
    waiter_log = outs[1 - computer][1]
    assert f"racer-{computer}" in waiter_log and "waiting for another run" in waiter_log
    art = ArtifactStore(tmp_path).lookup("s", "n", "ee" * 32)
    assert (art.dir / "who").read_text() == f"racer-{computer}"
    assert len(ArtifactStore(tmp_path).artifacts()) == 1


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
