"""Wall time of an N-trial sweep (one workdir: the data stages run once, shared) against N
independent `forgeflow run`s of the same trials, each in a fresh workdir (every stage
computed N times). Both through the real CLI, on the same machine, in the same run.

    .venv/bin/python bench/sweep.py                       # configs/mix_sweep.yaml, 3 trials
    .venv/bin/python bench/sweep.py --trials 6
    .venv/bin/python bench/sweep.py --tiny --trials 3     # the tests' tiny spec (minutes on a loaded box)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.experiments.sweep import plan_sweep  # noqa: E402
from tests.e2e_util import cli_env  # noqa: E402


def forgeflow(args: list[str], workdir: Path) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=cli_env(workdir),
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"forgeflow {' '.join(args[:2])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs" / "mix_sweep.yaml"))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny three-source spec")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ff-bench-sweep-"))
    config = args.config
    if args.tiny:
        from tests.sweep_util import small_spec
        config = str(small_spec(root, sweep={"dirichlet": {"sources": ["prose", "web", "code"], "n": 3},
                                             "metric": "bpb.pretrain.prose"}))
    overrides = [f"sweep.dirichlet.n={args.trials}", "sweep.propose=false", "sweep.max_parallel=1"]
    plan = plan_sweep(config, overrides)
    print(f"{len(plan.trials)} trials of {config}; scratch {root}")

    sweep_s = forgeflow(["sweep", config, *overrides, "--workdir", str(root / "sweep")], root / "sweep")
    print(f"sweep (one workdir, shared upstream): {sweep_s:.1f}s")
    indep = []
    for t in plan.trials:
        wd = root / f"run-{t.key}"
        indep.append(forgeflow(["run", config, *plan.trial_overrides(t), "--workdir", str(wd)], wd))
        print(f"  independent run {t.name} (fresh workdir): {indep[-1]:.1f}s")
    total = sum(indep)
    print(f"{len(plan.trials)} independent runs: {total:.1f}s")
    print(f"ratio independent / sweep: {total / sweep_s:.2f}x")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
