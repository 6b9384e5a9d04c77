"""A real sweep through the CLI: Prefect (sweep flow, trials as subflows), MLflow (sweep
run, nested trials, nested stages), Ray and torch, on the tiny three-source spec.

Three Dirichlet trials (two at a time, so they reach the shared stages together) plus the
regression's proposed mixture: every data stage runs exactly once, every trial trains
and evaluates its own mixture, and `forgeflow compare` lists the trials and marks the best.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e_util import REPO, cli_env, forgeflow
from tests.sweep_util import small_spec

pytestmark = pytest.mark.slow

DATA_STAGES = {"ingest.prose", "ingest.web", "ingest.code", "filter", "dedup", "tokenizer", "tokenize"}
MINS = {"prose": 0.05, "web": 0.05, "code": 0.1}

PREFECT_TREE = r"""
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        flows = await c.read_flow_runs(limit=100)
        tasks = await c.read_task_runs(limit=200)
        print(json.dumps({
            "flows": [{"id": str(f.id), "name": f.name, "state": f.state.name,
                       "flow": (await c.read_flow(f.flow_id)).name,
                       "parent_task": str(f.parent_task_run_id) if f.parent_task_run_id else None}
                      for f in flows],
            "tasks": {str(t.id): {"flow_run": str(t.flow_run_id), "name": t.name} for t in tasks},
            "artifacts": [a.key for a in await c.read_artifacts() if a.key]}))
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    workdir = tmp / "work"
    spec = small_spec(tmp, sweep={
        "dirichlet": {"sources": ["prose", "web", "code"], "n": 3, "seed": 1, "min_weight": MINS},
        "metric": {"bpb.pretrain.prose": 0.5, "bpb.pretrain.code": 0.5},
        "propose": True, "max_parallel": 2})
    proc = forgeflow("sweep", str(spec), "--workdir", str(workdir), workdir=workdir, timeout=1500)
    sweep_id = proc.stdout.rsplit("sweep id ", 1)[1].split()[0]
    return workdir, sweep_id, proc.stdout


