"""Content-addressed artifact store.

A stage's identity is the SHA-256 of (stage name, stage version, the config fields that
change its output, the identities of its inputs). Paths, worker counts and other
resources are not part of it. Output lives at ``<workdir>/<stage>/<name>-<id12>/``.

Commit protocol (what makes a killed run safe):
1. the stage writes into ``<workdir>/<stage>/.partial-<name>-<id12>/`` (under an
   exclusive lock, so two runs never write the same artifact: the second one waits, then
   finds the first one's committed artifact and uses it);
2. ``manifest.json`` is written last, inside the partial directory, and fsynced;
3. the partial directory is renamed to its final name (atomic on one filesystem).
An artifact is complete iff its final directory holds ``manifest.json``; a partial
directory is never read as an output. Resumable stages (crawl, training) find their
partial directory again on the next run and continue from what it holds; the others
start it afresh.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pipeline

MANIFEST = "manifest.json"
DEFAULT_LOCK_TIMEOUT_S = 6 * 3600.0     # a waiter outlasts any one stage of a normal run

log = logging.getLogger("forgeflow")


class LockTimeout(RuntimeError):
    """Another run held an artifact's write lock for longer than the wait allowed."""


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def compute_identity(stage: str, version: str, config: Any, inputs: dict[str, str]) -> str:
    payload = {"stage": stage, "version": version, "config": config,
               "inputs": dict(sorted(inputs.items()))}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_digest(paths: list[Path]) -> dict[str, str]:
    """Content digests of input files (their names are kept only as labels)."""
    return {Path(p).name + f"#{i}": file_digest(Path(p)) for i, p in enumerate(paths)}


def code_version() -> str:
    """The package version plus the git commit when running from a checkout."""
    root = Path(pipeline.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        rev, dirty = "", ""
    return f"{pipeline.__version__}+{rev}{'.dirty' if dirty else ''}" if rev else pipeline.__version__


@dataclass
class Artifact:
    """A committed stage output."""

    stage: str
    name: str
    identity: str
    path: str
    manifest: dict = field(default_factory=dict, repr=False)

    @property
    def short(self) -> str:
        return self.identity[:12]

    @property
    def dir(self) -> Path:
        return Path(self.path)

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    def to_dict(self) -> dict:
        return asdict(self)


class ArtifactStore:
    def __init__(self, workdir: Path | str):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)

    # ---- paths -----------------------------------------------------------------------
    def final_dir(self, stage: str, name: str, identity: str) -> Path:
        return self.workdir / stage / f"{name}-{identity[:12]}"

    def partial_dir(self, stage: str, name: str, identity: str) -> Path:
        return self.workdir / stage / f".partial-{name}-{identity[:12]}"

    # ---- lookup ----------------------------------------------------------------------
    def lookup(self, stage: str, name: str, identity: str) -> Artifact | None:
        final = self.final_dir(stage, name, identity)
        manifest_path = final / MANIFEST
        if not manifest_path.is_file():
            return None
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("identity") != identity:
            raise RuntimeError(f"{manifest_path}: identity {manifest.get('identity')} does not "
                               f"match the directory's {identity} (id12 collision or tampering)")
        return Artifact(stage, name, identity, str(final), manifest)

    def artifacts(self) -> list[Artifact]:
        """Every committed artifact in the workdir."""
        out = []
        for manifest_path in sorted(self.workdir.glob(f"*/*/{MANIFEST}")):
            if manifest_path.parent.name.startswith(".partial-"):
                continue
            m = json.loads(manifest_path.read_text())
            out.append(Artifact(m["stage"], m["name"], m["identity"], str(manifest_path.parent), m))
        return out

    # ---- writing ---------------------------------------------------------------------
    def begin(self, stage: str, name: str, identity: str, resumable: bool, *,
              holder: str = "", timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
              message_every_s: float = 30.0) -> "PendingArtifact | Artifact":
        """Take the artifact's write lock and open its partial directory.

        A stage another run is writing is waited for (up to ``timeout_s``, logging every
        ``message_every_s`` who holds the lock); once the lock is ours the store is looked
        at again, and an artifact the other run committed meanwhile is returned as it is
        (a cache hit: never recomputed). ``holder`` (e.g. the run name and MLflow run id)
        is written into the lock file so a waiter can say who it waits for."""
        partial = self.partial_dir(stage, name, identity)
        partial.parent.mkdir(parents=True, exist_ok=True)
        lock_path = partial.parent / f".lock-{name}-{identity[:12]}"
        lock = _acquire(lock_path, f"{stage}/{name}-{identity[:12]}", timeout_s, message_every_s)
        try:
            committed = self.lookup(stage, name, identity)
            if committed is not None:          # the run we waited for committed it
                _unlock(lock)
                log.info("%s/%s-%s: committed by the run that held the lock; using it",
                         stage, name, identity[:12])
                return committed
            _write_holder(lock, holder)
            resumed = partial.exists() and any(partial.iterdir())
            if partial.exists() and not resumable:
                shutil.rmtree(partial)
                resumed = False
            partial.mkdir(parents=True, exist_ok=True)
        except BaseException:
            _unlock(lock)
            raise
        return PendingArtifact(self, stage, name, identity, partial, lock, lock_path, resumed)


