"""From a sweep spec to trials: each trial is the base spec plus dotted overrides.

Nothing here runs a trial: :func:`plan_sweep` loads the spec, expands ``grid`` x (``list``
+ ``dirichlet``) into :class:`Trial` objects, validates every trial spec up front (a bad
path or value fails before the first stage starts, naming the trial and the path), and
sizes the concurrency. ``flows/sweep.py`` runs the trials as Prefect subflows.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.experiments.config import DirichletConfig, SweepConfig
from pipeline.spec import PipelineSpec, SpecError, load_spec

MEMORY_PER_TRIAL_GB = 3.0        # a tiny-model trial (torch + tokenizer + shards) on CPU


@dataclass
class Trial:
    index: int
    name: str                           # <sweep>-tNN, also the trial's run.name
    values: dict[str, Any]              # varied spec path -> value
    kind: str = "sampled"               # sampled | proposed
    predicted: float | None = None      # the regression's prediction (proposed trial)

    @property
    def key(self) -> str:
        return f"t{self.index:02d}"

    def overrides(self, sweep_name: str, experiment: str) -> list[str]:
        """Dotted overrides (values as JSON, which the override parser reads as YAML)."""
        return [f"{path}={json.dumps(value)}" for path, value in self.values.items()] + \
               [f"run.name={self.name}", f"run.experiment={experiment}"]

    def mixture(self, path: str) -> dict[str, float]:
        return dict(self.values.get(path) or {})


@dataclass
class SweepPlan:
    config_path: str
    base_overrides: list[str]
    spec: PipelineSpec                  # the base spec
    sweep: SweepConfig
    trials: list[Trial]
    max_parallel: int
    varied: list[str] = field(default_factory=list)   # the spec paths the trials vary

    @property
    def name(self) -> str:
        return self.sweep.name or self.spec.run.name

    @property
    def experiment(self) -> str:
        return self.spec.run.experiment or self.name

    def trial_overrides(self, trial: Trial) -> list[str]:
        return list(self.base_overrides) + trial.overrides(self.name, self.experiment)

    def trial_spec(self, trial: Trial) -> PipelineSpec:
        try:
            return load_spec(self.config_path, self.trial_overrides(trial))
        except SpecError as exc:
            raise SpecError(f"sweep trial {trial.name} ({_show(trial.values)}): {exc}") from None

    def new_trial(self, values: dict[str, Any], kind: str, predicted: float | None = None) -> Trial:
        """One more trial after the planned ones (the regression's proposal)."""
        index = len(self.trials)
        trial = Trial(index, f"{self.name}-t{index:02d}", values, kind, predicted)
        self.trial_spec(trial)          # validate before it runs
        self.trials.append(trial)
        return trial


def plan_sweep(config: str | Path, overrides: list[str] | None = None) -> SweepPlan:
    spec = load_spec(config, overrides or [])
    if spec.sweep is None:
        raise SpecError(f"{config}: no 'sweep:' section (forgeflow sweep needs one; "
                        "forgeflow run runs a single spec)")
    sw = spec.sweep
    points: list[dict[str, Any]] = [dict(t) for t in sw.trials]
    if sw.dirichlet is not None:
        points += [{sw.dirichlet.target: mix} for mix in dirichlet_mixtures(sw.dirichlet)]
    grid_paths = list(sw.grid)
    grid = [dict(zip(grid_paths, combo)) for combo in itertools.product(*sw.grid.values())] or [{}]
    values = [{**g, **p} for g in grid for p in (points or [{}])]
    name = sw.name or spec.run.name
    trials = [Trial(i, f"{name}-t{i:02d}", v) for i, v in enumerate(values)]
    varied = sorted({path for v in values for path in v})
    plan = SweepPlan(str(config), list(overrides or []), spec, sw, trials,
                     max_parallel=1, varied=varied)
    for trial in trials:                # every trial spec is valid before anything runs
        plan.trial_spec(trial)
    plan.max_parallel = sw.max_parallel or default_parallel(spec, len(trials))
    return plan


def dirichlet_mixtures(cfg: DirichletConfig) -> list[dict[str, float]]:
    """``cfg.n`` mixtures, reproducible from ``cfg.seed``, each respecting the minimums,
    rounded to 4 decimals (readable params; the sampler normalises)."""
    rng = np.random.default_rng(cfg.seed)
    alphas = np.array([cfg.alphas[s] for s in cfg.sources])
    return [dict(zip(cfg.sources, w)) for w in
            (round_mixture(v) for v in sample_simplex(rng, alphas, cfg, cfg.n))]


def sample_simplex(rng: np.random.Generator, alphas: np.ndarray, cfg: DirichletConfig,
                   n: int) -> np.ndarray:
    mins = np.array([cfg.min_weights[s] for s in cfg.sources])
    return mins + (1.0 - mins.sum()) * rng.dirichlet(alphas, size=n)


def round_mixture(w: np.ndarray) -> list[float]:
    r = np.round(np.asarray(w, dtype=float), 4)
    r[np.argmax(r)] += round(1.0 - float(r.sum()), 4)       # sums to exactly 1 (4 decimals)
    return [round(float(x), 4) for x in r]


def default_parallel(spec: PipelineSpec, n_trials: int) -> int:
    """Trials the machine holds at once: CPUs / CPUs per trial's training, and memory."""
    cpus = spec.run.num_cpus or os.cpu_count() or 1
    per_trial = max(1, spec.train.num_workers * spec.train.cpus_per_worker)
    try:
        mem_gb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        mem_gb = MEMORY_PER_TRIAL_GB
    return max(1, min(n_trials, cpus // per_trial, int(mem_gb // MEMORY_PER_TRIAL_GB)))


def metric_value(sweep: SweepConfig, metrics: dict[str, float]) -> float | None:
    """The sweep metric of one trial (a weighted sum of its metrics); None if one is missing."""
    total = 0.0
    for name, weight in sweep.metric_terms.items():
        if name not in metrics:
            return None
        total += weight * float(metrics[name])
    return total


def _show(values: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def propose(plan: SweepPlan, results: list[dict]):
    """Fit the mixture regression on the finished trials and return (the model, the
    proposed mixture, its predicted metric, each fitted trial's leave-one-out prediction)."""
    from pipeline.experiments.regression import fit, search_optimum

    d = plan.sweep.dirichlet
    done = [r for r in results if r["metric"] is not None and d.target in r["values"]]
    weights = np.array([[float(r["values"][d.target].get(s, 0.0)) for s in d.sources] for r in done])
    weights = weights / weights.sum(1, keepdims=True)
    y = np.array([r["metric"] for r in done])
    model = fit(weights, y, list(d.sources), alpha=plan.sweep.ridge_alpha)
    mins = np.array([d.min_weights[s] for s in d.sources])
    best, _ = search_optimum(model, mins, maximize=plan.sweep.direction == "maximize",
                                     seed=d.seed)
    mixture = dict(zip(d.sources, round_mixture(np.maximum(best, mins))))
    predicted = float(model.predict(np.array([list(mixture.values())]))[0])
    loo = {r["trial"]: float(p) for r, p in zip(done, model.loo_predictions)}
    return model, {d.target: mixture}, float(predicted), loo
