"""Compare runs read back from MLflow: a sweep's trials, an experiment, or given run ids.

A table of the varied parameters against the metrics with the best run marked (terminal,
CSV, Markdown), and the plots a data team looks at when it picks a mixture: the metric
against each mixture weight, bits per byte per source for every trial, and the mixture
regression's predicted against observed values.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.experiments.tracking import SWEEP_ID


@dataclass
class Row:
    name: str
    run_id: str
    kind: str                                   # sampled | proposed | run
    values: dict[str, Any]                      # varied column -> value (mix.<source> flattened)
    metrics: dict[str, float]
    metric: float | None = None
    predicted: float | None = None
    best: bool = False


@dataclass
class Comparison:
    title: str
    metric_label: str
    direction: str
    rows: list[Row]
    columns: list[str]                          # varied columns, in order
    sweep_run_id: str | None = None
    extra: dict = field(default_factory=dict)   # e.g. the regression's numbers

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.best), None)

    @property
    def metric_columns(self) -> list[str]:
        """Per-source bits per byte and task accuracies present in every row."""
        names = set.intersection(*(set(r.metrics) for r in self.rows)) if self.rows else set()
        return sorted(n for n in names if n.startswith(("bpb.", "acc.", "forgetting")))


def _flat_values(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for path, v in values.items():
        if isinstance(v, dict) and path.endswith("mixture"):
            prefix = "mix" if path == "train.mixture" else f"{path}"
            for src, w in v.items():
                out[f"{prefix}.{src}"] = w
        else:
            out[path] = v
    return out


def mark_best(rows: list[Row], direction: str) -> None:
    scored = [r for r in rows if r.metric is not None and not math.isnan(r.metric)]
    for r in rows:
        r.best = False
    if scored:
        pick = min if direction == "minimize" else max
        pick(scored, key=lambda r: r.metric).best = True


def load_sweep(client: MlflowClient, sweep_run_id: str) -> Comparison:
    sweep = client.get_run(sweep_run_id)
    tags = sweep.data.tags
    trials = client.search_runs([sweep.info.experiment_id],
                                filter_string=f"tags.`{SWEEP_ID}` = '{sweep_run_id}' "
                                              "and tags.`forgeflow.kind` = 'pipeline'",
                                max_results=5000)
    rows = []
    for r in sorted(trials, key=lambda r: r.data.tags.get("forgeflow.trial", "")):
        values = _flat_values(json.loads(r.data.tags.get("forgeflow.sweep_values", "{}")))
        rows.append(Row(r.data.tags.get("forgeflow.trial", r.info.run_name), r.info.run_id,
                        r.data.tags.get("forgeflow.trial_kind", "sampled"), values, dict(r.data.metrics),
                        r.data.metrics.get("sweep.metric"), r.data.metrics.get("sweep.predicted")))
    columns = sorted({c for r in rows for c in r.values})
    direction = tags.get("forgeflow.sweep_direction", "minimize")
    mark_best(rows, direction)
    extra = {k: v for k, v in sweep.data.metrics.items() if k.startswith("regression.")}
    return Comparison(f"sweep {tags.get('forgeflow.sweep', sweep.info.run_name)} ({sweep_run_id})",
                      tags.get("forgeflow.sweep_metric", "sweep.metric"), direction, rows, columns,
                      sweep_run_id, extra)


def load_runs(client: MlflowClient, runs: list, metric: str | None, direction: str,
              title: str) -> Comparison:
    """Plain pipeline runs: the varied columns are the params that differ between them."""
    params = [r.data.params for r in runs]
    keys = sorted({k for p in params for k in p})
    varied = [k for k in keys if len({p.get(k) for p in params}) > 1
              and not k.startswith(("run.", "sweep.", "varied."))]
    mix = [k for k in varied if k.startswith("mix.")]
    columns = mix + [k for k in varied if k not in mix and not k.startswith("train.mixture.")][:8]
    if metric is None:
        bpb = sorted({k for r in runs for k in r.data.metrics if k.startswith("bpb.")})
        metric = bpb[0] if bpb else None
    rows = []
    for r in runs:
        values = {c: _num(r.data.params.get(c)) for c in columns}
        m = r.data.metrics.get(metric) if metric else None
        rows.append(Row(r.info.run_name or r.info.run_id[:8], r.info.run_id,
                        r.data.tags.get("forgeflow.trial_kind", "run"), values, dict(r.data.metrics), m))
    mark_best(rows, direction)
    return Comparison(title, metric or "-", direction, rows, columns)


def resolve(client: MlflowClient, targets: list[str], metric: str | None = None,
            direction: str = "minimize") -> Comparison:
    """A sweep run id, a sweep name (its latest sweep), an experiment name, or run ids."""
    if len(targets) == 1:
        t = targets[0]
        run = _get_run(client, t)
        if run is not None and run.data.tags.get("forgeflow.kind") == "sweep":
            return load_sweep(client, t)
        exps = client.search_experiments()
        sweeps = client.search_runs([e.experiment_id for e in exps],
                                    filter_string=f"tags.`forgeflow.sweep` = '{t}' and "
                                                  "tags.`forgeflow.kind` = 'sweep'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if sweeps:
            return load_sweep(client, sweeps[0].info.run_id)
        exp = client.get_experiment_by_name(t)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id],
                                      filter_string="tags.`forgeflow.kind` = 'pipeline'",
                                      max_results=5000)
            if not runs:
                raise LookupError(f"experiment {t!r} has no pipeline runs")
            return load_runs(client, sorted(runs, key=lambda r: r.info.start_time), metric,
                             direction, f"experiment {t}")
    runs = []
    for t in targets:
        run = _get_run(client, t)
        if run is None:
            raise LookupError(f"{t!r} is not a sweep id, sweep name, experiment or run id "
                              f"in the tracking store")
        runs.append(run)
    return load_runs(client, runs, metric, direction, f"{len(runs)} run(s)")


def _get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except Exception:
        return None


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


# ---- tables ---------------------------------------------------------------------------------

def table_rows(comp: Comparison) -> list[dict[str, Any]]:
    out = []
    for r in comp.rows:
        row = {"best": "*" if r.best else "", "trial": r.name, "kind": r.kind}
        row.update({c: r.values.get(c, "") for c in comp.columns})
        row[comp.metric_label] = r.metric
        if any(x.predicted is not None for x in comp.rows):
            row["predicted"] = r.predicted
        row.update({m: r.metrics.get(m) for m in comp.metric_columns if m != comp.metric_label})
        row["run_id"] = r.run_id
        out.append(row)
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def format_table(comp: Comparison, fmt: str = "text", max_metric_columns: int = 6) -> str:
    rows = table_rows(comp)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if not rows:
        return f"{comp.title}: no runs"
    keep = list(rows[0])
    if fmt == "text":                # the terminal gets the first few metric columns
        fixed = ["best", "trial", "kind", *comp.columns, comp.metric_label, "predicted"]
        others = [k for k in keep if k not in fixed and k != "run_id"]
        keep = [k for k in keep if k not in others or k in others[:max_metric_columns]]
    cells = [[_fmt(r[k]) if k != "run_id" else r[k][:12] for k in keep] for r in rows]
    arrow = "lower is better" if comp.direction == "minimize" else "higher is better"
    head = f"{comp.title}: metric {comp.metric_label} ({arrow}); * = best"
    if fmt == "markdown":
        lines = [f"**{head}**", "", "| " + " | ".join(keep) + " |", "|" + "---|" * len(keep)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keep)]
    lines = [head, "  ".join(k.ljust(w) for k, w in zip(keep, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


# ---- plots -------------------------------------------------------------------------------------

def make_plots(comp: Comparison, out_dir: Path) -> list[Path]:
    """metric_vs_weight.png, bpb_per_trial.png and, when the sweep ran the mixture
    regression (trials carry ``sweep.loo_predicted``), predicted_vs_observed.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = [r for r in comp.rows if r.metric is not None]
    weights = [c for c in comp.columns if all(isinstance(r.values.get(c), (int, float)) for r in rows)]
    if rows and weights:
        fig, axes = plt.subplots(1, len(weights), figsize=(3.6 * len(weights), 3.2), squeeze=False)
        for ax, col in zip(axes[0], weights):
            for r in rows:
                style = dict(marker="*", s=160, c="tab:red") if r.kind == "proposed" else dict(c="tab:blue")
                ax.scatter(r.values[col], r.metric, **style, zorder=3)
                if r.best:
                    ax.scatter(r.values[col], r.metric, s=260, facecolors="none", edgecolors="k", zorder=4)
                ax.annotate(r.name, (r.values[col], r.metric), fontsize=6, alpha=0.6)
            ax.set_xlabel(col)
            ax.set_ylabel(comp.metric_label if ax is axes[0][0] else "")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{comp.metric_label} vs mixture weight (star: proposed, ring: best)", fontsize=9)
        paths.append(_save(fig, out_dir / "metric_vs_weight.png"))
    bpb = [m for m in comp.metric_columns if m.startswith("bpb.")]
    if comp.rows and bpb:
        import numpy as np
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(comp.rows) + 2), 3.4))
        width = 0.8 / len(bpb)
        x = np.arange(len(comp.rows))
        for i, m in enumerate(bpb):
            ax.bar(x + i * width, [r.metrics.get(m, float("nan")) for r in comp.rows], width, label=m)
        ax.set_xticks(x + 0.4 - width / 2, [r.name + ("*" if r.best else "") for r in comp.rows],
                      rotation=30, fontsize=7)
        ax.set_ylabel("bits per byte")
        ax.legend(fontsize=6)
        ax.set_title("per-source bits per byte per trial (* = best)", fontsize=9)
        paths.append(_save(fig, out_dir / "bpb_per_trial.png"))
    loo = {r.name: r.metrics["sweep.loo_predicted"] for r in comp.rows if "sweep.loo_predicted" in r.metrics}
    if loo:
        fig, ax = plt.subplots(figsize=(3.8, 3.6))
        pts = [(loo[r.name], r.metric, r) for r in rows if r.name in loo]
        prop = [(r.predicted, r.metric, r) for r in rows if r.kind == "proposed" and r.predicted is not None]
        if pts:
            ax.scatter([p for p, _, _ in pts], [o for _, o, _ in pts], label="trials (leave-one-out)")
        if prop:
            ax.scatter([p for p, _, _ in prop], [o for _, o, _ in prop], marker="*", s=180,
                       c="tab:red", label="proposed mixture")
        allv = [v for p, o, _ in pts + prop for v in (p, o)]
        if allv:
            lo, hi = min(allv), max(allv)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("observed")
        rho = comp.extra.get("regression.spearman_loo")
        ax.set_title("mixture regression" + (f" (LOO Spearman {rho:.2f})" if rho is not None else ""),
                     fontsize=9)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir / "predicted_vs_observed.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
