"""The ``sweep`` flow: one flow run, the trials as ``end_to_end`` subflows.

Each trial is a task (bounded by ``sweep.max_parallel`` through the thread-pool task
runner) whose body calls the ``end_to_end`` flow, so the Prefect UI shows the sweep, a
task per trial and each trial's full stage DAG as a nested flow run. Trials share every
upstream artifact through the store (a stage another trial is writing is waited for).
At the end: the mixture regression and its proposed trial (``sweep.propose``), the
compare table as a Prefect markdown artifact, and the plots on the sweep's MLflow run.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.end_to_end import _slug, end_to_end
from pipeline.experiments.compare import format_table, load_sweep, make_plots
from pipeline.experiments.sweep import SweepPlan, Trial, plan_sweep, propose
from pipeline.experiments.tracking import SweepRun

_SWEEPS: dict[str, tuple[SweepPlan, SweepRun, str]] = {}
_LOCK = threading.Lock()


@task(cache_policy=NO_CACHE, log_prints=True)
def trial_task(sweep_key: str, index: int) -> dict:
    with _LOCK:
        plan, srun, workdir = _SWEEPS[sweep_key]
    trial = plan.trials[index]
    results = end_to_end.with_options(flow_run_name=trial.name)(
        config=plan.config_path, overrides=plan.trial_overrides(trial), workdir=workdir,
        parent_run_id=srun.run_id, tags=srun.trial_tags(trial))
    ev = results.get("evaluate")
    metrics = json.loads((Path(ev["path"]) / "manifest.json").read_text())["metrics"] if ev else {}
    return srun.record_trial(trial, metrics)


@flow(name="sweep", log_prints=True)
def sweep(config: str, overrides: list[str] | None = None, workdir: str | None = None) -> dict:
    """Run every trial of the spec's ``sweep:`` section (see pipeline/experiments/README.md)."""
    logger = get_run_logger()
    plan = plan_sweep(config, overrides or [])
    workdir = str(Path(workdir or plan.spec.run.workdir).resolve())
    srun = SweepRun(plan, Path(workdir))
    from prefect.runtime import flow_run
    key = str(flow_run.get_id())
    with _LOCK:
        _SWEEPS[key] = (plan, srun, workdir)
    logger.info("sweep %s: %d trial(s), %d at a time, varying %s; MLflow sweep run %s",
                plan.name, len(plan.trials), plan.max_parallel, ", ".join(plan.varied), srun.run_id)
    status = "FAILED"
    try:
        futures = [_submit(key, t) for t in plan.trials]
        results, failed = [], []
        for trial, fut in zip(plan.trials, futures):      # a failed trial stops no other
            try:
                results.append(fut.result())
            except Exception as exc:
                failed.append(f"{trial.name}: {type(exc).__name__}: {str(exc)[:300]}")
                logger.error("trial %s failed: %s", trial.name, exc)
        if plan.sweep.propose and len(results) >= 3:
            results.append(_propose(key, plan, srun, results, logger))
        comp = load_sweep(srun.tracker.client, srun.run_id)
        plots = make_plots(comp, Path(workdir) / "sweeps" / srun.run_id)
        for p in plots:
            srun.run.log_artifact(p, "plots")
        best = comp.best
        if best is not None:
            srun.run.log_metrics({"best.metric": best.metric})
            srun.run.set_tags({"forgeflow.best_trial": best.name, "forgeflow.best_run": best.run_id})
        _publish(plan, srun, comp, plots)
        logger.info("\n%s", format_table(comp))
        if failed:
            raise RuntimeError(f"sweep {plan.name}: {len(failed)} of {len(plan.trials)} trial(s) "
                               "failed:\n  " + "\n  ".join(failed))
        status = "FINISHED"
    finally:
        srun.finish(status)
        with _LOCK:
            _SWEEPS.pop(key, None)
    return {"sweep_id": srun.run_id, "trials": results,
            "best": comp.best.name if comp.best else None}


def _submit(key: str, trial: Trial):
    return trial_task.with_options(name=f"trial {trial.key}", task_run_name=trial.name).submit(key, trial.index)


def _propose(key: str, plan: SweepPlan, srun: SweepRun, results: list[dict], logger) -> dict:
    model, values, predicted, loo = propose(plan, results)
    for r in results:                 # leave-one-out predictions, for predicted-vs-observed
        if r["trial"] in loo:
            srun.tracker.client.log_metric(r["run_id"], "sweep.loo_predicted", loo[r["trial"]])
    trial = plan.new_trial(values, "proposed", predicted)
    logger.info("mixture regression: LOO Spearman %.3f, ridge alpha %g; proposed %s, predicted %.4f",
                model.spearman, model.alpha, values, predicted)
    row = _submit(key, trial).result()
    observed = row["metric"]
    srun.run.log_metrics({"regression.spearman_loo": model.spearman, "regression.alpha": model.alpha,
                          "regression.r2_train": model.r2_train, "regression.predicted": predicted,
                          **({"regression.observed": observed} if observed is not None else {})})
    srun.run.set_tags({"forgeflow.proposed_trial": trial.name,
                       "forgeflow.proposed_mixture": json.dumps(values, sort_keys=True)})
    logger.info("proposed trial %s: predicted %.4f, observed %s", trial.name, predicted, observed)
    return row


def _publish(plan: SweepPlan, srun: SweepRun, comp, plots: list[Path]) -> None:
    ui = plan.spec.run.mlflow_ui_url
    base = srun.tracker.run_url(ui, srun.run_id)
    lines = [f"## sweep {plan.name}", f"- MLflow sweep run: [{srun.run_id[:8]}]({base})",
             f"- trials: {len(comp.rows)}, varied: {', '.join(plan.varied)}", ""]
    if comp.extra:
        lines += [f"- {k}: {v:.4g}" for k, v in sorted(comp.extra.items())] + [""]
    lines.append(format_table(comp, "markdown"))
    if plots:
        lines += ["", "**Plots** (in the sweep run's artifacts): " +
                  ", ".join(f"[{p.stem}]({base}/artifacts/plots/{p.name})" for p in plots)]
    create_markdown_artifact("\n".join(lines), key=_slug(f"sweep-{plan.name}"),
                             description=f"sweep {plan.name}: compare table and plots")


def run_sweep(config: str, overrides: list[str] | None = None, workdir: str | None = None) -> dict:
    """The sweep flow with a task runner sized to ``sweep.max_parallel``."""
    plan = plan_sweep(config, overrides or [])
    runner = ThreadPoolTaskRunner(max_workers=plan.max_parallel)
    return sweep.with_options(task_runner=runner, flow_run_name=plan.name)(
        config=config, overrides=overrides, workdir=workdir)
