"""Execute plan nodes against the artifact store with MLflow tracking.

Prefect-free: ``flows/`` calls :func:`execute` from its tasks. One call = one stage:
compute the identity, reuse a committed artifact (reported as cached, with a child run
pointing at the producer), or run the stage into a partial directory and commit it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine import configure_ray
from pipeline.plan import Node
from pipeline.spec import PipelineSpec, flatten
from pipeline.stage import StageContext, removal_report
from pipeline.store import Artifact, ArtifactStore, code_version, compute_identity
from pipeline.tracking import (StageRun, Tracker, process_tags, redact, resolve_tracking_uri,
                               run_name)

log = logging.getLogger("forgeflow")


@dataclass
class RunEnv:
    """Everything a pipeline run shares: spec, store, tracker and the parent MLflow run."""

    spec: PipelineSpec
    workdir: Path
    store: ArtifactStore
    tracker: Tracker
    parent_run_id: str
    ui_url: str
    outcomes: dict = field(default_factory=dict)
    run_guard: Any = None          # held while the run lives: gc never deletes what it uses

    @classmethod
    def start(cls, spec: PipelineSpec, workdir: Path | str | None = None,
              tags: dict[str, str] | None = None, name: str | None = None,
              parent_run_id: str | None = None) -> "RunEnv":
        """``name``: the parent run's name (default: spec name + start time, the name
        the Prefect flow run gets too). ``parent_run_id``: nest this run's MLflow parent
        under another run (a sweep's)."""
        workdir = Path(workdir or spec.run.workdir).resolve()
        store = ArtifactStore(workdir)
        uri = resolve_tracking_uri(spec.run.tracking_uri, workdir)
        tracker = Tracker(uri, spec.run.experiment or spec.run.name,
                          artifact_root=workdir / "mlartifacts")
        params = {k: v for k, v in flatten(spec.model_dump(mode="json")).items()
                  if not k.startswith("run.tracking_uri")}
        for source, weight in (spec.train.mixture if spec.train else {}).items():
            params[f"mix.{source}"] = weight
        tracker.close_orphans(workdir)
        parent = tracker.start_parent(name or run_name(spec.run.name), params,
                                      {"forgeflow.code_version": code_version(),
                                       "forgeflow.workdir": str(workdir), **process_tags(),
                                       **(tags or {})},
                                      parent_id=parent_run_id)
        configure_ray(spec.run.num_cpus, spec.run.ray_address, spec.run.in_process_max_docs)
        log.info("MLflow tracking %s, parent run %s", redact(uri), parent)
        return cls(spec, workdir, store, tracker, parent, spec.run.mlflow_ui_url)

    def finish(self, status: str = "FINISHED") -> None:
        self.tracker.end(self.parent_run_id, status)
        if self.run_guard is not None:
            self.run_guard.close()
            self.run_guard = None

    def record_plan(self, plan: list[Node]) -> None:
        """Log the identities this run uses (the runs log gc keeps artifacts by)."""
        ids = plan_identities(plan)
        self.run_guard = self.store.record_run(
            self.parent_run_id, self.spec.run.name,
            {n.key: (n.stage, n.name, ids[n.key]) for n in plan})

    @property
    def parent_run(self) -> StageRun:
        """The parent MLflow run, with the same logging interface as a stage's run."""
        return StageRun(self.tracker, self.parent_run_id)

    def run_url(self, run_id: str) -> str:
        return self.tracker.run_url(self.ui_url, run_id)


@dataclass
class Outcome:
    node: str
    artifact: Artifact
    cached: bool
    run_id: str
    seconds: float
    summary: list[str] = field(default_factory=list)
    tables: dict = field(default_factory=dict)


def node_identity(node: Node, inputs: dict[str, Artifact]) -> str:
    return compute_identity(node.stage, node.version, node.config,
                            {name: art.identity for name, art in inputs.items()})


def execute(node: Node, inputs: dict[str, Artifact], env: RunEnv) -> Outcome:
    identity = node_identity(node, inputs)
    existing = env.store.lookup(node.stage, node.name, identity)
    if existing is not None:
        return record_cached(node, existing, inputs, env)

    pending = env.store.begin(node.stage, node.name, identity, node.resumable,
                              holder=f"run {env.spec.run.name} (MLflow run {env.parent_run_id})",
                              timeout_s=env.spec.run.lock_timeout_s)
    if isinstance(pending, Artifact):   # another run committed it while we waited for its lock
        return record_cached(node, pending, inputs, env)
    child = env.tracker.start_stage(env.parent_run_id, node.key, node.stage, identity,
                                    {"forgeflow.cached": "false",
                                     "forgeflow.resumed": str(pending.resumed).lower()})
    _log_inputs(child, inputs)
    ctx = StageContext(name=node.key, out_dir=pending.partial, workdir=env.workdir,
                       seed=env.spec.run.seed, num_cpus=env.spec.run.num_cpus or 2,
                       tracker=child, show_progress=env.spec.run.show_progress)
    log.info("[%s] started%s", node.key, " (resuming a killed run)" if pending.resumed else "")
    log.debug("[%s] writing %s", node.key, pending.partial)
    t0 = time.time()
    try:
        metrics = node.run(ctx, inputs) or {}
        metrics = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        seconds = time.time() - t0
        artifact = pending.commit(
            config=node.config, inputs={k: a.identity for k, a in inputs.items()},
            metrics=metrics,
            extra={"key": node.key, "mlflow_run_id": child.run_id, "summary": ctx.summary,
                   "dataset": node.dataset, "removals": ctx.removed})
    except BaseException:
        pending.release()
        child.finish("FAILED")
        raise
    child.log_metrics({**metrics, "stage_seconds": seconds})
    child.log_params({f"config.{k}": v for k, v in list(flatten(node.config).items())[:200]})
    child.log_artifact(artifact.dir / "manifest.json")
    if node.dataset:
        _log_dataset(child, artifact, "output")
        _log_dataset(env.parent_run, artifact, node.dataset)
    _check(node, artifact, child)
    child.finish("FINISHED")
    log.info("[%s] ran in %.1fs%s", node.key, seconds, key_numbers(metrics))
    log.debug("[%s] artifact %s", node.key, artifact.dir)
    lines, warning = removal_report(node.key, ctx.removed)
    for line in lines:
        log.info("%s", line)
    if warning:
        log.warning("%s", warning)
        ctx.note(f"⚠ {warning}")
    return Outcome(node.key, artifact, False, child.run_id, seconds, ctx.summary, ctx.tables)


def record_cached(node: Node, artifact: Artifact, inputs: dict[str, Artifact], env: RunEnv) -> Outcome:
    """A child run for a stage whose artifact already exists, linking to its producer."""
    producer = artifact.manifest.get("mlflow_run_id", "")
    child = env.tracker.start_stage(env.parent_run_id, node.key, node.stage, artifact.identity,
                                    {"forgeflow.cached": "true",
                                     "forgeflow.produced_by_run": producer,
                                     "forgeflow.artifact": artifact.path})
    _log_inputs(child, inputs)
    child.log_metrics(artifact.metrics)
    if node.dataset:
        _log_dataset(env.parent_run, artifact, node.dataset)
    _check(node, artifact, child)
    child.finish("FINISHED")
    log.info("[%s] cached (%s)%s", node.key, artifact.short, key_numbers(artifact.metrics))
    summary = [f"**cached**: artifact `{artifact.path}` produced by MLflow run "
               f"[{producer[:8]}]({env.run_url(producer)})"] + artifact.manifest.get("summary", [])
    return Outcome(node.key, artifact, True, child.run_id, 0.0, summary, _tables_of(artifact))


# The few numbers a stage's finish line shows, in this order (the rest are in MLflow).
KEY_METRICS = ("pages_fetched", "pages_skipped", "docs_in", "docs_out", "rejected",
               "removal_rate", "duplicate_rate", "f1", "vocab_size", "tokens_total",
               "final_loss", "tokens_per_s")


def key_numbers(metrics: dict, limit: int = 4) -> str:
    """``": docs_in=550 docs_out=331 removal_rate=0.398"`` for a stage's finish line."""
    keys = [k for k in KEY_METRICS if k in metrics]
    keys += sorted(k for k in metrics if k.startswith("bpb."))
    shown = []
    for k in keys[:limit]:
        v = metrics[k]
        shown.append(f"{k}={v:,.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{k}={v:.4g}")
    return (": " + "  ".join(shown)) if shown else ""


def _check(node: Node, artifact: Artifact, child: StageRun) -> None:
    """The node's output check (e.g. zero documents left): fails the stage's run."""
    if node.check is None:
        return
    try:
        node.check(artifact)
    except Exception as exc:
        child.set_tags({"forgeflow.error": str(exc)[:5000]})
        child.finish("FAILED")
        raise


def _tables_of(artifact: Artifact) -> dict:
    import json
    out = {}
    for p in sorted((artifact.dir / "tables").glob("*.json")):
        try:
            out[p.name] = json.loads(p.read_text())
        except ValueError:
            pass
    return out


def _log_inputs(child: StageRun, inputs: dict[str, Artifact]) -> None:
    for name, art in inputs.items():
        if art.manifest.get("dataset"):
            _log_dataset(child, art, name)


def _log_dataset(run: StageRun, artifact: Artifact, context: str) -> None:
    rows = {k: v for k, v in artifact.metrics.items()
            if k.startswith(("docs", "tokens", "rows")) or k in ("docs_out", "records_read")}
    run.log_dataset(name=f"{artifact.stage}/{artifact.name}", digest=artifact.identity,
                    path=artifact.dir, context=context,
                    profile={"identity": artifact.identity, **rows})


def plan_identities(plan: list[Node]) -> dict[str, str]:
    """Every node's identity, computed statically from the spec (nothing runs).

    Identities depend only on configs and upstream identities, so the whole chain is
    known before the first stage starts: ``forgeflow validate`` prints it, and a killed
    run must finish with exactly these."""
    ids: dict[str, str] = {}
    for node in plan:
        inputs = {name: Artifact(stage="", name="", identity=ids[key], path="")
                  for name, key in node.inputs.items()}
        ids[node.key] = node_identity(node, inputs)
    return ids
