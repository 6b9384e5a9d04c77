"""The quickstart end to end, through the real CLI, Prefect, MLflow, Ray and torch.

One module-scoped workdir carries the story a user lives through:
1. a cold run of configs/quickstart.yaml: every stage runs; the MLflow run tree and the
   Prefect flow run are read back through their clients;
2. the same spec again: every stage is a cache hit (in Prefect and in MLflow), and that
   all-cached run, in a fresh interpreter, imports no torch, Ray, transformers or
   matplotlib (so it starts no Ray and no worker processes: issue 17's cached path);
3. one filter threshold changed, the run killed in the middle of a stage and re-run:
   exactly the stages downstream of the filter ran, and the final identities are the
   ones the plan computes statically;
4. only the mixture changed: only training and evaluation run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e_util import REPO, cli_env, forgeflow, mlflow_runs, plan, prefect_runs

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs" / "quickstart.yaml")
DOWNSTREAM_OF_FILTER = {"filter", "dedup", "tokenizer", "tokenize", "pretrain", "continual.code", "evaluate"}
TRAINING = {"pretrain", "continual.code", "evaluate"}
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


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("quickstart")


def _committed(workdir: Path) -> dict[str, str]:
    out = {}
    for m in workdir.glob("*/*/manifest.json"):
        data = json.loads(m.read_text())
        out.setdefault(data["key"], set()).add(data["identity"])
    return out


def _children(workdir, parent_index):
    client, parents, children = mlflow_runs(workdir, "quickstart")
    parent = parents[parent_index]
    return parent, {r.data.tags["forgeflow.node"]: r for r in children.get(parent.info.run_id, [])}


def test_1_cold_run(workdir):
    expected = plan(CONFIG, workdir=workdir)
    proc = forgeflow("run", CONFIG, "--workdir", str(workdir), workdir=workdir, timeout=1500)
    assert "forgeflow ui --workdir" in proc.stdout
    assert f"{len(expected)} stages ({len(expected)} ran, 0 cached)" in proc.stdout
    committed = _committed(workdir)
    assert {k: next(iter(v)) for k, v in committed.items()} == expected

    parent, kids = _children(workdir, 0)
    assert parent.info.status == "FINISHED"
    assert set(kids) == set(expected)
    assert all(r.data.tags["forgeflow.cached"] == "false" for r in kids.values())
    assert all(r.info.status == "FINISHED" for r in kids.values())
    assert parent.data.params["mix.docs"] == "0.6"
    m = {k: r.data.metrics for k, r in kids.items()}
    assert m["crawl.docs"]["pages_fetched"] > 100
    assert m["ingest.docs"]["docs_out"] > 50
    assert m["filter"]["docs_out"] < m["filter"]["docs_in"]
    assert m["dedup"]["docs_out"] < m["dedup"]["docs_in"]          # the site has near-copies
    assert m["pretrain"]["final_loss"] < 7.0
    ev = m["evaluate"]
    for label in ("pretrain", "continual.code"):
        for src in ("docs", "code"):
            assert 0.3 < ev[f"bpb.{label}.{src}"] < 8.0
    # the code-heavy phase makes code cheaper to predict
    assert ev["bpb.continual.code.code"] < ev["bpb.pretrain.code"]
    # dataset inputs carry the artifact identity as digest
    client = mlflow_runs(workdir, "quickstart")[0]
    run = client.get_run(kids["dedup"].info.run_id)
    digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
    assert expected["filter"][:36] in digests

    flows = prefect_runs(workdir)
    fr = flows[0]
    assert fr["state"] == "Completed"
    assert set(fr["tasks"]) == set(expected)
    assert set(fr["tasks"].values()) == {"Completed"}
    # the flow-run graph has the real data edges
    by_id = fr["task_ids"]
    assert {by_id[i] for i in fr["upstream"]["dedup"]} == {"filter"}
    assert {by_id[i] for i in fr["upstream"]["tokenize"]} == {"dedup", "tokenizer"}
    assert any(k.endswith("-evaluate") for k in fr["artifacts"])

    # named from the spec and the moment, the same in both UIs, each pointing at the other
    import re
    assert re.fullmatch(r"quickstart-\d{8}-\d{6}", parent.info.run_name), parent.info.run_name
    assert fr["name"] == parent.info.run_name
    assert parent.data.tags["forgeflow.prefect_flow_run_id"] == fr["id"]
    assert parent.data.tags["forgeflow.prefect_flow_run_url"].endswith(f"/runs/flow-run/{fr['id']}")
    assert "quickstart-mlflow" in fr["artifacts"]
    # a model-training experiment (not MLflow 3's GenAI overview) whose runs table opens
    # on the evaluation metrics and the mixture weights
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.forgeflow"])
    assert "metrics.`bpb.pretrain.code`" in view["selectedColumns"]
    assert "params.`mix.docs`" in view["selectedColumns"]


def test_2_second_run_is_all_cache_hits(workdir):
    expected = plan(CONFIG, workdir=workdir)
    # the new workdir's Prefect store started from the migrated template in the user cache
    from pipeline.store import user_cache_dir
    assert list((user_cache_dir() / "prefect").glob("*/prefect.db"))
    proc = subprocess.run([sys.executable, "-c", CACHED_RUN, "run", CONFIG, "--workdir", str(workdir)],
                          cwd=REPO, env=cli_env(workdir), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"{len(expected)} stages (0 ran, {len(expected)} cached)" in proc.stdout
    heavy = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY="))[6:])
    assert heavy == [], f"an all-cached run imported {heavy}"
    parent, kids = _children(workdir, 1)
    assert set(kids) == set(expected)
    first_parent, first_kids = _children(workdir, 0)
    for key, run in kids.items():
        assert run.data.tags["forgeflow.cached"] == "true"
        assert run.data.tags["forgeflow.produced_by_run"] == first_kids[key].info.run_id
    fr = prefect_runs(workdir)[0]
    assert fr["state"] == "Completed" and set(fr["tasks"].values()) == {"Cached"}
    assert len(fr["tasks"]) == len(kids)
    assert {fr["task_ids"][i] for i in fr["upstream"]["dedup"]} == {"filter"}
    assert any(a.endswith("-filter") for a in fr["artifacts"])


def test_3_threshold_change_killed_and_resumed(workdir):
    override = "filters.steps.3.max_avg_word_length=12"        # gopher_quality
    before = plan(CONFIG, workdir=workdir)
    expected = plan(CONFIG, override, workdir=workdir)
    changed = {k for k in expected if expected[k] != before[k]}
    assert changed == DOWNSTREAM_OF_FILTER

    # start, wait until pretraining is writing its partial artifact, kill the whole group
    proc = forgeflow("run", CONFIG, override, "--workdir", str(workdir), workdir=workdir, popen=True)
    partial = workdir / "train" / f".partial-pretrain-{expected['pretrain'][:12]}"
    deadline = time.time() + 900
    while time.time() < deadline and not (partial / "checkpoint").exists():
        assert proc.poll() is None, proc.stdout.read()[-5000:]
        time.sleep(1)
    assert (partial / "checkpoint").exists(), "pretraining never checkpointed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / "train" / f"pretrain-{expected['pretrain'][:12]}").exists()

    out = forgeflow("run", CONFIG, override, "--workdir", str(workdir), workdir=workdir).stdout
    assert "forgeflow:" in out
    parent, kids = _children(workdir, -1)
    ran = {k for k, r in kids.items() if r.data.tags["forgeflow.cached"] == "false"}
    # stages committed by the killed run are cached now; nothing upstream of the filter ran
    assert ran <= DOWNSTREAM_OF_FILTER and {"pretrain", "evaluate"} <= ran
    assert kids["pretrain"].data.tags["forgeflow.resumed"] == "true"
    final = {k: v for k, v in _committed(workdir).items()}
    for key, ident in expected.items():
        assert ident in final[key], key
    manifest = json.loads((workdir / "train" / f"pretrain-{expected['pretrain'][:12]}" / "manifest.json").read_text())
    assert manifest["resumed"] is True


def test_4_mixture_change_reruns_only_training(workdir):
    override = "train.mixture={docs: 0.5, code: 0.5}"
    proc = forgeflow("run", CONFIG, override, "--workdir", str(workdir), workdir=workdir)
    parent, kids = _children(workdir, -1)
    ran = {k for k, r in kids.items() if r.data.tags["forgeflow.cached"] == "false"}
    assert ran == TRAINING
    assert parent.data.params["mix.code"] == "0.5"
    assert "3 ran" in proc.stdout