@dataclass
class PendingArtifact:
    store: ArtifactStore
    stage: str
    name: str
    identity: str
    partial: Path
    lock: Any
    lock_path: Path
    resumed: bool
    started: float = field(default_factory=time.time)

    def commit(self, *, config: Any, inputs: dict[str, str], metrics: dict,
               extra: dict | None = None) -> Artifact:
        files = {}
        for p in sorted(self.partial.rglob("*")):
            if p.is_file():
                rel = str(p.relative_to(self.partial))
                files[rel] = {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        manifest = {
            "stage": self.stage, "name": self.name, "identity": self.identity,
            "config": config, "inputs": inputs, "metrics": metrics,
            "files": files, "code_version": code_version(),
            "started_at": self.started, "finished_at": time.time(),
            "seconds": round(time.time() - self.started, 3), "resumed": self.resumed,
            **(extra or {}),
        }
        tmp = self.partial / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.partial / MANIFEST)
        final = self.store.final_dir(self.stage, self.name, self.identity)
        if (final / MANIFEST).is_file():
            # Committed by a writer that did not hold the lock (an older forgeflow, or a
            # copy): a committed artifact is never deleted; ours is dropped instead.
            shutil.rmtree(self.partial)
            self.release()
            log.warning("%s: already committed; keeping it and dropping this run's copy", final)
            return self.store.lookup(self.stage, self.name, self.identity)
        if final.exists():               # an incomplete leftover (no manifest) — replace it
            shutil.rmtree(final)
        os.rename(self.partial, final)
        _fsync_dir(final.parent)
        self.release()
        return Artifact(self.stage, self.name, self.identity, str(final), manifest)

    def release(self) -> None:
        if self.lock is not None:
            _unlock(self.lock)
            self.lock = None   # the lock file stays: unlinking it would race with a waiter


def holder_of(lock_path: Path) -> str:
    """Who holds (or last held) a lock: 'pid P on HOST, RUN, since T' from the lock file."""
    try:
        info = json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, ValueError):
        return "unknown holder"
    if not info:
        return "unknown holder"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    run = f", {info['run']}" if info.get("run") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{run}, since {since}"


def _acquire(lock_path: Path, what: str, timeout_s: float, message_every_s: float):
    """An exclusive flock on ``lock_path``, waiting up to ``timeout_s`` (polling, so the
    wait can time out and say who holds the lock). The file is opened without
    truncation: the holder's name in it must survive a waiter opening it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    lock = os.fdopen(fd, "r+")
    t0 = time.monotonic()
    next_msg = t0 + min(message_every_s, 2.0)     # the first message comes early
    delay = 0.05
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = time.monotonic() - t0
            if waited > 1.0:
                log.info("%s: lock taken after waiting %.0fs", what, waited)
            return lock
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now - t0 >= timeout_s:
            holder = holder_of(lock_path)
            lock.close()
            raise LockTimeout(f"another run is writing {what} ({holder}); gave up after "
                              f"{timeout_s:.0f}s (run.lock_timeout_s); lock {lock_path}")
        if now >= next_msg:
            log.info("%s: waiting for another run writing it (%s), %.0fs so far",
                     what, holder_of(lock_path), now - t0)
            next_msg = now + message_every_s
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _write_holder(lock, holder: str) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "run": holder, "since": time.time()}))
    lock.flush()


def _unlock(lock) -> None:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
