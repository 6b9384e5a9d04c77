"""Chaos: SIGKILL a pipeline run at N seeded random moments, rerun it each time, and check
that nothing a kill leaves behind is ever trusted.

    PYTHONPATH=. python bench/chaos.py                       # the quickstart, 20 kills
    PYTHONPATH=. python bench/chaos.py --kills 3 --config my.yaml key=value ...
    make chaos                                                # the same as the first line

Kill moments are drawn from a seed: each targets a stage family in pipeline order (crawl,
ingest, models, filter, dedup, tokenizer, tokenize, train, evaluate) and fires a random
0-3 s after that stage's partial directory appears; "commit" moments poll every 5 ms and
fire the instant a new artifact is renamed into place (the window between the store's
commit and the Prefect/MLflow bookkeeping). The whole process group dies (Ray workers
included). After every kill:
  - every artifact directory has a valid, sealed manifest and re-hashes clean
    (``ArtifactStore.verify(deep=True)``), and nothing was quarantined;
then the run is started again. A run that goes through to the end before its moment comes
(the stages it targets were already committed) completes that workdir; the moment is tried
once more in a fresh workdir (a new "round"), so the kills keep landing in work that is
really running. At the end the last round's run goes through, and, for every round:
  - the committed identities equal the ones ``forgeflow validate --json`` computes;
  - every metric of every stage equals an uninterrupted run's in a fresh workdir,
    bitwise, except wall-clock quantities (seconds, throughput), a crawl's bookkeeping
    (resumed, connections opened) and the byte size of its gzipped WARC files (records
    carry their fetch time). A crawl's pages arrive in a different order every time;
    ingest writes them in id order, so everything after it is compared bitwise.
Prints one line per kill and a summary; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.store import MANIFEST, QUARANTINE, ArtifactStore  # noqa: E402
from tests.e2e_util import forgeflow, plan  # noqa: E402

STAGE_ORDER = ["crawl", "ingest", "models", "filter", "dedup", "tokenizer", "tokenize", "train", "evaluate"]
# wall-clock quantities differ run to run by nature; everything else must match bitwise
# readings of the machine, not of the data: clocks and memory
CLOCK = re.compile(r"(seconds|_s$|per_s|per_sec|throughput|elapsed|time|mfu|_ms$|wall|peak_mem|_mb$|rss)", re.I)
# how a crawl ran, not what it fetched: a resumed crawl reports it resumed (and, when every
# page was already in a closed WARC file, fetched no robots.txt and opened no connection)
CRAWL_RUN_FACTS = {"resumed", "already_complete", "robots_fetched", "tcp_connects", "stopped_by_deadline"}
# the size of a crawl's gzipped WARC files: every record carries its fetch time (WARC-Date),
# so two crawls of the same pages compress to a few bytes more or less
WARC_ENCODING = {"bytes_in"}


def ignored(key: str, metric: str, keys) -> bool:
    """Metrics left out of the bitwise comparison (clocks; crawl bookkeeping)."""
    if CLOCK.search(metric):
        return True
    family, _, name = key.partition(".")
    if family == "crawl":
        return metric in CRAWL_RUN_FACTS
    return family == "ingest" and f"crawl.{name}" in keys and metric in WARC_ENCODING


def moments(stages: list[str], kills: int, seed: int) -> list[tuple[str, float]]:
    """``kills`` (target, delay) pairs in pipeline order; target is a stage or 'commit'."""
    rng = random.Random(seed)
    targets = ["commit" if i % 4 == 1 else stages[int(i * len(stages) / kills)] for i in range(kills)]
    return [(t, 0.0 if t == "commit" else round(rng.uniform(0.0, 3.0), 2)) for t in targets]


def _finals(workdir: Path) -> set[Path]:
    return {p.parent for p in workdir.glob(f"*/*/{MANIFEST}") if not p.parent.name.startswith(".")}


FINISHED = "finished before the moment came"


def _wait_and_kill(proc, workdir: Path, target: str, delay: float, timeout: float) -> str:
    """Kill ``proc``'s group at the moment described; return what happened."""
    t_start = time.time()
    deadline = t_start + timeout
    start_finals = _finals(workdir)
    while time.time() < deadline:
        if proc.poll() is not None:
            return FINISHED
        if target == "commit":
            new = _finals(workdir) - start_finals
            if new:
                os.killpg(proc.pid, signal.SIGKILL)
                return f"killed right after committing {sorted(new)[0].relative_to(workdir)}"
            time.sleep(0.005)
            continue
        partials = [p for p in workdir.glob(f"{target}/.partial-*") if _mtime(p) >= t_start]
        if partials:
            time.sleep(delay)
            if proc.poll() is not None:
                return FINISHED
            os.killpg(proc.pid, signal.SIGKILL)
            return f"killed {delay:.2f}s into {partials[0].relative_to(workdir)}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    return f"killed at the timeout ({target} never started)"


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def integrity(workdir: Path) -> list[str]:
    """Violations: an artifact that does not verify, or anything quarantined."""
    problems = [f"{d.relative_to(workdir)}: {'; '.join(p)}"
                for d, p in ArtifactStore(workdir).verify(deep=True) if p]
    q = workdir / QUARANTINE
    if q.is_dir():
        problems += [f"quarantined: {d.relative_to(workdir)}" for d in q.glob("*/*")]
    return problems


