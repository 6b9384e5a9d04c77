"""`forgeflow ui` starts the Prefect and MLflow UIs on loopback over the workdir's stores."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e_util import REPO, cli_env
from tests.servers import free_port


@contextlib.contextmanager
def ui_servers(workdir: Path):
    """`forgeflow ui --workdir` on two free ports; yields (prefect_url, mlflow_url, proc)
    once both answer their health checks, and stops its process group afterwards."""
    pp, mp = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--workdir", str(workdir),
                             "--prefect-port", str(pp), "--mlflow-port", str(mp)],
                            cwd=REPO, env=cli_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = []
    try:
        ok = {"prefect": False, "mlflow": False}
        deadline = time.time() + 420
        while time.time() < deadline and not all(ok.values()):
            for name, url in (("prefect", f"http://127.0.0.1:{pp}/api/health"),
                              ("mlflow", f"http://127.0.0.1:{mp}/health")):
                try:
                    ok[name] = ok[name] or httpx.get(url, timeout=10).status_code == 200
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        assert ok == {"prefect": True, "mlflow": True}, ok
        yield f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{mp}", out
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            text, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
        out.append(text)


@pytest.mark.slow
def test_ui_serves_both_stores(tmp_path):
    with ui_servers(tmp_path) as (prefect_url, mlflow_url, out):
        # the MLflow UI reads the workdir's SQLite store
        assert (tmp_path / "mlflow.db").exists()
        assert (tmp_path / "prefect").is_dir()
    assert prefect_url in out[0] and mlflow_url in out[0]
