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
directory is never read as an output.

Verification (what makes a cache hit safe): the manifest is sealed at commit time with
``manifest_digest``, the SHA-256 of its own canonical content. Every lookup checks the seal
and that every recorded file is present with its recorded size (cheap: one ``stat`` per
file); ``verify(deep=True)`` also re-hashes every file. An artifact that fails is moved
aside to ``<workdir>/.quarantine/<stage>/<name>-<id12>-<time>/`` (never deleted) with a
``QUARANTINE.json`` saying why, and the lookup reports a miss, so the stage is recomputed. Resumable stages (crawl, training) find their
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
QUARANTINE = ".quarantine"
RUNS_LOG = "runs.jsonl"          # one line per pipeline run: the identities it uses
RUN_GUARD = ".runs.lock"         # shared-locked by every live run, exclusively by gc
DIGEST_KEY = "manifest_digest"
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
        """The committed artifact, verified (cheap check); None on a miss.

        A final directory that fails the check (a missing or truncated file, a broken
        manifest, no manifest at all) is reported, moved to the quarantine and treated
        as a miss, so the caller recomputes it."""
        final = self.final_dir(stage, name, identity)
        if not final.exists():
            return None
        manifest, problems = check_artifact_dir(final, identity=identity)
        if manifest.get("identity") not in (None, identity) and \
                manifest.get(DIGEST_KEY) == manifest_seal(manifest):
            # a valid artifact of another identity: never move it, say so
            raise RuntimeError(f"{final / MANIFEST}: identity {manifest.get('identity')} does not "
                               f"match the directory's {identity} (id12 collision or tampering)")
        if problems:
            where = self.quarantine(final, problems)
            log.warning("artifact %s failed verification (%s); moved to %s and will be recomputed",
                        final, "; ".join(problems), where)
            return None
        return Artifact(stage, name, identity, str(final), manifest)

    def verify(self, deep: bool = False) -> list[tuple[Path, list[str]]]:
        """Every final artifact directory with its problems (empty list = verified).

        ``deep`` re-hashes every file against the manifest's SHA-256; otherwise the check is
        the lookup's (manifest seal, files present with their recorded sizes)."""
        out = []
        for stage_dir in self._stage_dirs():
            for art_dir in sorted(stage_dir.iterdir()):
                if not art_dir.is_dir() or art_dir.name.startswith("."):
                    continue
                if not (art_dir / MANIFEST).exists() and not _looks_like_artifact(art_dir):
                    continue        # not an artifact directory (e.g. prefect/, mlartifacts/)
                _, problems = check_artifact_dir(art_dir, deep=deep)
                out.append((art_dir, problems))
        return out

    def _stage_dirs(self) -> list[Path]:
        """Top-level directories the store wrote (each holds the lock files of its artifacts)."""
        return sorted(p for p in self.workdir.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and (any(p.glob(".lock-*")) or any(p.glob(f"*/{MANIFEST}"))))

    def quarantine(self, art_dir: Path, problems: list[str]) -> Path:
        """Move a bad artifact aside (never delete it), with a note saying why."""
        art_dir = Path(art_dir)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
        dest = self.workdir / QUARANTINE / art_dir.parent.name / f"{art_dir.name}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(art_dir, dest)
        except FileNotFoundError:       # another run moved it first
            return dest
        (dest / "QUARANTINE.json").write_text(json.dumps(
            {"from": str(art_dir), "problems": problems, "at": time.time()}, indent=1))
        _fsync_dir(art_dir.parent)
        return dest

    def artifacts(self) -> list[Artifact]:
        """Every committed artifact in the workdir."""
        out = []
        for manifest_path in sorted(self.workdir.glob(f"*/*/{MANIFEST}")):
            if manifest_path.parent.name.startswith(".partial-"):
                continue
            try:
                m = json.loads(manifest_path.read_text())
                m["stage"], m["name"], m["identity"]
            except (OSError, ValueError, KeyError, TypeError):
                continue            # broken: `forgeflow verify` names it
            out.append(Artifact(m["stage"], m["name"], m["identity"], str(manifest_path.parent), m))
        return out

    # ---- runs log and garbage collection ------------------------------------------------
    def record_run(self, run_id: str, spec_name: str, identities: dict[str, tuple[str, str, str]]):
        """Append this run to the runs log and hold a shared lock on the run guard for as
        long as the returned handle is open (the process's life, at most): gc never
        deletes an artifact while a run that may read it is alive.

        ``identities``: node key -> (stage, name, identity), computed before the run."""
        guard = open(self.workdir / RUN_GUARD, "a")
        fcntl.flock(guard, fcntl.LOCK_SH)
        # a leading newline ends any line a killed writer left unfinished
        line = "\n" + json.dumps({"run": run_id, "spec": spec_name, "started_at": time.time(),
                           "identities": {k: list(v) for k, v in identities.items()}},
                          sort_keys=True) + "\n"
        fd = os.open(self.workdir / RUNS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())      # one write with O_APPEND: lines never interleave
            os.fsync(fd)
        finally:
            os.close(fd)
        return guard

    def runs(self) -> list[dict]:
        """The runs log, oldest first (a line cut by a kill is skipped)."""
        path = self.workdir / RUNS_LOG
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
                if isinstance(entry, dict) and isinstance(entry.get("identities"), dict):
                    out.append(entry)
            except ValueError:
                continue
        return out

    def kept_identities(self, keep_runs: int) -> set[str]:
        """Identities used by the last ``keep_runs`` runs of each spec (by run name)."""
        by_spec: dict[str, list[dict]] = {}
        for entry in self.runs():
            by_spec.setdefault(str(entry.get("spec")), []).append(entry)
        keep = set()
        for entries in by_spec.values():
            for entry in entries[-keep_runs:] if keep_runs > 0 else []:
                keep.update(v[2] for v in entry["identities"].values() if len(v) == 3)
        return keep

    def gc(self, keep_runs: int = 3, dry_run: bool = False,
           lock_age_s: float = 3600.0) -> "GcReport":
        """Remove what nothing can use any more; see ``forgeflow gc --help``.

        - partial directories whose lock is free and whose identity no kept run uses;
        - lock files older than ``lock_age_s`` with no partial directory, while holding them;
        - Prefect result records (``prefect/storage/forgeflow-<identity>``) of artifacts
          that are not in the store;
        - committed artifacts no kept run uses: only with a runs log, and only while no
          run is alive (the run guard is taken exclusively, else they are left alone).
        The quarantine is never touched (it is reported)."""
        report = GcReport(dry_run=dry_run)
        kept = self.kept_identities(keep_runs)
        guard = open(self.workdir / RUN_GUARD, "a")
        try:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
                runs_alive = False
            except BlockingIOError:
                runs_alive = True
            committed = {a.identity for a in self.artifacts()}
            for stage_dir in self._stage_dirs():
                for d in sorted(stage_dir.glob(".partial-*")):
                    ident12 = d.name.rsplit("-", 1)[-1]
                    if any(k.startswith(ident12) for k in kept):
                        report.keep(d, "partial of a kept run (it resumes from it)")
                        continue
                    lock = d.parent / (".lock-" + d.name[len(".partial-"):])
                    with _try_lock(lock) as held:
                        if not held:
                            report.keep(d, "partial being written (lock held)")
                            continue
                        report.remove("partial", d, dry_run)
                for lock in sorted(stage_dir.glob(".lock-*")):
                    partial = lock.parent / (".partial-" + lock.name[len(".lock-"):])
                    if partial.exists() and not _is_removed(partial, report):
                        continue
                    if time.time() - lock.stat().st_mtime < lock_age_s:
                        continue
                    with _try_lock(lock) as held:
                        if held:
                            report.remove("lock", lock, dry_run)
                for art_dir in sorted(stage_dir.iterdir()):
                    if art_dir.name.startswith(".") or not (art_dir / MANIFEST).exists():
                        continue
                    try:
                        ident = json.loads((art_dir / MANIFEST).read_text()).get("identity", "")
                    except ValueError:
                        continue                 # broken: `forgeflow verify` reports it
                    if ident in kept:
                        continue
                    if not self.runs():
                        report.keep(art_dir, "no runs log yet: reachability unknown")
                    elif runs_alive:
                        report.keep(art_dir, "unreachable, but a run is alive (rerun gc later)")
                    else:
                        report.remove("artifact", art_dir, dry_run)
                        committed.discard(ident)
            storage = self.workdir / "prefect" / "storage"
            for rec in sorted(storage.glob("forgeflow-*")) if storage.is_dir() else []:
                if rec.name[len("forgeflow-"):] not in committed:
                    report.remove("prefect-result", rec, dry_run)
            q = self.workdir / QUARANTINE
            if q.is_dir():
                for d in sorted(q.glob("*/*")):
                    report.keep(d, "quarantined (inspect it, then delete by hand)")
        finally:
            guard.close()
        return report

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
        manifest = seal_manifest(manifest)
        tmp = self.partial / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.partial / MANIFEST)
        final = self.store.final_dir(self.stage, self.name, self.identity)
        if (final / MANIFEST).is_file():
            # Committed by a writer that did not hold the lock (an older forgeflow, or a
            # copy): a committed artifact is never deleted; ours is dropped instead. One
            # that fails verification is moved aside by lookup, and ours takes its place.
            existing = self.store.lookup(self.stage, self.name, self.identity)
            if existing is not None:
                shutil.rmtree(self.partial)
                self.release()
                log.warning("%s: already committed; keeping it and dropping this run's copy", final)
                return existing
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


