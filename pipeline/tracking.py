"""MLflow tracking with explicit run ids (the fluent active run is thread-local, and
stages log from Prefect worker threads and Ray workers).

One parent run per pipeline run; one nested child run per stage, cached stages
included (tagged ``forgeflow.cached=true`` with the id of the run that produced the
artifact). Params are the flattened spec; corpora are logged as dataset inputs whose
digest is the artifact identity.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

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


@contextmanager
def _sqlite_init_lock(uri: str):
    """Runs that start together on a fresh SQLite store (two runs or sweep trials sharing
    a workdir) would race in MLflow's table migrations: the first use of the store is
    serialised by a lock file beside the database."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init-lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Tracker:
    """A thin layer over MlflowClient for one pipeline run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        with _sqlite_init_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)   # creates the tables
            exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception:      # created concurrently
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id

    # ---- runs --------------------------------------------------------------------------
    def start_parent(self, name: str, params: dict[str, Any], tags: dict[str, str],
                     parent_id: str | None = None, kind: str = "pipeline") -> str:
        """A pipeline run (or a sweep run: ``kind="sweep"``), nested under ``parent_id``
        when given (a sweep's trials are pipeline runs nested under the sweep run)."""
        nested = {MLFLOW_PARENT_RUN_ID: parent_id} if parent_id else {}
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={MLFLOW_RUN_NAME: name, "forgeflow.kind": kind,
                                           **nested, **tags})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_stage(self, parent_id: str, key: str, stage: str, identity: str,
                    tags: dict[str, str] | None = None) -> "StageRun":
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: key,
                    "forgeflow.kind": "stage", "forgeflow.stage": stage,
                    "forgeflow.node": key, "forgeflow.identity": identity, **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=key, tags=all_tags)
        return StageRun(self, run.info.run_id)

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
        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])]
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, inputs)
                return
            except Exception as exc:
                # Two runs of one experiment logging the same dataset at once (sweep trials
                # sharing an artifact) race on MLflow's unique (name, digest) row: the loser's
                # retry finds the winner's row and links it.
                if ("UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc)) or attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
