"""Continual-pretraining phases that mean what the papers mean: per-phase data seeds,
replay of the original pretraining mixture at exactly the stated fraction, schedules
chained across phases (``previous``), token budgets, branches, the Parmar blend switch.

Training runs are tiny (d=32, a few steps, one process); the sampler tests need no
training at all."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.stage import StageContext
from pipeline.tokenize.mixture import MixtureSampler, sampler_for
from pipeline.tokenize.reader import open_shards
from pipeline.train.config import (ContinualConfig, ModelConfig, PhaseConfig, ScheduleConfig,
                                   SwitchConfig, TrainConfig)
from pipeline.train.schedules import chain, end_lr, lr_at, switch_step
from pipeline.train.stage import read_lineage, read_log, run_continual, run_pretrain
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def tiny(**kw) -> TrainConfig:
    base = dict(model=ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=32),
                steps=8, batch_size=4, seq_len=32, num_workers=0, log_every=100,
                eval_every=0, checkpoint_every=0, val_tokens_per_source=64,
                mixture={"shakespeare": 3, "web": 1},
                schedule=ScheduleConfig(kind="cosine", max_lr=3e-3, warmup_steps=2))
    base.update(kw)
    return TrainConfig(**base)


def ctx(tmp_path, name):
    return StageContext.for_testing(tmp_path / name, name=name, show_progress=False)


# ---- data seeds ---------------------------------------------------------------------

def test_phase_data_seed_gives_windows_disjoint_from_pretraining(shards):
    sets = open_shards(shards)
    mix = {"shakespeare": 1.0, "web": 1.0}
    cfg = tiny()
    phase = PhaseConfig(name="more", mixture=mix)
    seed = phase.data_seed(cfg.seed)
    assert seed != cfg.seed and seed == PhaseConfig(name="more", mixture=mix).data_seed(cfg.seed)
    assert PhaseConfig(name="other", mixture=mix).data_seed(cfg.seed) != seed
    assert PhaseConfig(name="more", mixture=mix, seed=7).data_seed(cfg.seed) == 7

    train = {s: sets[s]["train"] for s in mix}
    pre = MixtureSampler(train, mix, 32, cfg.seed)
    cont = MixtureSampler(train, mix, 32, seed)
    steps, bs = 100, 8
    pre_w = [w for s in range(steps) for w in pre.row_windows(s, bs)]
    cont_w = [w for s in range(steps) for w in cont.row_windows(s, bs)]
    same_position = sum(a == b for a, b in zip(pre_w, cont_w))
    overlap = len(set(pre_w) & set(cont_w))
    # the old behaviour (train.seed reused) made every one of the 800 windows identical
    assert same_position <= 2 and overlap <= 0.02 * len(pre_w)


# ---- replay -------------------------------------------------------------------------

def test_replay_is_exactly_the_stated_fraction_of_the_original_mixture(shards):
    sets = open_shards(shards)
    pretrain_mix = {"shakespeare": 0.75, "web": 0.25}
    spec = {"mixture": {"german": 1.0}, "replay_mixture": pretrain_mix, "replay": 0.05,
            "seed": 11}
    s = sampler_for(sets, spec, 32, 0)
    steps, bs = 400, 16
    got = s.realised(steps, bs)
    assert got["replay_rows"] == round(steps * bs * 0.05)           # exact, not just on average
    for step in range(steps):                                        # and spread over the steps
        assert len(s.replay_rows(step, bs)) in (0, 1)
    # the replay rows follow the pretraining mixture; nothing else draws shakespeare or web
    rep = got["replay_tokens"]
    n_rep = sum(rep.values())
    assert rep["shakespeare"] / n_rep == pytest.approx(0.75, abs=0.08)
    assert got["tokens"]["shakespeare"] == rep["shakespeare"]
    assert got["tokens"]["german"] == (steps * bs - got["replay_rows"]) * 32
    # a replay source that is also in the new mixture: replay rows are still exactly 25%
    both = sampler_for(sets, {"mixture": {"german": 1, "web": 1},
                              "replay_mixture": {"web": 1}, "replay": 0.25, "seed": 3}, 32, 0)
    r = both.realised(50, 8)
    assert r["replay_rows"] == 100 and r["replay_tokens"] == {"german": 0, "web": 3200}
    # rank slices see the same replay rows as the global batch
    full = both.global_batch(7, 8)
    import numpy as np
    parts = [both.rank_batch(7, 8, r_, 2) for r_ in range(2)]
    np.testing.assert_array_equal(full[0::2], parts[0])
    np.testing.assert_array_equal(full[1::2], parts[1])


def test_replay_does_not_fade_across_phases_and_schedules_chain(shards, tmp_path):
    """pretrain (cosine) -> p1 (re-warm) -> p2 (constant at `previous`): phase 2 replays the
    pretraining mixture at its full 10%, and every phase starts at the lr where its
    parent ended."""
    cfg = tiny()
    pre = ctx(tmp_path, "pretrain")
    run_pretrain(cfg, shards, pre)
    lin0 = read_lineage(pre.out_dir)
    assert lin0["end_lr"] == pytest.approx(3e-4) and lin0["global_step_end"] == 8
    assert lin0["pretrain_mixture"] == pytest.approx({"shakespeare": 0.75, "web": 0.25})

    p1 = PhaseConfig(name="p1", steps=10, mixture={"german": 1.0}, replay=0.1,
                     schedule=ScheduleConfig(kind="rewarm_cosine", max_lr=2e-3, warmup_steps=2))
    c1 = ctx(tmp_path, "p1")
    run_continual(p1, cfg, shards, pre.out_dir, c1)
    p2 = PhaseConfig(name="p2", steps=10, mixture={"german": 1.0, "web": 1.0}, replay=0.1,
                     schedule=ScheduleConfig(kind="constant", max_lr="previous", warmup_steps=0))
    c2 = ctx(tmp_path, "p2")
    run_continual(p2, cfg, shards, c1.out_dir, c2)

    lin1, lin2 = read_lineage(c1.out_dir), read_lineage(c2.out_dir)
    lr1 = [r["lr"] for r in read_log(c1.out_dir)]
    lr2 = [r["lr"] for r in read_log(c2.out_dir)]
    assert lr1[0] == pytest.approx(3e-4)              # re-warm from where pretraining ended
    assert lr1[2] == pytest.approx(2e-3)              # to the new peak
    assert lin1["end_lr"] == pytest.approx(2e-4)      # its own floor (0.1 * 2e-3)
    assert lr2 == pytest.approx([2e-4] * 10)          # continued: no re-warm, no jump
    # replay: both phases draw from the *pretraining* mixture, 4 of 40 rows each
    for lin in (lin1, lin2):
        assert lin["replay_mixture"] == pytest.approx({"shakespeare": 0.75, "web": 0.25})
        assert lin["replay_fraction_realised"] == pytest.approx(0.1)
        assert lin["pretrain_mixture"] == pytest.approx(lin0["pretrain_mixture"])
    # the expected blend of phase 2: shakespeare stays at 0.1 * 0.75 (it faded to
    # 0.1 * 0.1 * 0.75 when replay blended the previous phase's blend)
    mix2 = json.loads((c2.out_dir / "mixture.json").read_text())
    assert mix2["shakespeare"] == pytest.approx(0.075)
    # the global step axis and cumulative tokens continue across phases
    assert (lin1["global_step_start"], lin2["global_step_start"], lin2["global_step_end"]) == (8, 18, 28)
    assert lin2["ancestors"] == ["pretrain", "continual.p1"] and lin2["parent"] == "continual.p1"
    total = sum(lin2["cumulative_tokens_per_source"].values())
    assert total == 28 * 4 * 32
    assert lin2["cumulative_tokens_per_source"]["german"] == (
        lin1["tokens_per_source"]["german"] + lin2["tokens_per_source"]["german"])
    assert lin2["seed"] == p2.data_seed(cfg.seed) != cfg.seed


def test_token_budget_branch_and_parmar_switch(shards, tmp_path):
    """`tokens:` instead of `steps:`; a branch forked from pretraining with Parmar's
    schedule (no warmup, from the pretraining min lr to min/100) and a blend switch at
    max/5."""
    cfg = tiny()
    pre = ctx(tmp_path, "pretrain")
    run_pretrain(cfg, shards, pre)
    sched = ScheduleConfig(kind="cosine", max_lr="previous", warmup_steps=0, min_lr_ratio=0.01)
    phase = PhaseConfig(name="parmar", tokens=20 * 128 - 5, mixture={"shakespeare": 1, "web": 1},
                        replay=0.0, schedule=sched,
                        switch=SwitchConfig(mixture={"german": 1}, at_lr_ratio=0.2))
    assert phase.steps_for(128) == 20
    c = ctx(tmp_path, "parmar")
    m = run_continual(phase, cfg, shards, pre.out_dir, c)
    lrs = [r["lr"] for r in read_log(c.out_dir)]
    assert len(lrs) == 20 and lrs[0] == pytest.approx(3e-4)        # starts at pretraining min
    resolved = chain(sched, 3e-4)
    assert end_lr(20, resolved) == pytest.approx(3e-6)              # decays to min / 100
    k = switch_step(20, resolved, at_lr_ratio=0.2)
    assert lrs[k] <= 0.2 * 3e-4 < lrs[k - 1]                        # switch when lr hits max/5
    assert m["switch_step"] == k
    lin = read_lineage(c.out_dir)
    # before the switch only shakespeare/web rows, after it only german rows
    assert lin["tokens_per_source"]["german"] == (20 - k) * 4 * 32
    assert lin["switch_step"] == k and lin["replay_fraction_realised"] == 0.0


def test_chain_and_config_errors():
    s = ScheduleConfig(kind="rewarm_cosine", max_lr=1e-3, warmup_steps=10)
    assert lr_at(0, 100, s) == pytest.approx(1e-4)                   # standalone: its own min
    assert lr_at(0, 100, chain(s, 5e-5)) == pytest.approx(5e-5)      # in a phase: previous
    assert chain(s.model_copy(update={"start_lr": 0.0}), 5e-5).start_lr == 0.0
    with pytest.raises(ValueError, match="previous"):
        chain(ScheduleConfig(max_lr="previous"), None)
    with pytest.raises(ValueError, match="chain"):
        lr_at(0, 10, ScheduleConfig(max_lr="previous"))
    with pytest.raises(ValidationError, match="max_lr must be > 0"):
        ScheduleConfig(max_lr=0.0)
    assert ScheduleConfig(max_lr="3e-4").max_lr == 3e-4              # YAML's 3e-4 is a string
    with pytest.raises(ValidationError, match="steps or tokens"):
        PhaseConfig(name="x", mixture={"a": 1}, steps=3, tokens=10)
    with pytest.raises(ValidationError, match="init_from"):
        ContinualConfig(phases=[PhaseConfig(name="a", mixture={"x": 1}, init_from="b"),
                                PhaseConfig(name="b", mixture={"x": 1})])
    with pytest.raises(ValidationError, match="exactly one"):
        SwitchConfig(mixture={"a": 1})
    cc = ContinualConfig(phases=[PhaseConfig(name="const", mixture={"x": 1}),
                                 PhaseConfig(name="anneal", mixture={"x": 1}),
                                 PhaseConfig(name="more", mixture={"x": 1}, init_from="const")])
    assert cc.parents() == {"const": "pretrain", "anneal": "const", "more": "const"}


# ---- evaluation across phases --------------------------------------------------------

def test_curves_across_branches_and_forgetting(shards, tmp_path):
    """Two branches from one pretrained model, validation every 2 steps: evaluate places
    each stage's val losses on the global step axis, measures the re-warm bump and the
    BPB change against the parent and against pretraining."""
    import math

    from pipeline.evaluate.config import EvaluateConfig
    from pipeline.evaluate.stage import run_evaluate

    cfg = tiny(steps=6, eval_every=2)
    pre = ctx(tmp_path, "pretrain")
    run_pretrain(cfg, shards, pre)
    hot = PhaseConfig(name="hot", steps=8, mixture={"german": 1.0}, replay=0.0, eval_every=2,
                      schedule=ScheduleConfig(kind="rewarm_cosine", max_lr=1e-2, warmup_steps=1))
    cold = PhaseConfig(name="cold", steps=8, mixture={"german": 1.0}, replay=0.0, eval_every=2,
                       schedule=ScheduleConfig(kind="constant", max_lr="previous", warmup_steps=0))
    a, b = ctx(tmp_path, "hot"), ctx(tmp_path, "cold")
    run_continual(hot, cfg, shards, pre.out_dir, a)
    run_continual(cold, cfg, shards, pre.out_dir, b)
    models = {"pretrain": pre.out_dir, "continual.hot": a.out_dir, "continual.cold": b.out_dir}
    parents = {"continual.hot": "pretrain", "continual.cold": "pretrain"}
    ev = ctx(tmp_path, "eval")
    m = run_evaluate(EvaluateConfig(max_tokens_per_source=1500), models, shards, ev,
                     parents=parents)
    rows = json.loads((ev.out_dir / "tables" / "curves.json").read_text())
    steps = {lab: sorted({r["global_step"] for r in rows if r["model"] == lab}) for lab in models}
    assert steps["pretrain"] == [2, 4, 6]
    assert steps["continual.hot"] == steps["continual.cold"] == [8, 10, 12, 14]
    pre_last = read_log(pre.out_dir)[-1]["val_loss.web"]
    hot_vals = [r["val_loss"] for r in rows if r["model"] == "continual.hot" and r["source"] == "web"]
    assert m["rewarm_bump.continual.hot.web"] == pytest.approx(max(hot_vals[:1]) - pre_last, abs=1e-4)
    for lab in ("continual.hot", "continual.cold"):
        for src in ("web", "german"):
            assert m[f"delta_bpb.{lab}.{src}"] == pytest.approx(
                m[f"bpb.{lab}.{src}"] - m[f"bpb.pretrain.{src}"])
            assert math.isfinite(m[f"vs_pretrain.{lab}.{src}"])
    for plot in ("curves.png", "forgetting.png", "bpb.png"):
        assert (ev.out_dir / "plots" / plot).is_file()
    tokens = json.loads((ev.out_dir / "bpb.json").read_text())["tokens"]
    assert sum(tokens["continual.hot"].values()) == 14 * 4 * 32


def test_findings_check_the_claim_against_the_numbers(tmp_path):
    from pipeline.evaluate.findings import claims, evaluate_dir
    from pipeline.spec import load_spec

    from conftest import REPO

    spec = load_spec(REPO / "configs" / "papers" / "replay.yaml")
    assert evaluate_dir(spec, tmp_path).parent == tmp_path / "evaluate"
    old, new = ["docs", "web"], ["code"]

    def metrics(fg0, fg5, fg25):
        out = {}
        for lab, v in (("replay_0", fg0), ("replay_5", fg5), ("replay_25", fg25)):
            out.update({f"vs_pretrain.continual.{lab}.docs": v, f"vs_pretrain.continual.{lab}.web": v,
                        f"vs_pretrain.continual.{lab}.code": -1.0})
        return out

    ((_, ok, nums),) = claims("paper_replay", spec, metrics(0.3, 0.2, 0.1), old, new)
    assert ok and "replay 0.25: +0.100" in nums
    ((_, ok, _),) = claims("paper_replay", spec, metrics(0.3, 0.35, 0.1), old, new)
    assert not ok
