"""Two runs of one spec started at the same moment in one workdir (real CLI processes,
Prefect, MLflow, Ray): both complete, and every artifact is computed exactly once: the
run that reaches a stage second waits for the other's lock and records a cache hit."""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e_util import forgeflow, mlflow_runs
from tests.sweep_util import small_spec

pytestmark = pytest.mark.slow


def test_two_runs_started_together_share_every_artifact(tmp_path):
    workdir = tmp_path / "work"
    spec = small_spec(tmp_path)
    procs = [forgeflow("run", str(spec), "--workdir", str(workdir), workdir=workdir, popen=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=1500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-5000:] for o in outs)

    manifests = [json.loads(m.read_text()) for m in workdir.glob("*/*/manifest.json")]
    keys = [m["key"] for m in manifests]
    assert len(keys) == len(set(keys)), f"a stage was committed twice: {sorted(keys)}"
    assert not list(workdir.glob("*/.partial-*")), "a partial directory was left behind"

    client, parents, children = mlflow_runs(workdir, "tiny")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    kids = [{r.data.tags["forgeflow.node"]: r for r in children[p.info.run_id]} for p in parents]
    assert set(kids[0]) == set(kids[1]) == set(keys)
    for key in keys:
        runs = [k[key] for k in kids]
        computed = [r for r in runs if r.data.tags["forgeflow.cached"] == "false"]
        assert len(computed) == 1, f"{key} computed {len(computed)} times"
        other = next(r for r in runs if r is not computed[0])
        assert other.data.tags["forgeflow.produced_by_run"] == computed[0].info.run_id
    # the runs' own summaries agree: between them every stage ran once
    ran = [int(m.group(1)) for o in outs for m in [re.search(r"forgeflow: \d+ stages \((\d+) ran", o)] if m]
    assert len(ran) == 2 and sum(ran) == len(keys), [o[-2000:] for o in outs]
