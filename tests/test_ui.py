"""`forgeflow ui` starts the Prefect and MLflow UIs on loopback over the workdir's stores,
and a person who opens them in a browser sees the run: the Prefect flow-run page with the
stage graph and its task runs, and the MLflow compare view of the stage runs (headless
Chromium from Debian's ``chromium`` package, driven by Playwright; screenshots saved)."""

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

CHROMIUM = Path(os.environ.get("FORGEFLOW_CHROMIUM", "/usr/bin/chromium"))
SHOTS = REPO / "screenshots"           # git-ignored; the README's copies live in docs/img/
# what a root process with no network needs: no sandbox, no background connections
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


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


def _browser():
    """Playwright's sync API, or None with the reason (the test then checks the servers
    through their APIs only and says why it took no screenshots)."""
    if not CHROMIUM.exists():
        return None, (f"{CHROMIUM} not found: install Debian's chromium package "
                      "(apt-get install chromium; .ci/run does) for the UI screenshots")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "the playwright package is not installed (it is in the dev extra)"
    return sync_playwright, ""


@pytest.mark.slow
def test_ui_shows_the_run(tmp_path):
    """A finished run, `forgeflow ui` over its workdir, and what each UI shows of it."""
    workdir = tmp_path / "work"
    spec = tiny_spec(tmp_path)
    cli("run", str(spec), "--workdir", str(workdir), env=cli_env(workdir), timeout=1500)
    client, parents, children = mlflow_runs(workdir, "tiny")
    parent = parents[-1]
    kids = {r.data.tags["forgeflow.node"]: r for r in children[parent.info.run_id]}
    sync_playwright, why_not = _browser()
    with ui_servers(workdir) as (prefect_url, mlflow_url, out):
        # the servers serve this workdir's stores: the flow run and its task runs are there
        flow_run = flow_runs(f"{prefect_url}/api")[-1]
        tasks = httpx.post(f"{prefect_url}/api/task_runs/filter", timeout=60,
                           json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}}).json()
        stages = sorted(t["name"] for t in tasks)
        assert flow_run["state_type"] == "COMPLETED" and flow_run["name"] == parent.info.run_name
        assert set(stages) == set(kids), (stages, sorted(kids))
        r = httpx.get(f"{mlflow_url}/ajax-api/2.0/mlflow/runs/get", timeout=60,
                      params={"run_id": parent.info.run_id})
        assert r.status_code == 200 and r.json()["run"]["info"]["status"] == "FINISHED"
        if sync_playwright is None:
            print(f"[ui] no screenshots: {why_not}")
        else:
            shots = _screenshots(sync_playwright, tmp_path, prefect_url, mlflow_url, flow_run,
                                 stages, [kids[s].info.run_id for s in stages],
                                 parent.info.experiment_id)
    assert prefect_url in out[0] and mlflow_url in out[0]
    if sync_playwright is not None:
        for png in shots:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        print(f"[ui] screenshots: {' '.join(map(str, shots))}")


def _missing(page, names: list[str], timeout_s: float = 120) -> list[str]:
    """The names the page's text still lacks after up to ``timeout_s`` (polled)."""
    deadline = time.time() + timeout_s
    while True:
        text = page.inner_text("body")
        missing = [n for n in names if n not in text]
        if not missing or time.time() > deadline:
            return missing
        page.wait_for_timeout(1000)


def _screenshots(sync_playwright, tmp_path, prefect_url, mlflow_url, flow_run, stages, run_ids,
                 experiment_id) -> list[Path]:
    """Open the Prefect flow-run page and the MLflow compare view of the stage runs, assert
    each shows every stage, and save a screenshot of each under ``screenshots/``."""
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1600, "height": 1000})
        try:
            page = ctx.new_page()
            # (both UIs keep polling their APIs, so a page never goes network-idle: load it,
            # then wait for what it must show)
            # Prefect: the flow-run page; its graph is drawn on a canvas, so the stage names
            # are read from the task-runs tab of the same page
            page.goto(f"{prefect_url}/runs/flow-run/{flow_run['id']}", wait_until="load",
                      timeout=180_000)
            page.wait_for_selector("canvas", timeout=120_000)
            assert not _missing(page, [flow_run["name"]]), "the flow-run page lacks the run's name"
            page.wait_for_timeout(4000)                   # the graph lays out and animates in
            prefect_png = SHOTS / "prefect-flow-run.png"
            page.screenshot(path=str(prefect_png))
            page.goto(f"{prefect_url}/runs/flow-run/{flow_run['id']}?tab=Task+Runs",
                      wait_until="load", timeout=180_000)
            missing = _missing(page, stages)
            assert not missing, f"the Prefect flow-run page lacks the task runs {missing}"
            # MLflow: the compare view of the stage runs
            page.goto(f"{mlflow_url}/#/compare-runs?runs={quote(json.dumps(run_ids))}"
                      f"&experiments={quote(json.dumps([experiment_id]))}",
                      wait_until="load", timeout=180_000)
            missing = _missing(page, stages)
            assert not missing, f"the MLflow compare view lacks the stage runs {missing}"
            page.wait_for_timeout(2000)
            mlflow_png = SHOTS / "mlflow-compare.png"
            page.screenshot(path=str(mlflow_png))
        finally:
            ctx.close()
    return [prefect_png, mlflow_png]
