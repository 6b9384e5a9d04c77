"""Helpers for the end-to-end tests: run the real CLI in a subprocess, read MLflow and
Prefect back through their clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_env(workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_ADDRESS"))}
    env["PREFECT_HOME"] = str(workdir / "prefect")
    env["PYTHONPATH"] = str(REPO)
    env["TOKENIZERS_PARALLELISM"] = "false"
    # Prefect's default (20 s) for its ephemeral API server is too short on a loaded 2-core machine
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = os.environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    return env


def forgeflow(*args: str, workdir: Path, timeout: int = 900, check: bool = True,
              popen: bool = False):
    cmd = [sys.executable, "-m", "flows.cli", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=cli_env(workdir), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc = run_cli(cmd, cli_env(workdir), timeout, logs=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"forgeflow {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}\n{log_tail(workdir, 3000)}")
    return proc


def run_cli(cmd: list[str], env: dict, timeout: float, logs: Path | None = None) -> subprocess.CompletedProcess:
    """``cmd`` in its own session with captured output. A run that overstays ``timeout`` is
    killed with everything it started (Ray, the embedded Prefect API) and fails with its
    output and, from ``logs``, the end of its log file, not just a timeout."""
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:     # a grandchild in another session holds the pipe
            out, err = "", ""
        raise AssertionError(f"{' '.join(cmd)} ran past {timeout}s and was killed:\n"
                             f"{(out or '')[-4000:]}\n{(err or '')[-4000:]}"
                             + (f"\n{log_tail(logs)}" if logs else "")) from None
    return subprocess.CompletedProcess(cmd, child.returncode, out, err)


def log_tail(workdir: Path, n: int = 6000) -> str:
    """The end of the newest CLI log file under ``workdir/logs`` (what a hung run was doing)."""
    logs = sorted((Path(workdir) / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return f"(no log file under {workdir}/logs)"
    return f"--- {logs[-1]} (end) ---\n" + logs[-1].read_text(errors="replace")[-n:]


def plan(config: str, *overrides: str, workdir: Path) -> dict[str, str]:
    """node key -> identity, computed statically by `forgeflow validate --json`."""
    out = forgeflow("validate", config, *overrides, "--json", workdir=workdir).stdout
    return {s["key"]: s["identity"] for s in json.loads(out)["stages"]}


def mlflow_runs(workdir: Path, experiment: str):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = sorted((r for r in runs if r.data.tags.get("forgeflow.kind") == "pipeline"),
                     key=lambda r: r.info.start_time)
    children = {}
    for r in runs:
        pid = r.data.tags.get("mlflow.parentRunId")
        if pid:
            children.setdefault(pid, []).append(r)
    return client, parents, children


PREFECT_QUERY = r"""
import asyncio, json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort
async def main():
    async with get_client() as c:
        flows = await c.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
        out = []
        for fr in flows:
            trs = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
            arts = await c.read_artifacts()
            out.append({"id": str(fr.id), "name": fr.name, "state": fr.state.name,
                        "tasks": {t.name: t.state.name for t in trs},
                        "task_inputs": {t.name: sorted(t.task_inputs.keys()) for t in trs},
                        "upstream": {t.name: sorted(str(i.id) for v in t.task_inputs.values() for i in v
                                                    if getattr(i, "input_type", "") == "task_run")
                                     for t in trs},
                        "task_ids": {str(t.id): t.name for t in trs},
                        "artifacts": sorted({a.key for a in arts if a.key and a.flow_run_id == fr.id})})
        print(json.dumps(out))
asyncio.run(main())
"""


def prefect_runs(workdir: Path) -> list[dict]:
    """Flow runs (newest first) with their task runs' names and states, via the Prefect client."""
    proc = subprocess.run([sys.executable, "-c", PREFECT_QUERY], cwd=REPO, env=cli_env(workdir),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
