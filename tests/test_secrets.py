"""Secrets never leave the environment: redaction of every URI form, the spec refusing
credentials without echoing them, and a whole run grepped for a planted secret."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from pipeline.secrets import has_credentials, install_log_redaction, redact, secret_env_values
from pipeline.spec import SpecError, load_spec, validate_spec
from tests.e2e_util import REPO, cli_env, forgeflow, mlflow_runs
from tests.tiny_pipeline import write_tiny_spec


@pytest.mark.parametrize("uri, expected", [
    ("https://user:pw@host.example/api", "https://user:***@host.example/api"),
    ("postgresql://u:p@ss:w@rd@db.example:5432/mlflow", "postgresql://u:***@db.example:5432/mlflow"),
    ("https://user:p%40ss@host", "https://user:***@host"),
    ("https://ghp_token123@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
    ("https://:onlypassword@host/", "https://***@host/"),
    ("http://h/p?token=abc&x=1", "http://h/p?token=***&x=1"),
    ("http://h/p?x=1&access_token=abc", "http://h/p?x=1&access_token=***"),
    ("http://h/p?password=pw#frag", "http://h/p?password=***#frag"),
    ("http://h/p?API_KEY=k1&Signature=s1", "http://h/p?API_KEY=***&Signature=***"),
    ("s3://b/k?X-Amz-Credential=AKIA1/x&X-Amz-Signature=ff&X-Amz-Security-Token=tt",
     "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("tracking https://a:b@h1 and http://c@h2/x done", "tracking https://a:***@h1 and http://***@h2/x done"),
    # nothing to hide: unchanged
    ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ("https://host/path@v2?page=3", "https://host/path@v2?page=3"),
    ("", ""),
])
def test_redact_every_uri_form(uri, expected):
    assert redact(uri, environ={}) == expected
    assert has_credentials(uri) == (uri != expected)


def test_redact_environment_values_anywhere():
    env = {"MLFLOW_TRACKING_PASSWORD": "hunter2-pw", "MLFLOW_TRACKING_TOKEN": "tok-abcdef",
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7",
           "HOME": "/root", "MLFLOW_TRACKING_USERNAME": "alice", "SOME_FLAG_TOKEN": "1"}
    text = "login hunter2-pw with tok-abcdef, aws wJalrXUtnFEMI/K7MDENG AKIAIOSFODNN7 home /root alice"
    out = redact(text, environ=env)
    assert out == "login *** with ***, aws *** *** home /root alice"
    assert "1" not in secret_env_values(env)          # too short to mask safely


class _VanishingEnv(Mapping):
    """An environment one of whose variables is deleted (by another thread) between the
    moment its keys are listed and the moment its value is read, as ``os.environ`` is."""

    def __init__(self):
        self.data = {"FF_TEST_TOKEN": "tok-1234567", "_MLFLOW_TELEMETRY_SESSION_ID": "x" * 8}

    def __iter__(self):
        keys = list(self.data)
        self.data.pop("_MLFLOW_TELEMETRY_SESSION_ID", None)
        return iter(keys)

    def __getitem__(self, key):
        return self.data[key]

    def __len__(self):
        return len(self.data)


def test_secret_env_values_survive_a_variable_deleted_meanwhile():
    # a cached run died here with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'
    assert secret_env_values(_VanishingEnv()) == ["tok-1234567"]


def test_log_records_are_redacted_for_every_handler(caplog):
    previous = logging.getLogRecordFactory()
    try:
        install_log_redaction()
        install_log_redaction()                       # idempotent
        with caplog.at_level(logging.INFO):
            logging.getLogger("prefect.flow_runs").info("uri %s", "https://u:s3cr3t@h")
            logging.getLogger("forgeflow").warning("token https://h/?token=s3cr3t")
        assert "s3cr3t" not in caplog.text
        assert "uri https://u:***@h" in caplog.text and "token=***" in caplog.text
    finally:
        logging.setLogRecordFactory(previous)


@pytest.mark.parametrize("uri", ["https://bob:Sup3r@Secret@mlflow.example", "https://Sup3rSecret@mlflow.example",
                                 "https://mlflow.example/?token=Sup3rSecret"])
def test_spec_refuses_credentials_without_echoing_them(tmp_path, uri):
    with pytest.raises(SpecError) as err:
        validate_spec({"run": {"tracking_uri": uri}, "sources": [{"name": "a", "type": "jsonl", "paths": ["x"]}]})
    msg = str(err.value)
    assert "run.tracking_uri" in msg and "credentials" in msg and "MLFLOW_TRACKING_PASSWORD" in msg
    assert "Sup3r" not in msg and "mlflow.example" not in msg
    # the same through a dotted override on the command line
    spec = tmp_path / "s.yaml"
    spec.write_text("sources: [{name: a, type: jsonl, paths: [x]}]\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec, [f"run.tracking_uri={uri}"])
    assert "Sup3r" not in str(err.value)
    with pytest.raises(SpecError) as err:
        load_spec(spec, [f"run.tracking_uri.x={uri}"])          # a malformed override echoes redacted
    assert "Sup3r" not in str(err.value)


def test_tracker_redacts_params_and_tags(tmp_path):
    from pipeline.tracking import Tracker
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "secrets")
    run_id = tracker.start_parent("p", {"sources.0.crawl.seeds": ["https://k3yTok@site.example/?token=k3yTok"]},
                                  {"note": "https://u:k3yTok@h"})
    run = tracker.client.get_run(run_id)
    assert "k3yTok" not in str(run.data.params) and "k3yTok" not in str(run.data.tags)
    assert "site.example" in run.data.params["sources.0.crawl.seeds"]


# ---- a whole run, grepped ------------------------------------------------------------------

SECRET = "S3CR3T-zq81x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on loopback (it ignores the credentials we send)."""
    port = _free_port()
    db = tmp_path / "server-mlflow.db"
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=cli_env(tmp_path), start_new_session=True)
    try:
        import httpx
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not start")
        yield port, db
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def _grep(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                hits.append(str(p))
        except OSError:
            pass
    return hits


@pytest.mark.slow
def test_a_run_never_records_a_planted_secret(tmp_path, mlflow_server):
    port, server_db = mlflow_server
    spec = write_tiny_spec(tmp_path / "spec", name="secrets")
    workdir = tmp_path / "work"
    t_start = time.time()
    env = cli_env(workdir)
    env.update({
        "MLFLOW_TRACKING_URI": f"http://forgeflow:{SECRET}-uri@127.0.0.1:{port}",
        "MLFLOW_TRACKING_PASSWORD": f"{SECRET}-pw", "MLFLOW_TRACKING_USERNAME": "forgeflow",
        "AWS_SECRET_ACCESS_KEY": f"{SECRET}-aws", "AWS_SESSION_TOKEN": f"{SECRET}-sts",
        "HF_TOKEN": f"{SECRET}-hf",
    })
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec),
                           "run.in_process_max_docs=0",      # every document stage on Ray
                           "--workdir", str(workdir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # the run really went to the server (through the credentialed URI)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    exp = client.get_experiment_by_name("secrets")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 10                       # the parent and 9 stages
    leaks = [w for w, text in (("stdout", proc.stdout), ("stderr", proc.stderr)) if SECRET in text]
    assert "forgeflow:***@127.0.0.1" in proc.stdout + proc.stderr      # shown, redacted
    # every file the run wrote: artifacts, manifests, Prefect's SQLite (flow/task runs,
    # parameters, artifacts, logs), MLflow's server store and artifacts, and the logs of
    # the Ray sessions started during the run (under Ray's temp dir)
    ray_root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    sessions = [d for d in ray_root.glob("session_2*") if d.stat().st_mtime >= t_start - 1]
    assert sessions, f"no Ray session under {ray_root}"
    for root in [workdir, server_db.parent, *sessions]:
        leaks += _grep(root, SECRET.encode())
    assert leaks == []


def test_credentials_move_from_the_tracking_uri_to_the_environment(monkeypatch):
    from pipeline.tracking import credentials_to_env
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    assert credentials_to_env("https://al%40ice:p@ss:w@mlflow.example:8443/base") == "https://mlflow.example:8443/base"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "al@ice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss:w"
    assert credentials_to_env("https://tok123@mlflow.example") == "https://mlflow.example"
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "tok123"
    assert credentials_to_env("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"
