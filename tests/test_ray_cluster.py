"""A real two-node Ray cluster: a head and a second node as separate `ray start` processes on
127.0.0.1 (1 CPU each). `forgeflow run` connects through `run.ray_address`; the data stages
run on the cluster (Ray Data) and a 2-worker training (Ray Train, DDP over Gloo) needs both
nodes' CPUs, so its two ranks run on different nodes, which the training summary records."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e_util import REPO, forgeflow
from tests.servers import BIN, Proc, free_port, tiny_spec

pytestmark = pytest.mark.slow


def _ray_node(tmp: Path, name: str, head_port: int, head: bool, env: dict) -> tuple[Proc, Path]:
    """One ``ray start --block`` node on 127.0.0.1 with 1 CPU, its own temp dir (short: Ray's
    socket paths have a length limit) and its own ports (two nodes share this host)."""
    import tempfile
    temp = Path(tempfile.mkdtemp(prefix=f"ffray-{name}-", dir="/tmp"))
    cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
           "--num-gpus", "0", "--temp-dir", str(temp), "--disable-usage-stats",
           "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port()),
           "--dashboard-agent-grpc-port", str(free_port()),
           "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
           "--object-store-memory", str(200 * 2**20)]
    if head:
        cmd += ["--head", "--port", str(head_port), "--include-dashboard", "false"]
    else:
        cmd += ["--address", f"127.0.0.1:{head_port}"]
    return Proc(cmd, tmp / f"ray-{name}.log", env), temp


def _ray_nodes_alive(address: str, env: dict) -> int:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
             "print('NODES', sum(n['Alive'] for n in ray.nodes()))" % address)
    try:
        r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                           timeout=120)
    except subprocess.TimeoutExpired:
        return 0
    for line in r.stdout.splitlines():
        if line.startswith("NODES "):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def ray_cluster(tmp: Path, attempts: int = 2):
    """A two-node Ray cluster as separate processes on 127.0.0.1: a head (``ray start --head``)
    and a second node (``ray start --address``), 1 CPU each; yields the GCS address. A start
    that misses Ray's fixed 30 s raylet-registration deadline (a loaded machine) is retried;
    after ``attempts`` the test is skipped, saying so. Also yields the node temp dirs and the
    token-authentication environment a driver needs (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``). Stopped by process group (never
    ``ray stop``: it stops every Ray on the machine)."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "PREFECT_"))}
    env["PYTHONPATH"] = str(REPO)           # the cluster's workers import this checkout
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # token authentication, as a production cluster runs (Ray's default for `ray start`):
    # every node and the driver get the token from the environment, no ~/.ray/auth_token
    import secrets
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    procs: list[Proc] = []
    temps: list[Path] = []
    try:
        for attempt in range(1, attempts + 1):
            port = free_port()
            head, t0 = _ray_node(tmp, f"head{attempt}", port, True, env)
            procs.append(head)
            temps.append(t0)
            address = f"127.0.0.1:{port}"
            deadline = time.time() + 180
            while time.time() < deadline and head.alive() and "Ray runtime started" not in head.tail(20000):
                time.sleep(1)
            if head.alive() and "Ray runtime started" in head.tail(20000):
                worker, t1 = _ray_node(tmp, f"node{attempt}", port, False, env)
                procs.append(worker)
                temps.append(t1)
                deadline = time.time() + 240
                while time.time() < deadline and worker.alive():
                    if _ray_nodes_alive(address, env) >= 2:
                        print(f"[servers] Ray cluster on {address}: 2 nodes (attempt {attempt})")
                        yield address, temps[-2:], {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
                        return
                    time.sleep(3)
            logs = head.tail(3000) + ("" if procs[-1] is head else "\n" + procs[-1].tail(3000))
            if "timed out during startup" not in logs and "deadline" not in logs.lower():
                raise AssertionError(f"the Ray cluster did not start (attempt {attempt}):\n{logs}")
            print(f"[servers] Ray cluster start attempt {attempt} timed out:\n{logs[-1500:]}")
            for p in reversed(procs):
                p.stop(signal.SIGTERM)
        pytest.skip(f"a two-node Ray cluster did not start on this machine in {attempts} attempts "
                    f"(each missed Ray's fixed 30 s raylet registration deadline: a loaded machine; logs in {tmp})")
    finally:
        for p in reversed(procs):
            p.stop(signal.SIGTERM, timeout=60)
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)



def test_pipeline_runs_on_a_two_node_cluster(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path, "cluster")
    workdir = tmp_path / "work"
    with ray_cluster(tmp_path / "ray") as (address, node_dirs, auth):
        for k, v in auth.items():          # the driver authenticates with the cluster's token
            monkeypatch.setenv(k, v)
        # run.in_process_max_docs=0: the document stages go through Ray Data on the cluster
        # too, not through the driver as a small input otherwise would
        proc = forgeflow("run", str(spec), f"run.ray_address={address}", "run.in_process_max_docs=0",
                         "train.num_workers=2", "train.cpus_per_worker=1", "train.steps=3",
                         "--workdir", str(workdir), workdir=workdir, timeout=1200)
        # which session each node wrote: both nodes started workers for the run's job
        worker_logs = [sorted(d.glob("session_*/logs/worker-*.out")) for d in node_dirs]
    assert "stages (" in proc.stdout, proc.stdout[-3000:]
    (train_dir,) = workdir.glob("train/pretrain-*")
    metrics = json.loads((train_dir / "manifest.json").read_text())["metrics"]
    assert metrics["world_size"] == 2
    assert metrics["nodes"] == 2, metrics              # one rank per node
    assert all(worker_logs), f"a node ran no worker: {[len(w) for w in worker_logs]}"
    # the run used the cluster, not a local Ray of its own: its log names the address
    log = "\n".join(p.read_text(errors="replace") for p in (workdir / "logs").glob("run-*.log"))
    assert address in log, log[-3000:]
