"""The pipeline on a real two-node Ray cluster: a head and a second node started as separate
processes (`ray start --head`, `ray start --address`), reached through `run.ray_address`.
The data stages and a 2-worker training run there, and work lands on both nodes."""

from __future__ import annotations

import json

import pytest

from tests.e2e_util import cli_env
from tests.servers import cli, ray_cluster, ray_node_work, tiny_spec

pytestmark = pytest.mark.slow


def test_pipeline_runs_on_a_two_node_cluster(tmp_path):
    with ray_cluster(tmp_path) as (address, node_dirs):
        spec = tiny_spec(tmp_path)
        workdir = tmp_path / "work"
        env = cli_env(workdir)
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "600"   # a loaded CI machine
        proc = cli("run", str(spec), f"run.ray_address={address}", "train.num_workers=2",
                   "train.steps=4", "--workdir", str(workdir), env=env, timeout=1200)
        work = [ray_node_work(d) for d in node_dirs]
    assert "7 stages (7 ran, 0 cached)" in proc.stdout, proc.stdout[-3000:]
    # one 1-CPU training worker per node: the 2-worker run must use both
    for names in work:
        assert any("RayTrainWorker" in n for n in names), work
    # the document stages ran as Ray tasks on the cluster (not in a local Ray of the driver)
    assert any("MapBatches" in n or "ReadFiles" in n or "ReadParquet" in n for names in work for n in names), work
    summary = json.loads(next((workdir / "train").glob("pretrain-*/summary.json")).read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