def test_data_stages_ran_once_and_every_trial_trained_its_mixture(swept):
    workdir, sweep_id, out = swept
    manifests = [json.loads(m.read_text()) for m in workdir.glob("*/*/manifest.json")]
    by_key: dict[str, list] = {}
    for m in manifests:
        by_key.setdefault(m["key"], []).append(m)
    for key in DATA_STAGES:
        assert len(by_key[key]) == 1, key                       # shared by all four trials
    assert len(by_key["pretrain"]) == 4 and len(by_key["evaluate"]) == 4
    assert not list(workdir.glob("*/.partial-*"))

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    sweep = client.get_run(sweep_id)
    assert sweep.data.tags["forgeflow.kind"] == "sweep" and sweep.info.status == "FINISHED"
    assert sweep.data.tags["forgeflow.sweep_metric"] == "0.5*bpb.pretrain.prose + 0.5*bpb.pretrain.code"
    assert json.loads(sweep.data.tags["forgeflow.varied"]) == ["train.mixture"]
    exp = sweep.info.experiment_id
    # trials: found by tag, nested under the sweep run, with their mixture as params
    trials = client.search_runs([exp], filter_string=f"tags.`forgeflow.sweep_id` = '{sweep_id}'")
    trials = sorted(trials, key=lambda r: r.data.tags["forgeflow.trial"])
    assert [t.data.tags["forgeflow.trial"] for t in trials] == ["t00", "t01", "t02", "t03"]
    assert [t.data.tags["forgeflow.trial_kind"] for t in trials] == ["sampled"] * 3 + ["proposed"]
    mixes = []
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == sweep_id and t.info.status == "FINISHED"
        mix = json.loads(t.data.tags["forgeflow.sweep_values"])["train.mixture"]
        mixes.append(mix)
        assert json.loads(t.data.params["varied.train.mixture"]) == mix
        for src, w in mix.items():
            assert float(t.data.params[f"mix.{src}"]) == w and w >= MINS[src] - 1e-9
        m = t.data.metrics
        assert m["sweep.metric"] == pytest.approx(0.5 * m["bpb.pretrain.prose"] + 0.5 * m["bpb.pretrain.code"])
    assert len({json.dumps(m, sort_keys=True) for m in mixes}) == 4
    # each trial's stages nested under it; every data stage computed in exactly one trial
    stages = {t.info.run_id: {r.data.tags["forgeflow.node"]: r for r in client.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{t.info.run_id}'")} for t in trials}
    for kids in stages.values():
        assert set(kids) == DATA_STAGES | {"pretrain", "evaluate"}
        assert kids["pretrain"].data.tags["forgeflow.cached"] == "false"
    for key in DATA_STAGES:
        computed = [k[key] for k in stages.values() if k[key].data.tags["forgeflow.cached"] == "false"]
        assert len(computed) == 1, key
        producer = computed[0].info.run_id
        assert all(k[key].data.tags.get("forgeflow.produced_by_run", producer) == producer
                   for k in stages.values())
    # the proposal: predicted vs observed logged, and the leave-one-out fit of the others
    sm = sweep.data.metrics
    assert {"regression.spearman_loo", "regression.predicted", "regression.observed"} <= set(sm)
    assert sm["regression.observed"] == pytest.approx(trials[3].data.metrics["sweep.metric"])
    assert trials[3].data.metrics["sweep.predicted"] == pytest.approx(sm["regression.predicted"])
    assert all("sweep.loo_predicted" in t.data.metrics for t in trials[:3])
    plots = {a.path for a in client.list_artifacts(sweep_id, "plots")}
    assert plots == {"plots/metric_vs_weight.png", "plots/bpb_per_trial.png", "plots/predicted_vs_observed.png"}
    best = min(trials, key=lambda t: t.data.metrics["sweep.metric"])
    assert sweep.data.tags["forgeflow.best_run"] == best.info.run_id


def test_compare_lists_every_trial_and_marks_the_best(swept, tmp_path):
    workdir, sweep_id, out = swept
    csv_path = tmp_path / "sweep.csv"
    text = forgeflow("compare", sweep_id, "--workdir", str(workdir), "--csv", str(csv_path),
                     workdir=workdir).stdout
    lines = [line for line in text.splitlines() if line.lstrip("* ").startswith("t0")]
    assert [line.lstrip("* ").split()[0] for line in lines] == ["t00", "t01", "t02", "t03"]
    starred = [line for line in lines if line.startswith("*")]
    assert len(starred) == 1
    import csv
    rows = list(csv.DictReader(csv_path.open()))
    metric = "0.5*bpb.pretrain.prose + 0.5*bpb.pretrain.code"
    best = min(rows, key=lambda r: float(r[metric]))
    assert [r["trial"] for r in rows if r["best"] == "*"] == [best["trial"]]
    assert starred[0].lstrip("* ").split()[0] == best["trial"]
    assert {"mix.prose", "mix.web", "mix.code", "predicted", "bpb.pretrain.code"} <= set(rows[0])
    assert rows[3]["kind"] == "proposed" and rows[3]["predicted"]
    # the sweep command printed the same table
    assert f"sweep id {sweep_id}" in out and metric in out


def test_prefect_shows_the_sweep_with_its_trials_as_subflows(swept):
    workdir, sweep_id, out = swept
    proc = subprocess.run([sys.executable, "-c", PREFECT_TREE], cwd=REPO, env=cli_env(workdir),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tree = json.loads(proc.stdout.strip().splitlines()[-1])
    sweeps = [f for f in tree["flows"] if f["flow"] == "sweep"]
    assert len(sweeps) == 1 and sweeps[0]["state"] == "Completed"
    trials = [f for f in tree["flows"] if f["flow"] == "end_to_end"]
    assert sorted(f["name"] for f in trials) == [f"tiny-t0{i}" for i in range(4)]
    for f in trials:                 # each trial is a subflow of a task of the sweep flow run
        assert f["state"] == "Completed"
        assert tree["tasks"][f["parent_task"]]["flow_run"] == sweeps[0]["id"]
    assert "sweep-tiny" in tree["artifacts"]
