"""MLflow tracking with explicit run ids (the fluent active run is thread-local, and
stages log from Prefect worker threads and Ray workers).

One parent run per pipeline run; one nested child run per stage, cached stages
included (tagged ``forgeflow.cached=true`` with the id of the run that produced the
artifact). Params are the flattened spec; corpora are logged as dataset inputs whose
digest is the artifact identity.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

log = logging.getLogger("forgeflow")

MAX_PARAM_LEN = 6000
BATCH = 100
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def clean_key(key: str) -> str:
    """MLflow keys allow alphanumerics, _ - . space : / only."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:250]


def redact(uri: str) -> str:
    """Hide credentials in a URI before it is printed or logged."""
    return re.sub(r"//([^/@:]+):([^/@]+)@", r"//\1:***@", uri or "")


def resolve_tracking_uri(spec_uri: str | None, workdir: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or spec_uri
    if not uri:
        uri = f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"
    return uri


def is_server(uri: str) -> bool:
    """A tracking server (http/https/databricks) owns its artifact store; a local SQLite or
    file store keeps artifacts beside the workdir."""
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), "" elsewhere:
    with the pid, it tells a live process from a later one that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    """Who runs this pipeline: with the workdir tag, enough to tell on the next start
    whether a RUNNING run's process is gone (killed, crashed, machine rebooted)."""
    pid = os.getpid()
    return {"forgeflow.host": socket.gethostname(), "forgeflow.pid": str(pid),
            "forgeflow.pid_started": _started(pid)}


def _process_gone(tags: dict[str, str]) -> bool:
    try:
        pid = int(tags["forgeflow.pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (KeyError, ValueError):
        return True
    except PermissionError:          # alive, another user's
        pass
    return _started(pid) != tags.get("forgeflow.pid_started", "")   # "" == "" off Linux


class Tracker:
    """A thin layer over MlflowClient for one pipeline run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # against a server, artifacts go to the server's artifact store (--serve-artifacts
            # or its --default-artifact-root), never to a path on this client's disk
            location = (artifact_root.resolve().as_uri()
                        if artifact_root and not is_server(tracking_uri) else None)
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception as exc:
                exp = self.client.get_experiment_by_name(experiment)   # created concurrently?
                if exp is None:
                    raise RuntimeError(f"MLflow at {redact(tracking_uri)}: cannot create experiment "
                                       f"{experiment!r}: {type(exc).__name__}: {exc}") from exc
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id
            if is_server(tracking_uri) and exp.artifact_location.startswith(("file:", "/")):
                log.warning("MLflow experiment %r stores artifacts at %s, a path on the client's "
                            "disk, not in the server's artifact store; use a new experiment name "
                            "(run.experiment) to have them on the server", experiment,
                            exp.artifact_location)

    # ---- runs --------------------------------------------------------------------------
    def start_parent(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={MLFLOW_RUN_NAME: name, "forgeflow.kind": "pipeline", **tags})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_stage(self, parent_id: str, key: str, stage: str, identity: str,
                    tags: dict[str, str] | None = None) -> "StageRun":
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: key,
                    "forgeflow.kind": "stage", "forgeflow.stage": stage,
                    "forgeflow.node": key, "forgeflow.identity": identity, **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=key, tags=all_tags)
        return StageRun(self, run.info.run_id)

    def close_orphans(self, workdir: Path) -> list[str]:
        """Mark KILLED the RUNNING pipeline runs of ``workdir`` whose process on this host is
        gone (a killed or crashed run never ends its MLflow runs), with their stage runs.
        Runs started on other hosts are left alone: their process cannot be checked here."""
        wd = str(Path(workdir).resolve()).replace("'", "\\'")
        host = socket.gethostname()
        stale = [r for r in self.client.search_runs(
                     [self.experiment_id], max_results=1000,
                     filter_string=f"attributes.status = 'RUNNING' and tags.`forgeflow.kind` = "
                                   f"'pipeline' and tags.`forgeflow.workdir` = '{wd}'")
                 if r.data.tags.get("forgeflow.host") == host and _process_gone(r.data.tags)]
        closed = []
        for parent in stale:
            kids = self.client.search_runs(
                [self.experiment_id], max_results=1000,
                filter_string=f"attributes.status = 'RUNNING' and "
                              f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            for run in [*kids, parent]:
                self.client.set_tag(run.info.run_id, "forgeflow.killed_reason",
                                    f"process {parent.data.tags.get('forgeflow.pid')} on {host} "
                                    "ended without finishing this run")
                self.client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(run.info.run_id)
            log.warning("MLflow run %s of an earlier run in %s (pid %s) was left RUNNING: marked "
                        "KILLED with %d stage run(s)", parent.info.run_id, wd,
                        parent.data.tags.get("forgeflow.pid"), len(kids))
        return closed

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = []
        for k, v in params.items():
            value = v if isinstance(v, str) else json.dumps(v, default=str)
            items.append(Param(clean_key(k), value[:MAX_PARAM_LEN]))
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i:i + BATCH], synchronous=True)

    def run_url(self, ui_url: str, run_id: str) -> str:
        return f"{ui_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"


class StageRun:
    """The MLflow child run of one stage; safe to use from any thread."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id

    @property
    def tracking_uri(self) -> str:
        return self.tracker.tracking_uri

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.client.log_metric(self.run_id, clean_key(key), value, step=step or 0)

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(clean_key(k), float(v), now, step or 0) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH], synchronous=True)

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker.log_params(self.run_id, params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()],
                              synchronous=True)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), subdir)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), subdir)

    def log_dataset(self, name: str, digest: str, path: Path, context: str,
                    schema: dict | None = None, profile: dict | None = None) -> None:
        ds = Dataset(name=name, digest=digest[:36], source_type="local",
                     source=json.dumps({"uri": Path(path).resolve().as_uri()}),
                     schema=json.dumps(schema) if schema else None,
                     profile=json.dumps(profile) if profile else None)
        self.client.log_inputs(self.run_id, [DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
