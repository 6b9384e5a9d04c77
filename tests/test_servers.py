"""Real servers: a Prefect server, an MLflow tracking server on PostgreSQL (SQLite where
PostgreSQL cannot be had) with --serve-artifacts.

- `forgeflow deploy` registers deploy/prefect.yaml's deployments;
- `forgeflow serve` serves a tiny spec on an interval schedule that fires by itself; the run
  tracks to the MLflow server, whose artifact store (not the client's disk) gets the plots,
  fetched back over HTTP;
- a killed run's MLflow runs, left RUNNING, are marked KILLED on the next start.
One pipeline run (the scheduled one) proves the first two, to keep CI time down."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml

from tests.e2e_util import REPO
from tests.servers import BIN, Proc, cli, flow_runs, mlflow_server, prefect_env, prefect_server, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect")) as (url, proc):
        yield url


@pytest.fixture(scope="module")
def mlflow_api(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


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


def _wait_deployment(api: str, name: str, served: Proc, deadline: float) -> dict:
    while time.time() < deadline:
        assert served.alive(), served.tail()
        deps = httpx.post(f"{api}/deployments/filter",
                          json={"deployments": {"name": {"any_": [name]}}}, timeout=30).json()
        if deps:
            return deps[0]
        time.sleep(2)
    raise AssertionError(f"deployment {name} never registered:\n{served.tail()}")


def test_scheduled_run_fires_and_tracks_to_the_mlflow_server(prefect_api, mlflow_api, tmp_path):
    ml_url, server_artifacts, backend = mlflow_api
    print(f"[test] MLflow server on {backend}")
    spec = tiny_spec(tmp_path)
    workdir = tmp_path / "work"
    env = prefect_env(tmp_path / "client", prefect_api)
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"
    env["MLFLOW_TRACKING_URI"] = ml_url
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "600"
    served = Proc([str(BIN / "python"), "-m", "flows.cli", "serve", str(spec), "train.steps=3",
                   "--interval", "20s", "--name", "tiny-every-20s", "--workdir", str(workdir)],
                  tmp_path / "serve.log", env)
    try:
        deadline = time.time() + 900
        dep = _wait_deployment(prefect_api, "tiny-every-20s", served, deadline)
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
    assert done["auto_scheduled"] is True and done["created_by"]["type"] == "SCHEDULE"

    # its MLflow parent run is on the server and names this flow run; every stage finished
    from mlflow.tracking import MlflowClient
    client = MlflowClient(ml_url)
    exp = client.get_experiment_by_name("tiny")
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parent = [r for r in runs if r.data.tags.get("forgeflow.prefect_flow_run_id") == done["id"]]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    kids = {r.data.tags["forgeflow.node"]: r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert {"ingest.docs", "filter", "dedup", "tokenizer", "tokenize", "pretrain", "evaluate"} <= set(kids)
    assert all(r.info.status == "FINISHED" for r in kids.values())
    assert json.loads(parent[0].data.params["train.steps"]) == 3
    assert kids["pretrain"].data.metrics["steps"] == 3

    # the plots are in the server's artifact store, fetched back over HTTP; none on the client
    pre = kids["pretrain"].info.run_id
    plots = [a.path for a in client.list_artifacts(pre, "plots")]
    assert "plots/loss.png" in plots, plots
    for path in plots:
        r = httpx.get(f"{ml_url}/get-artifact", params={"path": path, "run_uuid": pre}, timeout=60)
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", (path, r.status_code)
        on_server = server_artifacts / exp.experiment_id / pre / "artifacts" / path
        assert on_server.read_bytes() == r.content
    assert not (workdir / "mlartifacts").exists()
    # the Prefect markdown artifact links the stage's MLflow run
    arts = httpx.post(f"{prefect_api}/artifacts/filter",
                      json={"artifacts": {"flow_run_id": {"any_": [done["id"]]}}}, timeout=30).json()
    assert any(pre in (a.get("data") or "") for a in arts)


def _dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_killed_runs_are_marked_killed_on_next_start(mlflow_api, tmp_path):
    """A run killed with SIGKILL never ends its MLflow runs. The next start in the same
    workdir marks them KILLED (the pid on this host is gone); a live run, a run of another
    workdir and a run of another host are left alone."""
    import socket

    from pipeline.tracking import Tracker, process_tags
    ml_url, _, _ = mlflow_api
    tracker = Tracker(ml_url, "orphans")
    wd, other = tmp_path / "wd", tmp_path / "other"
    here = socket.gethostname()
    dead = {"forgeflow.host": here, "forgeflow.pid": str(_dead_pid()), "forgeflow.pid_started": "1"}

    def pipeline(workdir, tags):
        pid = tracker.start_parent("p", {}, {"forgeflow.workdir": str(workdir.resolve()), **tags})
        kid = tracker.start_stage(pid, "ingest.docs", "ingest", "abc").run_id
        return pid, kid

    killed = pipeline(wd, dead)
    alive = pipeline(wd, process_tags())
    elsewhere = pipeline(other, dead)
    remote = pipeline(wd, {**dead, "forgeflow.host": "another-host"})
    finished = pipeline(wd, dead)
    for run_id in finished:
        tracker.end(run_id)

    closed = tracker.close_orphans(wd)
    status = lambda rid: tracker.client.get_run(rid).info.status  # noqa: E731
    assert sorted(closed) == sorted(killed)
    assert [status(r) for r in killed] == ["KILLED", "KILLED"]
    assert "ended without finishing" in tracker.client.get_run(killed[0]).data.tags["forgeflow.killed_reason"]
    for pair in (alive, elsewhere, remote):
        assert [status(r) for r in pair] == ["RUNNING", "RUNNING"]
    assert [status(r) for r in finished] == ["FINISHED", "FINISHED"]
    assert tracker.close_orphans(wd) == []          # idempotent
