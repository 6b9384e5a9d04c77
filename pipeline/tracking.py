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
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline.secrets import redact  # noqa: F401  (the one redactor; re-exported here)
log = logging.getLogger("forgeflow")

MAX_PARAM_LEN = 6000
BATCH = 100
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def clean_key(key: str) -> str:
    """MLflow keys allow alphanumerics, _ - . space : / only."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:250]


def run_name(name: str, trial: str | None = None, at: float | None = None) -> str:
    """The name of a pipeline run in MLflow and Prefect: spec name, local start time and
    the sweep trial when there is one (``quickstart-20261202-041502``,
    ``mix_sweep-20261202-041502-trial-3``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(at if at is not None else time.time()))
    return f"{name}-{stamp}" + (f"-{trial}" if trial else "")


# MLflow 3 opens an experiment on its GenAI overview (traces, judges, prompts) unless the
# experiment says it is for model training; this tag is what its UI reads.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# A saved view of the runs table (columns, sort) that the MLflow UI opens with
# ``#/experiments/<id>/runs?viewStateShareKey=<key>``: the UI reads it from this tag.
VIEW_KEY = "forgeflow"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
MAX_VIEW_COLUMNS = 40


def experiment_url(ui_url: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI, in its model-training mode (MLflow
    3.17's UI picks GenAI or model training from ``workflowType``, and remembers the last
    choice), opened on forgeflow's saved view. Checked in a real browser: the runs tab with
    both parameters shows the view's metric and param columns."""
    return (f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def resolve_tracking_uri(spec_uri: str | None, workdir: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or spec_uri
    if not uri:
        uri = f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"
    return uri


def open_store(uri: str) -> None:
    """Open the tracking store of ``uri`` now. MLflow keeps one store per URI for the
    process, and opening a SQLite store checks its schema with Alembic (about 2 s on an
    idle 2-core machine): the CLI does it in a thread while Prefect's API starts, so a run's
    first MLflow call finds it open."""
    from mlflow.tracking._tracking_service.utils import _get_store

    with _sqlite_init_lock(uri):
        _get_store(uri)


def _clean_tags(tags: dict) -> dict[str, str]:
    return {k: redact(str(v)) for k, v in tags.items()}


def credentials_to_env(uri: str) -> str:
    """``http(s)://user:password@host`` -> ``http(s)://host``, with the credentials moved to
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (which MLflow reads, and which win
    when already set). MLflow prints run links built from the URI it was given, and the
    URI travels to training workers: neither may carry a password."""
    from urllib.parse import unquote, urlsplit, urlunsplit
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if colon:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    else:                       # https://token@host
        os.environ.setdefault("MLFLOW_TRACKING_TOKEN", unquote(user))
    return urlunsplit(parts._replace(netloc=host))


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
        tracking_uri = credentials_to_env(tracking_uri)
        self.tracking_uri = tracking_uri
        with _sqlite_init_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)   # creates the tables
            exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # against a server, artifacts go to the server's artifact store (--serve-artifacts
            # or its --default-artifact-root), never to a path on this client's disk
            location = (artifact_root.resolve().as_uri()
                        if artifact_root and not is_server(tracking_uri) else None)
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
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
        if exp is not None and not exp.tags.get(EXPERIMENT_KIND_TAG):
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def set_default_view(self, metrics: list[str], params: list[str]) -> None:
        """Make the runs table open on the columns people compare: the given metrics and
        params (added to those of earlier runs in this experiment), newest runs first."""
        exp = self.client.get_experiment(self.experiment_id)
        try:
            old = json.loads(exp.tags.get(VIEW_TAG) or "{}").get("selectedColumns", [])
        except ValueError:
            old = []
        cols = list(dict.fromkeys(
            [c for c in old if isinstance(c, str)]
            + [f"metrics.`{clean_key(m)}`" for m in sorted(metrics)]
            + [f"params.`{clean_key(p)}`" for p in sorted(params)]))
        attrs = [c for c in cols if c.startswith("attributes.")] or ["attributes.`Dataset`"]
        rest = [c for c in cols if not c.startswith("attributes.")][:MAX_VIEW_COLUMNS]
        view = {"selectedColumns": attrs + rest, "orderByKey": "attributes.start_time",
                "orderByAsc": False, "searchFilter": ""}
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, json.dumps(view))

    def experiment_url(self, ui_url: str) -> str:
        """The experiment's runs table in the MLflow UI, opened on forgeflow's view."""
        return experiment_url(ui_url, self.experiment_id)

    # ---- runs --------------------------------------------------------------------------
    def start_parent(self, name: str, params: dict[str, Any], tags: dict[str, str],
                     parent_id: str | None = None, kind: str = "pipeline") -> str:
        """A pipeline run (or a sweep run: ``kind="sweep"``), nested under ``parent_id``
        when given (a sweep's trials are pipeline runs nested under the sweep run)."""
        nested = {MLFLOW_PARENT_RUN_ID: parent_id} if parent_id else {}
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags=_clean_tags({MLFLOW_RUN_NAME: name, "forgeflow.kind": kind,
                                                       **nested, **tags}))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_stage(self, parent_id: str, key: str, stage: str, identity: str,
                    tags: dict[str, str] | None = None) -> "StageRun":
        all_tags = {MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: key,
                    "forgeflow.kind": "stage", "forgeflow.stage": stage,
                    "forgeflow.node": key, "forgeflow.identity": identity, **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=key, tags=_clean_tags(all_tags))
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
            items.append(Param(clean_key(k), redact(value)[:MAX_PARAM_LEN]))
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
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in _clean_tags(tags).items()],
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
