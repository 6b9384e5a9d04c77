"""The ``end_to_end`` flow: every plan node is one Prefect task.

Upstream artifacts are passed to downstream tasks as futures, so the flow-run graph
in the Prefect UI is the real data DAG. The task cache key is the artifact identity
(the same hash the store uses), and only when the store holds that artifact, so
Prefect and the store always agree. Each task publishes a markdown artifact with its
numbers and a link to its MLflow run, plus any tables the stage produced.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext

from flows.cli import PREFECT_UI_FALLBACK
from pipeline.plan import Node, build_plan, prefix_until
from pipeline.runner import Outcome, RunEnv, execute, node_identity, record_cached
from pipeline.spec import load_spec
from pipeline.store import Artifact

# The plan and run environment of flow runs in this process (tasks run in threads).
_RUNS: dict[str, tuple[dict[str, Node], RunEnv]] = {}
_LOCK = threading.Lock()


def _node_env(run_key: str, node_key: str) -> tuple[Node, RunEnv]:
    with _LOCK:
        plan, env = _RUNS[run_key]
    return plan[node_key], env


def _cache_key(context: TaskRunContext, parameters: dict) -> str:
    """The artifact identity, scoped to the run's store. Prefect's result records live
    in its home (or behind its API), which several workdirs may share: the store's path
    is part of the key, so a hit can only return an artifact of this workdir. The store
    is the source of truth: when it does not hold the artifact (deleted, or never
    committed), a Prefect record under the same key is stale and is dropped, so Prefect
    runs the task instead of serving a result that is gone."""
    node, env = _node_env(parameters["run_key"], parameters["node_key"])
    identity = node_identity(node, parameters["upstream"])
    key = f"forgeflow-{identity}-{store_scope(env.store.workdir)}"
    if env.store.lookup(node.stage, node.name, identity) is None:
        from prefect.settings import get_current_settings
        stale = Path(get_current_settings().results.local_storage_path) / key
        stale.unlink(missing_ok=True)
    return key


def store_scope(workdir: Path) -> str:
    """A short digest of the store's resolved path (part of every task cache key)."""
    return hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def publish(outcome: Outcome, env: RunEnv) -> None:
    """Prefect artifacts for one stage: a markdown summary and the stage's tables."""
    art = outcome.artifact
    metrics = art.metrics
    lines = [f"### {outcome.node} {'(cached)' if outcome.cached else ''}",
             f"- artifact: `{art.path}` (identity `{art.short}`)",
             f"- MLflow run: [{outcome.run_id[:8]}]({env.run_url(outcome.run_id)})",
             f"- seconds: {art.manifest.get('seconds', 0):.1f}", ""]
    lines += outcome.summary
    plots = sorted((art.dir / "plots").glob("*.png"))
    if plots:
        producer = art.manifest.get("mlflow_run_id") or outcome.run_id
        base = env.run_url(producer) + "/artifacts/plots"
        lines += ["", "**Plots** (in the MLflow run's artifacts): " +
                  ", ".join(f"[{p.stem}]({base}/{p.name})" for p in plots)]
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())[:80]]
    create_markdown_artifact("\n".join(lines), key=_slug(f"{env.spec.run.name}-{outcome.node}"),
                             description=f"{outcome.node}: numbers and MLflow link")
    for name, rows in list(outcome.tables.items())[:6]:
        if rows:
            create_table_artifact(rows[:200], key=_slug(f"{outcome.node}-{Path(name).stem}"),
                                  description=f"{outcome.node}: {name}")


@task(cache_key_fn=_cache_key, persist_result=True, log_prints=True)
def stage_task(run_key: str, node_key: str, upstream: dict[str, Artifact]) -> Artifact:
    node, env = _node_env(run_key, node_key)
    outcome = execute(node, upstream, env)
    env.outcomes[node_key] = outcome
    publish(outcome, env)
    return outcome.artifact


def _flow_run_name() -> str:
    """Flow runs are named like their MLflow parent run: spec name + start time."""
    from prefect.runtime import flow_run
    from pipeline.tracking import run_name
    params = flow_run.parameters
    try:
        name = load_spec(params["config"], params.get("overrides") or []).run.name
    except Exception:          # a bad spec fails inside the flow, with its own message
        name = Path(str(params.get("config", "run"))).stem
    return run_name(name)


