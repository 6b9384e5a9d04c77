"""deploy/docker-compose.yml holds what the server tests proved: pinned images, nothing
installed at start, a healthcheck on every service, secrets only from the git-ignored .env."""

import re
import subprocess

import yaml

from tests.e2e_util import REPO

DEPLOY = REPO / "deploy"


def test_compose_is_pinned_healthy_and_secret_free():
    text = (DEPLOY / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    for name, svc in compose["services"].items():
        image = svc["image"]
        assert re.search(r":v?\d+\.\d+", image) and not image.endswith(":latest"), (name, image)
        assert "healthcheck" in svc, name
        cmd = " ".join(svc.get("command") or []) if isinstance(svc.get("command"), list) else str(svc.get("command", ""))
        assert "pip install" not in cmd, name
    assert "pip install" in (DEPLOY / "mlflow.Dockerfile").read_text()     # at build time
    # passwords only by reference to .env; the URI form is URL-encoded
    assert "${POSTGRES_PASSWORD_URLENCODED" in compose["services"]["mlflow"]["command"][5]
    assert not re.search(r"forgeflow:[^$@]+@", text)
    env_example = (DEPLOY / "env.example").read_text()
    assert "POSTGRES_PASSWORD_URLENCODED=" in env_example
    # deploy/.env is never committed
    ignored = subprocess.run(["git", "check-ignore", "-q", str(DEPLOY / ".env")], cwd=REPO)
    assert ignored.returncode == 0


def test_kuberay_manifest_runs_the_pipeline_on_the_cluster():
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"RayCluster", "RayJob"} <= set(kinds)
    job = kinds["RayJob"]["spec"]
    assert "forgeflow run" in job["entrypoint"]
    assert job["clusterSelector"] or job.get("rayClusterSpec")
