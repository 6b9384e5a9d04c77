"""Content-addressed artifact store.

A stage's identity is the SHA-256 of (stage name, stage version, the config fields that
change its output, the identities of its inputs). Paths, worker counts and other
resources are not part of it. Output lives at ``<workdir>/<stage>/<name>-<id12>/``.

Commit protocol (what makes a killed run safe):
1. the stage writes into ``<workdir>/<stage>/.partial-<name>-<id12>/`` (under an
   exclusive lock, so two runs never write the same artifact);
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
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pipeline

MANIFEST = "manifest.json"


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


def user_cache_dir() -> Path:
    """forgeflow's per-user cache of things derived from the installation, never from a
    run's data (the local web, a migrated Prefect database): ``$FORGEFLOW_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/forgeflow``, else ``~/.cache/forgeflow``. Safe to delete."""
    if os.environ.get("FORGEFLOW_CACHE_DIR"):
        return Path(os.environ["FORGEFLOW_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "forgeflow"


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
    def begin(self, stage: str, name: str, identity: str, resumable: bool) -> "PendingArtifact":
        partial = self.partial_dir(stage, name, identity)
        partial.parent.mkdir(parents=True, exist_ok=True)
        lock_path = partial.parent / f".lock-{name}-{identity[:12]}"
        lock = open(lock_path, "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"another run is writing {stage}/{name}-{identity[:12]} "
                               f"(lock {lock_path}); wait for it or remove the stale process") from None
        resumed = partial.exists() and any(partial.iterdir())
        if partial.exists() and not resumable:
            shutil.rmtree(partial)
            resumed = False
        partial.mkdir(parents=True, exist_ok=True)
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
        if final.exists():               # an incomplete leftover (no manifest) — replace it
            shutil.rmtree(final)
        os.rename(self.partial, final)
        _fsync_dir(final.parent)
        self.release()
        return Artifact(self.stage, self.name, self.identity, str(final), manifest)

    def release(self) -> None:
        if self.lock is not None:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            self.lock.close()
            self.lock = None   # the lock file stays: unlinking it would race with a waiter


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