def prefect_flow_run_url(flow_run_id: str) -> str:
    from prefect.settings import PREFECT_UI_URL
    base = PREFECT_UI_URL.value() or PREFECT_UI_FALLBACK
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


@flow(name="end_to_end", log_prints=True, flow_run_name=_flow_run_name)
def end_to_end(config: str, overrides: list[str] | None = None,
               workdir: str | None = None, until: str | None = None,
               parent_run_id: str | None = None,
               tags: dict[str, str] | None = None) -> dict[str, dict]:
    """Run the pipeline described by the YAML spec at ``config`` (with ``until``: only
    the prefix of the DAG that ends with that stage).

    As a sweep trial (a subflow of ``sweep``): ``parent_run_id`` nests the MLflow run under
    the sweep's run and ``tags`` mark it (``forgeflow.sweep_id``, ``forgeflow.trial``)."""
    logger = get_run_logger()
    spec = load_spec(config, overrides or [])
    plan = prefix_until(build_plan(spec), until)
    from prefect.runtime import flow_run
    run_key = str(flow_run.get_id())
    env = RunEnv.start(spec, workdir, name=flow_run.get_name(),
                       tags={"forgeflow.config": str(Path(config).resolve()),
                             "forgeflow.prefect_flow_run_id": run_key,
                             "forgeflow.prefect_flow_run_url": prefect_flow_run_url(run_key),
                             **(tags or {})}, parent_run_id=parent_run_id)
    create_markdown_artifact(
        f"### {flow_run.get_name()}\n- MLflow parent run: [{env.parent_run_id[:8]}]"
        f"({env.run_url(env.parent_run_id)})\n- MLflow experiment (runs table): "
        f"{env.tracker.experiment_url(env.ui_url)}\n- workdir: `{env.workdir}`",
        key=_slug(f"{spec.run.name}-mlflow"), description="the MLflow runs of this flow run")
    env.record_plan(plan)
    with _LOCK:
        _RUNS[run_key] = ({n.key: n for n in plan}, env)
    logger.info("plan: %s", " -> ".join(n.key for n in plan))
    futures = {}
    status = "FAILED"
    try:
        for node in plan:
            upstream = {name: futures[key] for name, key in node.inputs.items()}
            futures[node.key] = stage_task.with_options(
                name=node.key, task_run_name=node.key, description=node.description,
                retries=1 if node.stage == "crawl" else 0,
            ).submit(run_key, node.key, upstream)
        results: dict[str, Artifact] = {}
        for node in plan:
            futures[node.key].wait()
            state = futures[node.key].state
            artifact = state.result()          # raises if the stage failed
            results[node.key] = artifact
            if state.name == "Cached" and Path(artifact.path).parent.parent != env.store.workdir:
                raise RuntimeError(f"{node.key}: Prefect's cache returned {artifact.path}, which is "
                                   f"not in this run's store {env.store.workdir}")
            if state.name == "Cached" and node.key not in env.outcomes:
                # Prefect served the result from its cache: the task body did not run,
                # so record the cached stage in MLflow and Prefect here.
                inputs = {name: results[key] for name, key in node.inputs.items()}
                outcome = record_cached(node, artifact, inputs, env)
                env.outcomes[node.key] = outcome
                publish(outcome, env)
        status = "FINISHED"
    finally:
        _finish(env, status, logger)
        with _LOCK:
            _RUNS.pop(run_key, None)
    return {key: {"identity": a.identity, "path": a.path,
                  "cached": env.outcomes[key].cached if key in env.outcomes else True}
            for key, a in results.items()}


def _finish(env: RunEnv, status: str, logger) -> None:
    ev = env.outcomes.get("evaluate")
    if ev is not None:
        env.parent_run.log_metrics(ev.artifact.metrics)
    try:     # the runs table opens on the evaluation metrics and mixture weights
        env.tracker.set_default_view(list(ev.artifact.metrics) if ev is not None else [],
                                     [f"mix.{k}" for k in (env.spec.train.mixture if env.spec.train else {})])
    except Exception as e:   # a view is a convenience: never fail a run for it
        logger.warning("could not save the MLflow runs-table view: %s", e)
    cached = sum(o.cached for o in env.outcomes.values())
    ran = len(env.outcomes) - cached
    env.finish(status)
    logger.info("pipeline %s: %d stage(s) ran, %d cached; MLflow parent run %s",
                status.lower(), ran, cached, env.run_url(env.parent_run_id))
