"""Fixed costs: an all-cached run does no heavy work (issue 17).

A tiny quickstart (60-page local web, 10 training steps) runs cold through the real CLI
(its Prefect store seeded from the user cache's migrated template);
the same spec again, in a fresh interpreter, finds every stage cached and must not import
torch, Ray, transformers or matplotlib (so it starts no Ray and no worker processes),
while Prefect and MLflow still record all of it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e_util import REPO, cli_env, forgeflow, mlflow_runs, prefect_runs

CONFIG = str(REPO / "configs" / "quickstart.yaml")
# (at 60 pages no `web` page survives the datatrove-semantics filters: train on docs + code)
TINY = ["sources.0.local_site.pages=60", "train.mixture={docs: 0.6, code: 0.4}",
        "train.steps=10", "train.checkpoint_every=0",
        "continual.phases.0.steps=10"]
HEAVY = ("torch", "ray", "transformers", "matplotlib", "tokenizers", "fasttext", "trafilatura")

# The CLI in this interpreter, then the heavy top-level modules it left in sys.modules.
CACHED_RUN = r"""
import json, sys
from flows.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print("HEAVY=" + json.dumps(sorted({m.split(".")[0] for m in heavy})))
sys.exit(rc)
""" % (HEAVY,)


@pytest.mark.slow
def test_all_cached_run_imports_nothing_heavy(tmp_path):
    args = ["run", CONFIG, *TINY, "--workdir", str(tmp_path)]
    cold = forgeflow(*args, workdir=tmp_path, timeout=1500)
    assert "0 cached" in cold.stdout
    # the new workdir's Prefect store started from the migrated template in the user cache
    from pipeline.store import user_cache_dir
    assert list((user_cache_dir() / "prefect").glob("*/prefect.db"))
    assert (tmp_path / "prefect" / "prefect.db").stat().st_size > 0

    proc = subprocess.run([sys.executable, "-c", CACHED_RUN, *args], cwd=REPO,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = next(ln for ln in proc.stdout.splitlines() if ln.startswith("forgeflow: "))
    assert "(0 ran, " in summary, summary
    heavy = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY="))[6:])
    assert heavy == [], f"an all-cached run imported {heavy}"

    # still recorded: a second parent run in MLflow whose children are all cached, and a
    # Prefect flow run with every task Cached, its data edges and its artifacts
    _, parents, children = mlflow_runs(tmp_path, "quickstart")
    assert len(parents) == 2
    kids = children[parents[1].info.run_id]
    assert len(kids) >= 15 and all(r.data.tags["forgeflow.cached"] == "true" for r in kids)
    fr = prefect_runs(tmp_path)[0]
    assert fr["state"] == "Completed" and set(fr["tasks"].values()) == {"Cached"}
    assert len(fr["tasks"]) == len(kids)
    assert {fr["task_ids"][i] for i in fr["upstream"]["dedup"]} == {"filter"}
    assert any(a.endswith("-filter") for a in fr["artifacts"])
