"""The sweep spec, trial generation, the mixture regression and `forgeflow compare`'s
table (fast: no pipeline runs; MLflow is a real SQLite store in tmp)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.experiments.compare import format_table, make_plots, resolve
from pipeline.experiments.regression import _ridge, features, fit, search_optimum, spearman
from pipeline.experiments.sweep import metric_value, plan_sweep
from pipeline.spec import SpecError, load_spec
from tests.sweep_util import small_spec

DIRICHLET = {"sources": ["prose", "web", "code"], "n": 5, "alpha": 1.0, "seed": 7,
             "min_weight": {"prose": 0.2, "web": 0.0, "code": 0.1}}


def test_dirichlet_trials_are_reproducible_mixtures_above_the_minimums(tmp_path):
    cfg = small_spec(tmp_path, sweep={"dirichlet": DIRICHLET, "metric": "bpb.pretrain.code"})
    plan = plan_sweep(cfg)
    assert [t.name for t in plan.trials] == [f"tiny-t{i:02d}" for i in range(5)]
    mixes = [t.values["train.mixture"] for t in plan.trials]
    for m in mixes:
        assert set(m) == {"prose", "web", "code"}
        assert abs(sum(m.values()) - 1.0) < 1e-9
        assert m["prose"] >= 0.2 and m["code"] >= 0.1 and m["web"] >= 0.0
    assert len({tuple(m.values()) for m in mixes}) == 5
    assert [t.values for t in plan_sweep(cfg).trials] == [t.values for t in plan.trials]
    other = small_spec(tmp_path, sweep={"dirichlet": {**DIRICHLET, "seed": 8}, "metric": "x"})
    assert [t.values for t in plan_sweep(other).trials] != [t.values for t in plan.trials]
    # every trial is an ordinary spec: base + overrides, its own run name, the sweep's experiment
    spec = plan.trial_spec(plan.trials[2])
    assert spec.train.mixture == mixes[2]
    assert spec.run.name == "tiny-t02" and spec.run.experiment == "tiny"
    assert plan.varied == ["train.mixture"]
    assert plan.max_parallel >= 1


def test_grid_is_crossed_with_the_list_trials(tmp_path):
    cfg = small_spec(tmp_path, sweep={
        "grid": {"train.schedule.max_lr": [0.001, 0.003]},
        "list": [{"train.mixture": {"prose": 1.0}}, {"train.mixture": {"code": 1.0}, "train.steps": 9}],
        "metric": {"bpb.pretrain.prose": 0.5, "bpb.pretrain.code": 0.5}, "max_parallel": 3})
    plan = plan_sweep(cfg)
    assert plan.max_parallel == 3
    got = [(t.values["train.schedule.max_lr"], tuple(t.values["train.mixture"]), t.values.get("train.steps"))
           for t in plan.trials]
    assert got == [(0.001, ("prose",), None), (0.001, ("code",), 9),
                   (0.003, ("prose",), None), (0.003, ("code",), 9)]
    assert plan.trial_spec(plan.trials[3]).train.steps == 9
    assert plan.trial_spec(plan.trials[3]).train.schedule.max_lr == 0.003
    assert metric_value(plan.sweep, {"bpb.pretrain.prose": 2.0, "bpb.pretrain.code": 4.0}) == 3.0
    assert metric_value(plan.sweep, {"bpb.pretrain.prose": 2.0}) is None


def test_a_bad_trial_fails_before_anything_runs_naming_trial_and_path(tmp_path):
    cfg = small_spec(tmp_path, sweep={"grid": {"train.stpes": [3]}, "metric": "m"})
    with pytest.raises(SpecError, match=r"(?s)sweep trial tiny-t00 \(train.stpes=3\).*train.stpes.*did you mean 'steps'"):
        plan_sweep(cfg)
    cfg = small_spec(tmp_path, sweep={"dirichlet": {**DIRICHLET, "sources": ["prose", "nope"],
                                                    "min_weight": 0.0}, "metric": "m"})
    with pytest.raises(SpecError, match=r"(?s)tiny-t00.*unknown sources \['nope'\]"):
        plan_sweep(cfg)


@pytest.mark.parametrize("sweep, message", [
    ({"dirichlet": {**DIRICHLET, "alhpa": 2}, "metric": "m"}, r"sweep.dirichlet.alhpa: unknown field.*did you mean 'alpha'"),
    ({"dirichlet": {**DIRICHLET, "min_weight": 0.4}, "metric": "m"}, r"sweep.dirichlet: .*min_weight.*sum below 1"),
    ({"dirichlet": {**DIRICHLET, "alpha": {"prose": 1.0}}, "metric": "m"}, r"alpha per source.*missing \['code', 'web'\]"),
    ({"grid": {"train.steps": [1]}, "metric": "m", "propose": True}, r"propose: true needs a dirichlet"),
    ({"metric": "m"}, r"at least one of grid, list, dirichlet"),
    ({"grid": {"train.steps": [1]}}, r"sweep.metric: Field required"),
    ({"grid": {"train.steps": []}, "metric": "m"}, r"grid\[train.steps\] has no values"),
])
def test_sweep_section_errors_name_the_path(tmp_path, sweep, message):
    with pytest.raises(SpecError, match=message):
        load_spec(small_spec(tmp_path, sweep=sweep))


def test_a_spec_without_sweep_section_is_refused_by_plan_sweep(tmp_path):
    with pytest.raises(SpecError, match="no 'sweep:' section"):
        plan_sweep(small_spec(tmp_path))


# ---- the mixture regression -------------------------------------------------------------------

OPT = np.array([0.5, 0.3, 0.2])
CURV = np.array([3.0, 2.0, 4.0])


def planted(w):
    return 1.0 + ((np.atleast_2d(w) - OPT) ** 2 * CURV).sum(1)


def test_regression_recovers_a_planted_optimum():
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(3), size=12)
    y = planted(w) + rng.normal(0, 0.002, len(w))       # a little noise, like real trials
    model = fit(w, y, ["a", "b", "c"])
    assert model.spearman > 0.95                       # leave-one-out ranks are right
    best, pred = search_optimum(model, np.zeros(3))
    assert np.abs(best - OPT).max() < 0.03, best
    assert abs(pred - 1.0) < 0.01
    assert abs(best.sum() - 1.0) < 1e-9
    # with a minimum on c that excludes the optimum, the constrained optimum of the quadratic
    # (Lagrange: a = 0.44, b = 0.21, c = 0.35) is found on the boundary
    best, _ = search_optimum(model, np.array([0.0, 0.0, 0.35]))
    assert best[2] >= 0.35 - 1e-12
    assert np.abs(best - [0.44, 0.21, 0.35]).max() < 0.03, best
    # maximising a concave (negated) metric finds the same point
    neg = fit(w, -y, ["a", "b", "c"])
    best, _ = search_optimum(neg, np.zeros(3), maximize=True)
    assert np.abs(best - OPT).max() < 0.03


def test_closed_form_leave_one_out_equals_refitting():
    rng = np.random.default_rng(3)
    x = features(rng.dirichlet(np.ones(3), size=9))
    x = (x - x.mean(0)) / x.std(0)
    y = rng.normal(size=9)
    _, _, loo = _ridge(x, y, 0.1)
    for i in range(9):
        keep = np.arange(9) != i
        coef, b, _ = _ridge(x[keep], y[keep], 0.1)
        assert abs(x[i] @ coef + b - loo[i]) < 1e-9


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    with pytest.raises(ValueError, match="at least 3 trials"):
        fit(np.eye(3)[:2], [1.0, 2.0], ["a", "b", "c"])


# ---- compare, on a real MLflow store ----------------------------------------------------------

def _fake_sweep(tmp_path):
    """A sweep run and three trials written the way the sweep flow writes them."""
    from pipeline.experiments.sweep import plan_sweep
    from pipeline.experiments.tracking import SweepRun
    from pipeline.tracking import StageRun
    cfg = small_spec(tmp_path, sweep={"dirichlet": {**DIRICHLET, "n": 3}, "metric": "bpb.pretrain.code"})
    plan = plan_sweep(cfg)
    srun = SweepRun(plan, tmp_path / "work")
    values = [2.5, 1.9, 2.2]
    for trial, v in zip(plan.trials, values):
        rid = srun.tracker.start_parent(trial.name, {"mix.prose": trial.values["train.mixture"]["prose"]},
                                        srun.trial_tags(trial), parent_id=srun.run_id)
        evals = {"bpb.pretrain.code": v, "bpb.pretrain.prose": v + 1}
        StageRun(srun.tracker, rid).log_metrics(evals)     # end_to_end logs these on its run
        srun.record_trial(trial, evals)
        srun.tracker.end(rid)
    srun.finish()
    return srun, plan


def test_compare_lists_every_trial_and_marks_the_best(tmp_path):
    srun, plan = _fake_sweep(tmp_path)
    client = srun.tracker.client
    for target in ([srun.run_id], ["tiny"]):             # by sweep id and by sweep name
        comp = resolve(client, target)
        assert [r.name for r in comp.rows] == ["t00", "t01", "t02"]
        assert comp.best.name == "t01" and comp.best.metric == 1.9
        assert comp.columns == ["mix.code", "mix.prose", "mix.web"]
    text = format_table(comp)
    lines = text.splitlines()
    assert "bpb.pretrain.code (lower is better)" in lines[0]
    best_line = next(line for line in lines if " t01 " in f" {line} ")
    assert best_line.startswith("*") and "1.9000" in best_line
    assert sum(line.startswith("*") for line in lines) == 1
    csv_rows = format_table(comp, "csv").strip().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].startswith("best,trial,kind,mix.code")
    md = format_table(comp, "markdown")
    assert "| * | t01 |" in md
    # the experiment view: plain runs, varied params found by difference, given metric
    ids = [r.run_id for r in comp.rows]
    by_ids = resolve(client, ids, metric="bpb.pretrain.prose", direction="maximize")
    assert by_ids.best.run_id == ids[0]                 # 3.5 is the largest prose bpb
    assert "mix.prose" in by_ids.columns
    with pytest.raises(LookupError, match="not a sweep id"):
        resolve(client, ["nope", "nada"])
    plots = make_plots(comp, tmp_path / "plots")
    assert {p.name for p in plots} == {"metric_vs_weight.png", "bpb_per_trial.png"}
    assert all(p.stat().st_size > 5000 for p in plots)


def test_propose_fits_the_trials_and_respects_the_minimums(tmp_path):
    """sweep.propose on finished trials whose metric is the planted quadratic: the proposed
    mixture is near the optimum, above the minimums, valid as a trial spec."""
    from pipeline.experiments.sweep import propose
    cfg = small_spec(tmp_path, sweep={"dirichlet": {**DIRICHLET, "n": 10, "min_weight": 0.05},
                                      "metric": "m", "propose": True})
    plan = plan_sweep(cfg)
    results = [{"trial": t.key, "values": t.values,
                "metric": float(planted(np.array([[t.values["train.mixture"][s] for s in ("prose", "web", "code")]]))[0])}
               for t in plan.trials]
    model, values, predicted, loo = propose(plan, results)
    mix = values["train.mixture"]
    assert abs(sum(mix.values()) - 1) < 1e-9 and min(mix.values()) >= 0.05
    assert np.abs(np.array([mix["prose"], mix["web"], mix["code"]]) - OPT).max() < 0.05, mix
    assert set(loo) == {t.key for t in plan.trials} and model.spearman > 0.9
    trial = plan.new_trial(values, "proposed", predicted)
    assert trial.name == "tiny-t10" and plan.trial_spec(trial).train.mixture == mix
