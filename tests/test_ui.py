"""`forgeflow ui` starts the Prefect and MLflow UIs on loopback over the workdir's stores,
and a person opening them in a browser sees the run: the Prefect flow-run page with the
stage graph, and the MLflow compare view of the stage runs (headless Chromium, screenshots)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.e2e_util import REPO, cli_env, mlflow_runs
from tests.servers import cli, flow_runs, free_port, tiny_spec

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "screenshots"           # git-ignored; the README's copies live in docs/img/
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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


def _browser(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium; "
                    ".ci/run does) to take the UI screenshots")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (the python package) is not installed: pip install -c constraints.txt -e '.[dev]'")
    return sync_playwright, dict(user_data_dir=str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM),
                                 headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1600, "height": 1000})


@pytest.mark.slow
def test_ui_pages_show_the_run_in_a_browser(tmp_path):
    sync_playwright, launch = _browser(tmp_path)
    workdir = tmp_path / "work"
    spec = tiny_spec(tmp_path)
    env = cli_env(workdir)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "600"   # a loaded CI machine
    cli("run", str(spec), "--workdir", str(workdir), env=env, timeout=1500)
    client, parents, children = mlflow_runs(workdir, "tiny")
    parent = parents[-1]
    kids = {r.data.tags["forgeflow.node"]: r for r in children[parent.info.run_id]}
    SHOTS.mkdir(exist_ok=True)
    with ui_servers(workdir) as (prefect_url, mlflow_url, _), sync_playwright() as pw:
        flow_run = flow_runs(f"{prefect_url}/api")[-1]
        tasks = httpx.post(f"{prefect_url}/api/task_runs/filter", timeout=60,
                           json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}}).json()
        stages = sorted(t["name"] for t in tasks)
        assert set(kids) == set(stages) and flow_run["state_type"] == "COMPLETED"
        ctx = pw.chromium.launch_persistent_context(**launch)
        page = ctx.new_page()
        # Prefect: the flow-run page; its graph is drawn on a canvas, the task runs are listed too
        page.goto(f"{prefect_url}/runs/flow-run/{flow_run['id']}", wait_until="networkidle", timeout=180_000)
        page.wait_for_selector("canvas", timeout=120_000)
        page.wait_for_timeout(4000)                        # the graph lays out and animates in
        prefect_png = SHOTS / "prefect-flow-run.png"
        page.screenshot(path=str(prefect_png))
        graph_text = page.inner_text("body")
        assert flow_run["name"] in graph_text
        page.goto(f"{prefect_url}/runs/flow-run/{flow_run['id']}?tab=Task+Runs", wait_until="networkidle",
                  timeout=180_000)
        page.wait_for_timeout(3000)
        listed = page.inner_text("body")
        missing = [s for s in stages if s not in listed]
        assert not missing, f"Prefect flow-run page lacks task runs {missing}"
        # MLflow: the compare view of the stage runs
        ids = [kids[s].info.run_id for s in stages]
        url = (f"{mlflow_url}/#/compare-runs?runs={quote(json.dumps(ids))}"
               f"&experiments={quote(json.dumps([parent.info.experiment_id]))}")
        page.goto(url, wait_until="networkidle", timeout=180_000)
        page.wait_for_timeout(4000)
        mlflow_png = SHOTS / "mlflow-compare.png"
        page.screenshot(path=str(mlflow_png), full_page=True)
        shown = page.inner_text("body")
        missing = [s for s in stages if s not in shown]
        assert not missing, f"MLflow compare view lacks stage runs {missing}"
        ctx.close()
    for png in (prefect_png, mlflow_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    print(f"[ui] screenshots: {prefect_png} {mlflow_png}")
