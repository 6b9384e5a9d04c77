"""Scheduled runs on a real Prefect server: `forgeflow deploy` registers deploy/prefect.yaml,
`forgeflow serve` serves one spec on an interval schedule that fires by itself."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml

from tests.e2e_util import REPO
from tests.servers import BIN, Proc, cli, flow_runs, prefect_env, prefect_server, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect")) as (url, proc):
        yield url


def test_deploy_registers_prefect_yaml(prefect_api, tmp_path):
    env = prefect_env(tmp_path / "client", prefect_api)
    proc = cli("deploy", env=env, timeout=300)
    assert "created work pool 'forgeflow-process'" in proc.stdout
    declared = {d["name"]: d for d in yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())["deployments"]}
    got = httpx.post(f"{prefect_api}/deployments/filter", json={}, timeout=30).json()
    got = {d["name"]: d for d in got}
    assert set(declared) <= set(got)
    for name, d in declared.items():
        g = got[name]
        assert g["parameters"] == d["parameters"]
        assert g["work_pool_name"] == "forgeflow-process"
        assert [s["schedule"].get("cron") for s in g["schedules"]] == [s["cron"] for s in d.get("schedules", [])]
        # the pull step runs the flow from this checkout
        assert g["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    # a deployment whose spec is broken is refused before anything is registered
    bad = tmp_path / "prefect.yaml"
    bad.write_text(yaml.safe_dump({"deployments": [{"name": "broken", "entrypoint": "flows/end_to_end.py:end_to_end",
                                                    "parameters": {"config": str(REPO / "configs/quickstart.yaml"),
                                                                   "overrides": ["train.stepz=3"]}}]}))
    proc = cli("deploy", "--prefect-file", str(bad), env=env, check=False)
    assert proc.returncode == 2 and "deployment 'broken'" in proc.stderr and "stepz" in proc.stderr


def test_serve_interval_schedule_fires_and_tracks(prefect_api, tmp_path):
    spec = tiny_spec(tmp_path)
    workdir = tmp_path / "work"
    env = prefect_env(tmp_path / "client", prefect_api)
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"
    served = Proc([str(BIN / "python"), "-m", "flows.cli", "serve", str(spec), "train.steps=3",
                   "--interval", "20s", "--name", "tiny-every-20s", "--workdir", str(workdir)],
                  tmp_path / "serve.log", env)
    try:
        deadline = time.time() + 400
        dep = None
        while time.time() < deadline and dep is None:
            assert served.alive(), served.tail()
            deps = httpx.post(f"{prefect_api}/deployments/filter",
                              json={"deployments": {"name": {"any_": ["tiny-every-20s"]}}}, timeout=30).json()
            dep = deps[0] if deps else None
            time.sleep(1)
        assert dep is not None, served.tail()
        assert dep["parameters"] == {"config": str(spec), "overrides": ["train.steps=3"],
                                     "workdir": str(workdir)}
        assert dep["schedules"][0]["schedule"]["interval"] == 20.0
        done = None
        while time.time() < deadline and done is None:
            assert served.alive(), served.tail()
            runs = flow_runs(prefect_api, dep["id"])
            failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not failed, (failed[0]["state"], served.tail(8000))
            done = next((r for r in runs if r["state_type"] == "COMPLETED"), None)
            time.sleep(2)
        assert done is not None, f"no completed scheduled run:\n{served.tail(8000)}"
    finally:
        served.stop()
    # nobody triggered it: the scheduler created it from the interval schedule
    assert done["auto_scheduled"] is True
    assert done["created_by"]["type"] == "SCHEDULE"
    # its MLflow parent run (in the workdir's store) names this flow run, with every stage
    from tests.e2e_util import mlflow_runs
    client, parents, children = mlflow_runs(workdir, "tiny")
    mine = [p for p in parents if p.data.tags.get("forgeflow.prefect_flow_run_id") == done["id"]]
    assert len(mine) == 1 and mine[0].info.status == "FINISHED"
    nodes = {r.data.tags["forgeflow.node"] for r in children[mine[0].info.run_id]}
    assert {"ingest.docs", "tokenize", "pretrain", "evaluate"} <= nodes
    assert json.loads(mine[0].data.params["train.steps"]) == 3
