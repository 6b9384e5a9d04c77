"""MLflow for a sweep: one sweep run, the trials (pipeline runs) nested under it.

The sweep id is the sweep run's MLflow run id; every trial carries it as the tag
``forgeflow.sweep_id``, so ``mlflow.search_runs(filter_string="tags.`forgeflow.sweep_id`
= '<id>'")`` and the MLflow compare view find a sweep's trials directly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.experiments.sweep import SweepPlan, Trial, metric_value
from pipeline.store import code_version
from pipeline.tracking import StageRun, Tracker, resolve_tracking_uri

SWEEP_ID = "forgeflow.sweep_id"
log = logging.getLogger("forgeflow")


class SweepRun:
    def __init__(self, plan: SweepPlan, workdir: Path):
        self.plan = plan
        self.workdir = Path(workdir).resolve()
        uri = resolve_tracking_uri(plan.spec.run.tracking_uri, self.workdir)
        self.tracker = Tracker(uri, plan.experiment, artifact_root=self.workdir / "mlartifacts")
        sw = plan.sweep
        params = {"sweep.metric": sw.metric_label, "sweep.direction": sw.direction,
                  "sweep.trials": len(plan.trials), "sweep.max_parallel": plan.max_parallel,
                  "sweep.varied": ",".join(plan.varied), "sweep.propose": sw.propose,
                  "sweep.config": str(Path(plan.config_path).resolve())}
        for path, values in sw.grid.items():
            params[f"sweep.grid.{path}"] = values
        if sw.dirichlet is not None:
            d = sw.dirichlet
            params.update({"sweep.dirichlet.sources": ",".join(d.sources), "sweep.dirichlet.n": d.n,
                           "sweep.dirichlet.alpha": d.alpha, "sweep.dirichlet.seed": d.seed,
                           "sweep.dirichlet.min_weight": d.min_weight,
                           "sweep.dirichlet.target": d.target})
        self.run_id = self.tracker.start_parent(
            plan.name, params, {"forgeflow.sweep": plan.name, "forgeflow.sweep_metric": sw.metric_label,
                                "forgeflow.sweep_direction": sw.direction,
                                "forgeflow.varied": json.dumps(plan.varied),
                                "forgeflow.code_version": code_version(),
                                "forgeflow.workdir": str(self.workdir)}, kind="sweep")

    @property
    def run(self) -> StageRun:
        return StageRun(self.tracker, self.run_id)

    @property
    def sweep_id(self) -> str:
        return self.run_id

    def trial_tags(self, trial: Trial) -> dict[str, str]:
        """Tags the trial's pipeline run is created with (through the end_to_end subflow)."""
        return {SWEEP_ID: self.run_id, "forgeflow.sweep": self.plan.name,
                "forgeflow.trial": trial.key, "forgeflow.trial_kind": trial.kind,
                "forgeflow.sweep_values": json.dumps(trial.values, sort_keys=True)}

    def trial_run_id(self, trial: Trial) -> str:
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`{SWEEP_ID}` = '{self.run_id}' and tags.`forgeflow.trial` = '{trial.key}'",
            max_results=5)
        if not runs:
            raise RuntimeError(f"sweep {self.run_id}: no MLflow run for trial {trial.name}")
        return max(runs, key=lambda r: r.info.start_time).info.run_id

    def record_trial(self, trial: Trial, eval_metrics: dict[str, float]) -> dict:
        """Log the varied values and the sweep metric on the trial's run; return its row."""
        run_id = self.trial_run_id(trial)
        run = StageRun(self.tracker, run_id)
        run.log_params({f"varied.{p}": v for p, v in trial.values.items()})
        value = metric_value(self.plan.sweep, eval_metrics)
        if value is None:
            missing = sorted(set(self.plan.sweep.metric_terms) - set(eval_metrics))
            log.warning("trial %s has no %s; its evaluation metrics are: %s", trial.name,
                        missing, ", ".join(sorted(eval_metrics)) or "none")
        extra = {}
        if value is not None:
            extra["sweep.metric"] = value
        if trial.predicted is not None:
            extra["sweep.predicted"] = trial.predicted
        run.log_metrics(extra)
        return {"trial": trial.key, "name": trial.name, "run_id": run_id, "kind": trial.kind,
                "values": trial.values, "metric": value, "predicted": trial.predicted,
                "metrics": eval_metrics}

    def finish(self, status: str = "FINISHED") -> None:
        self.tracker.end(self.run_id, status)
