"""`forgeflow ui` starts the Prefect and MLflow UIs on loopback over the workdir's stores."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e_util import REPO, cli_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_both_stores(tmp_path):
    pp, mp = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--workdir", str(tmp_path),
                             "--prefect-port", str(pp), "--mlflow-port", str(mp)],
                            cwd=REPO, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        ok = {"prefect": False, "mlflow": False}
        deadline = time.time() + 120
        while time.time() < deadline and not all(ok.values()):
            for name, url in (("prefect", f"http://127.0.0.1:{pp}/api/health"),
                              ("mlflow", f"http://127.0.0.1:{mp}/health")):
                try:
                    ok[name] = ok[name] or httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        assert ok == {"prefect": True, "mlflow": True}, ok
        # the MLflow UI reads the workdir's SQLite store
        assert (tmp_path / "mlflow.db").exists()
        assert (tmp_path / "prefect").is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert f"http://127.0.0.1:{pp}" in out and f"http://127.0.0.1:{mp}" in out
