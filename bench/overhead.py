"""Fixed costs of a pipeline run: per stage (fixed and marginal) and the whole quickstart
cold, warm and all-cached, for this checkout and (optionally) a baseline checkout,
interleaved so both see the same machine load.

    .venv/bin/python bench/overhead.py [--quick] [--baseline /path/to/other/checkout]

Runs, each one ``forgeflow run configs/quickstart.yaml`` in a subprocess (the real CLI,
Prefect's ephemeral API, MLflow on SQLite, local Ray):

* ``cold``     fresh workdir and fresh forgeflow user cache (``FORGEFLOW_CACHE_DIR``):
               what a new user's first run pays;
* ``cached``   the same workdir again: every stage is a cache hit;
* ``warm``     a fresh workdir, the user cache of ``cold`` kept (the second experiment
               of the day);
* ``tiny``     a fresh workdir, the quickstart scaled down (``TINY`` overrides: a 60-page
               local web, 10 training steps per phase), warm user cache.

``--quick`` runs ``tiny`` cold and cached only (a few minutes).

Per stage the table gives the stage's own seconds (``manifest.json``) on ``tiny`` and on
the full quickstart (``warm``), its units of work (pages, documents, tokens, steps) and
from the two points a marginal cost per unit and a fixed cost (the intercept). Flow time
is the CLI's own figure (``forgeflow: N stages ... in Ns``); wall is the subprocess's.
With ``--baseline`` every run is made for the baseline first, then for this checkout,
and the ratio baseline/this is printed (> 1 = this checkout is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/quickstart.yaml"
# (at 60 pages no `web` page survives the datatrove-semantics filters: train on docs + code)
TINY = ["sources.0.local_site.pages=60", "train.mixture={docs: 0.6, code: 0.4}",
        "train.steps=10", "train.checkpoint_every=0",
        "continual.phases.0.steps=10"]

# stage family -> (metric holding its units of work, unit name)
UNITS = {"crawl": ("pages_fetched", "page"), "ingest": ("docs_out", "doc"),
         "models": (None, "model"), "filter": ("docs_in", "doc"), "dedup": ("docs_in", "doc"),
         "tokenizer": ("docs_read", "doc"), "tokenize": ("tokens", "token"),
         "train": ("steps", "step"), "evaluate": (None, "run")}


def run_cli(code: Path, workdir: Path, cache: Path, overrides: list[str], log: Path) -> dict:
    """One ``forgeflow run`` of ``code``'s CLI; returns wall/flow seconds and the stages."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_ADDRESS"))}
    env.update(PYTHONPATH=str(code), FORGEFLOW_CACHE_DIR=str(cache),
               # a loaded machine must not fail the bench on Prefect's 20 s default
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", CONFIG, *overrides,
                               "--workdir", str(workdir)], cwd=code, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"forgeflow run failed ({code}, {workdir}); see {log}:\n{text[-3000:]}")
    m = re.search(r"forgeflow: (\d+) stages \((\d+) ran, (\d+) cached\) in (\d+)s", text)
    return {"wall": wall, "flow": float(m.group(4)) if m else float("nan"),
            "ran": int(m.group(2)) if m else -1, "stages": stage_times(workdir),
            "load": os.getloadavg()[0]}


def stage_times(workdir: Path) -> dict[str, dict]:
    """key -> {seconds, units, family} from each committed artifact's manifest."""
    out = {}
    for manifest in sorted(workdir.glob("*/*/manifest.json")):
        m = json.loads(manifest.read_text())
        family = manifest.parent.parent.name
        metric, _ = UNITS.get(family, (None, ""))
        units = float(m.get("metrics", {}).get(metric, 1.0)) if metric else 1.0
        out[m.get("key", family)] = {"seconds": float(m.get("seconds", 0.0)), "units": units,
                                     "family": family}
    return out


def stage_table(tiny: dict, full: dict | None) -> list[str]:
    rows = [f"{'stage':<22}{'tiny s':>9}{'units':>10}{'full s':>9}{'units':>10}"
            f"{'fixed s':>9}{'marginal':>16}"]
    for key in sorted(tiny, key=lambda k: list(UNITS).index(tiny[k]["family"])
                      if tiny[k]["family"] in UNITS else 99):
        t = tiny[key]
        f = (full or {}).get(key)
        unit = UNITS.get(t["family"], (None, "unit"))[1]
        if f and f["units"] > t["units"]:
            marg = (f["seconds"] - t["seconds"]) / (f["units"] - t["units"])
            fixed = t["seconds"] - marg * t["units"]
            mtxt = f"{marg * 1000:.3g} ms/{unit}"
            rows.append(f"{key:<22}{t['seconds']:>9.1f}{t['units']:>10.0f}{f['seconds']:>9.1f}"
                        f"{f['units']:>10.0f}{fixed:>9.1f}{mtxt:>16}")
        else:
            rows.append(f"{key:<22}{t['seconds']:>9.1f}{t['units']:>10.0f}{'':>9}{'':>10}"
                        f"{t['seconds']:>9.1f}{'':>16}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny spec only: cold and all-cached")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    ap.add_argument("--keep", type=Path, help="keep workdirs and logs here (default: a temp dir)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    root.mkdir(parents=True, exist_ok=True)
    codes = {"this": REPO}
    if args.baseline:
        codes = {"baseline": args.baseline.resolve(), "this": REPO}
    plan = [("cold", "tiny" if args.quick else "full", True, True),
            ("cached", "tiny" if args.quick else "full", False, False)]
    if not args.quick:
        plan += [("warm", "full", True, False), ("tiny", "tiny", True, False)]
    results: dict[str, dict[str, dict]] = {c: {} for c in codes}
    print(f"bench/overhead.py: {len(plan)} runs x {len(codes)} checkout(s), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; logs in {root}", flush=True)
    try:
        for name, scale, fresh_workdir, fresh_cache in plan:
            for label, code in codes.items():
                workdir = root / label / ("wd-tiny" if name == "tiny" else f"wd-{scale}")
                if name == "warm":
                    workdir = root / label / "wd-warm"
                cache = root / label / "cache"
                if fresh_workdir:
                    shutil.rmtree(workdir, ignore_errors=True)
                if fresh_cache:
                    shutil.rmtree(cache, ignore_errors=True)
                r = run_cli(code, workdir, cache, TINY if scale == "tiny" else [],
                            root / label / f"{name}.log")
                results[label][name] = r
                print(f"  {label:<8} {name:<7} wall {r['wall']:7.1f}s  flow {r['flow']:5.0f}s  "
                      f"{r['ran']:2d} ran  load {r['load']:.1f}", flush=True)
    finally:
        if not args.keep:
            print(f"(workdirs kept for inspection: {root}; delete when done)")

    print("\n== whole quickstart (seconds) ==")
    head = f"{'run':<8}" + "".join(f"{c + ' wall':>15}{c + ' flow':>15}" for c in codes)
    if args.baseline:
        head += f"{'wall ratio':>12}"
    print(head)
    for name, *_ in plan:
        line = f"{name:<8}"
        for c in codes:
            line += f"{results[c][name]['wall']:>15.1f}{results[c][name]['flow']:>15.0f}"
        if args.baseline:
            line += f"{results['baseline'][name]['wall'] / results['this'][name]['wall']:>11.2f}x"
        print(line)
    for c in codes:
        print(f"\n== per stage, {c} ({codes[c]}) ==")
        tiny = results[c].get("tiny") or results[c]["cold"]
        full = results[c].get("warm")
        print("\n".join(stage_table(tiny["stages"], full["stages"] if full else None)))


if __name__ == "__main__":
    main()