@dataclass
class GcReport:
    dry_run: bool
    removed: list[tuple[str, Path, int]] = field(default_factory=list)    # (kind, path, bytes)
    kept: list[tuple[Path, str, int]] = field(default_factory=list)       # (path, why, bytes)

    def remove(self, kind: str, path: Path, dry_run: bool) -> None:
        size = disk_usage(path)
        self.removed.append((kind, path, size))
        if dry_run:
            return
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def keep(self, path: Path, why: str) -> None:
        self.kept.append((path, why, disk_usage(path)))

    @property
    def freed(self) -> int:
        return sum(n for _, _, n in self.removed)


def _is_removed(path: Path, report: GcReport) -> bool:
    return any(p == path for _, p, _ in report.removed)


class _try_lock:
    """``with _try_lock(path) as held``: the exclusive lock on ``path`` if free right now."""

    def __init__(self, path: Path):
        self.path, self.f, self.held = path, None, False

    def __enter__(self) -> bool:
        try:
            self.f = open(self.path, "a")
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except (BlockingIOError, FileNotFoundError):
            self.held = False
        return self.held

    def __exit__(self, *exc) -> None:
        if self.f is not None:
            self.f.close()


def disk_usage(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def lineage(artifacts: list[Artifact]) -> dict[str, list[tuple[str, Artifact | None, str]]]:
    """identity -> [(input name, the input's artifact or None if gone, its identity)]."""
    by_id = {a.identity: a for a in artifacts}
    return {a.identity: [(name, by_id.get(ident), ident)
                         for name, ident in sorted(a.manifest.get("inputs", {}).items())]
            for a in artifacts}


def manifest_seal(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical content, without the seal itself."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    return hashlib.sha256(canonical_json(json.loads(json.dumps(body, default=str))).encode()).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    return {**manifest, DIGEST_KEY: manifest_seal(manifest)}


def check_artifact_dir(art_dir: Path, identity: str | None = None,
                       deep: bool = False) -> tuple[dict, list[str]]:
    """(manifest, problems) for one final artifact directory; problems name the file.

    Cheap by default: the manifest parses, its seal matches its content, the identity
    matches the directory, and every recorded file exists with its recorded size.
    ``deep`` also re-hashes every file."""
    art_dir = Path(art_dir)
    path = art_dir / MANIFEST
    if not path.is_file():
        return {}, [f"{MANIFEST}: missing (an incomplete artifact)"]
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, [f"{MANIFEST}: unreadable ({type(exc).__name__}: {str(exc)[:80]})"]
    if not isinstance(manifest, dict):
        return {}, [f"{MANIFEST}: not a JSON object"]
    problems = []
    seal = manifest.get(DIGEST_KEY)
    if seal is None:
        problems.append(f"{MANIFEST}: no {DIGEST_KEY} (unsealed or written by an old version)")
    elif seal != manifest_seal(manifest):
        problems.append(f"{MANIFEST}: content does not match its {DIGEST_KEY} (edited or corrupted)")
    ident = manifest.get("identity")
    if identity is not None and ident != identity:
        problems.append(f"{MANIFEST}: identity {str(ident)[:12]} does not match the directory's "
                        f"{identity[:12]} (id12 collision or tampering)")
    elif not str(ident or "").startswith(art_dir.name.rsplit("-", 1)[-1]):
        problems.append(f"{MANIFEST}: identity {str(ident)[:12]} does not match the directory name")
    files = manifest.get("files")
    if not isinstance(files, dict):
        return manifest, problems + [f"{MANIFEST}: no 'files' table"]
    for rel, info in sorted(files.items()):
        f = art_dir / rel
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if size != info.get("bytes"):
            problems.append(f"{rel}: {size} bytes, manifest says {info.get('bytes')}")
        elif deep and file_digest(f) != info.get("sha256"):
            problems.append(f"{rel}: SHA-256 differs from the manifest (content corrupted)")
    return manifest, problems


def _looks_like_artifact(d: Path) -> bool:
    """A stage directory entry named <name>-<id12> (hex)."""
    tail = d.name.rsplit("-", 1)[-1]
    return len(tail) == 12 and all(c in "0123456789abcdef" for c in tail)


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