def final_state(workdir: Path) -> dict[str, dict]:
    out = {}
    for a in ArtifactStore(workdir).artifacts():
        out.setdefault(a.manifest.get("key", a.stage), {})[a.identity] = a.metrics
    return out


def compare_metrics(expected_ids: dict[str, str], got: dict, want: dict) -> list[str]:
    diffs = []
    for key, ident in expected_ids.items():
        if ident not in got.get(key, {}):
            diffs.append(f"{key}: identity {ident[:12]} not committed")
            continue
        a, b = got[key][ident], want.get(key, {}).get(ident)
        if b is None:
            diffs.append(f"{key}: missing from the uninterrupted run")
            continue
        for m in sorted(set(a) | set(b)):
            if ignored(key, m, expected_ids):
                continue
            if a.get(m) != b.get(m):
                diffs.append(f"{key}.{m}: {a.get(m)!r} after kills vs {b.get(m)!r} uninterrupted")
    return diffs


def chaos(config: str, overrides: list[str], workdir: Path, baseline_dir: Path, kills: int, seed: int,
          timeout: float = 1800, log=print, at: list[tuple[str, float]] | None = None) -> dict:
    """Run the experiment; ``at`` replaces the seeded moments (a test's chosen kills)."""
    workdir.mkdir(parents=True, exist_ok=True)
    expected = plan(config, *overrides, workdir=workdir)
    families = {{"continual": "train", "pretrain": "train", "model": "models"}.get(k.split(".")[0], k.split(".")[0])
                for k in expected}
    stages = [s for s in STAGE_ORDER if s in families]
    report = {"kills": [], "violations": []}
    t0 = time.time()
    planned = at if at is not None else moments(stages, kills, seed)
    kills = len(planned)
    rounds = [workdir]
    for i, (target, delay) in enumerate(planned):
        for attempt in (1, 2):
            wd = rounds[-1]
            proc = forgeflow("run", config, *overrides, "--workdir", str(wd), workdir=wd, popen=True)
            what = _wait_and_kill(proc, wd, target, delay, timeout)
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
            bad = integrity(wd)
            report["kills"].append({"target": target, "what": what, "violations": bad,
                                    "round": len(rounds)})
            report["violations"] += [f"after kill {i + 1} (round {len(rounds)}): {b}" for b in bad]
            log(f"kill {i + 1:>2}/{kills} [{target:<9}] round {len(rounds)}: {what}; "
                f"integrity: {'OK' if not bad else bad}")
            if what != FINISHED or attempt == 2:
                break
            # the run went through to the end before its moment: this round's workdir is
            # complete (checked below); the moment is tried once more in a fresh workdir
            rounds.append(workdir.with_name(f"{workdir.name}-round{len(rounds) + 1}"))
            shutil.rmtree(rounds[-1], ignore_errors=True)
    log("final run (no kill) ...")
    forgeflow("run", config, *overrides, "--workdir", str(rounds[-1]), workdir=rounds[-1],
              timeout=int(timeout))
    log("uninterrupted run in a fresh workdir ...")
    forgeflow("run", config, *overrides, "--workdir", str(baseline_dir), workdir=baseline_dir, timeout=int(timeout))
    want = final_state(baseline_dir)
    for n, wd in enumerate(rounds, 1):
        report["violations"] += [f"round {n} final: {b}" for b in integrity(wd)]
        report["violations"] += [f"round {n}: {d}" for d in
                                 compare_metrics(plan(config, *overrides, workdir=wd),
                                                 final_state(wd), want)]
    report["rounds"] = len(rounds)
    report["seconds"] = round(time.time() - t0, 1)
    report["killed"] = sum(r["what"].startswith("killed") for r in report["kills"])
    report["stages_compared"] = len(expected)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(REPO / "work-chaos"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    report = chaos(args.config, args.overrides, workdir / "chaos", workdir / "baseline", args.kills,
                   args.seed, timeout=args.timeout)
    print(json.dumps({k: v for k, v in report.items() if k != "kills"}, indent=1))
    ok = not report["violations"]
    print(f"chaos: {report['killed']} SIGKILLs survived of {args.kills} planned, in "
          f"{report['rounds']} fresh workdir(s); {report['stages_compared']} stages of each "
          f"compared with an uninterrupted run: "
          f"{'OK' if ok else str(len(report['violations'])) + ' violation(s)'} ({report['seconds']}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
