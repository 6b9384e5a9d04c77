"""Checkpoints (retention, atomicity, RNG, intermediate HF exports) and the step guards
(non-finite steps skipped and logged, a run of them stops the run, loss spikes logged),
with the metrics batched into a real MLflow store."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.stage import StageContext
from pipeline.tokenize.reader import open_shards
from pipeline.train.config import ModelConfig, ScheduleConfig, TrainConfig
from pipeline.train.loop import (_rng_state, _set_rng_state, checkpoint_steps, latest_checkpoint,
                                 load_checkpoint, train_worker)
from pipeline.train.stage import loop_spec, read_log, resolve_mixture, run_pretrain
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def tiny(**kw) -> TrainConfig:
    base = dict(model=ModelConfig(d_model=32, n_layers=1, n_heads=2, seq_len=64),
                steps=8, batch_size=4, seq_len=32, num_workers=0, log_every=4,
                eval_every=0, checkpoint_every=1, keep_last=2, keep_every=4,
                val_tokens_per_source=64, mixture={"shakespeare": 1},
                schedule=ScheduleConfig(max_lr=3e-3, warmup_steps=1))
    base.update(kw)
    return TrainConfig(**base)


def spec_for(cfg, shards, out, **extra):
    mixture = resolve_mixture(cfg.mixture, open_shards(shards))
    return {**loop_spec(cfg, shards, out, name="t", mixture=mixture, schedule=cfg.schedule,
                        steps=cfg.steps, show_progress=False), **extra}


def test_retention_atomic_layout_and_hf_exports(shards, tmp_path):
    ctx = StageContext.for_testing(tmp_path / "run", show_progress=False)
    run_pretrain(tiny(export_hf_every=4), shards, ctx)
    out = ctx.out_dir
    # last 2 (7, 8) + every multiple of keep_every=4 (4, 8); 1-3, 5, 6 deleted
    assert checkpoint_steps(out) == [4, 7, 8]
    assert latest_checkpoint(out).name == "step-00000008"
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["latest"] == "step-00000008"
    assert not list((out / "checkpoint").glob(".tmp-*"))
    for step in (4, 7, 8):
        d = out / "checkpoint" / f"step-{step:08d}"
        assert {p.name for p in d.iterdir()} == {"state.pt", "config.json", "meta.json",
                                                 "rng-rank0.pt"}
        state = load_checkpoint(d)
        assert state["step"] == step and "state" in state["optimizer"]
    # an intermediate HF export at step 4 holds exactly the step-4 weights
    from transformers import AutoModelForCausalLM

    hf4 = AutoModelForCausalLM.from_pretrained(str(out / "hf-step-00000004"))
    ck4 = load_checkpoint(out / "checkpoint" / "step-00000004")["model"]
    for k, v in hf4.state_dict().items():
        assert torch.equal(v, ck4[k]), k
    assert (out / "hf-step-00000004" / "tokenizer.json").is_file()
    assert not (out / "hf-step-00000008").exists()        # the final export is hf/


def test_half_written_checkpoint_is_ignored_and_resume_is_bitwise(shards, tmp_path):
    full = StageContext.for_testing(tmp_path / "full", show_progress=False)
    run_pretrain(tiny(), shards, full)

    out = tmp_path / "killed"
    assert train_worker(spec_for(tiny(), shards, out, halt_after_step=5)) is None
    # a kill in the middle of writing step 6: the temp dir exists, is not a checkpoint
    (out / "checkpoint" / ".tmp-step-00000006").mkdir()
    (out / "checkpoint" / ".tmp-step-00000006" / "state.pt").write_bytes(b"truncated")
    assert latest_checkpoint(out).name == "step-00000005"
    ctx = StageContext.for_testing(out, show_progress=False)
    m = run_pretrain(tiny(), shards, ctx)
    assert m["resumed_from_step"] == 5
    a = load_file(str(full.out_dir / "hf" / "model.safetensors"))
    b = load_file(str(out / "hf" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_log(out)] == [r["loss"] for r in read_log(full.out_dir)]


def test_rng_state_round_trips():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    st = _rng_state()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    _set_rng_state(st)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1])
    assert got[2] == expect[2]


def test_nan_step_is_skipped_and_logged_spikes_logged_batched_to_mlflow(shards, tmp_path,
                                                                        monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import Tracker

    calls = []
    orig = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), *a, **kw):
        calls.append(len(metrics))
        return orig(self, run_id, metrics=metrics, *a, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "guard-test")
    parent = tracker.start_parent("test", {}, {})
    run = tracker.start_stage(parent, "pretrain", "pretrain", "id")
    out = tmp_path / "nan"
    cfg = tiny(keep_last=10, keep_every=0)
    # step index 2 (the 3rd step) has a NaN loss; step index 6 a 10x loss (a spike)
    train_worker(spec_for(cfg, shards, out, inject_loss_scale={2: float("nan"), 6: 10.0},
                          tracking_uri=tracker.client.tracking_uri, run_id=run.run_id))
    log = read_log(out)
    assert log[2].get("skipped") == 1 and not any(r.get("skipped") for i, r in enumerate(log) if i != 2)
    assert log[6].get("loss_spike") == 1 and sum(r.get("loss_spike", 0) for r in log) == 1
    # the skipped step did not change the weights; the others did
    w2 = load_checkpoint(out / "checkpoint" / "step-00000002")["model"]
    w3 = load_checkpoint(out / "checkpoint" / "step-00000003")["model"]
    w4 = load_checkpoint(out / "checkpoint" / "step-00000004")["model"]
    assert all(torch.equal(w2[k], w3[k]) for k in w2)
    assert not all(torch.equal(w3[k], w4[k]) for k in w3)
    assert all(torch.isfinite(v).all() for v in w4.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["loss_spikes"] == 1
    # batched: 8 steps, log_every=4 -> flushes after steps 1, 4, 8 (not one call a step)
    assert 1 <= len(calls) <= 3 and sum(calls) > 8 * 5
    client = tracker.client
    skipped = {m.step: m.value for m in client.get_metric_history(run.run_id, "skipped_steps")}
    assert skipped[2] == 0 and skipped[3] == 1 and skipped[8] == 1
    assert client.get_metric_history(run.run_id, "peak_mem_mb.rank0")[0].value > 10
    # the NaN loss itself is not a number MLflow can plot: the skipped step has no "loss"
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "loss")) == [1, 2, 4, 5, 6, 7, 8]


def test_consecutive_nan_steps_stop_the_run_clearly(shards, tmp_path):
    cfg = tiny(max_bad_steps=3, checkpoint_every=0)
    with pytest.raises(FloatingPointError, match=r"3 training steps in a row \(the last is step 4\)"):
        train_worker(spec_for(cfg, shards, tmp_path / "o",
                              inject_loss_scale={1: float("nan"), 2: float("inf"), 3: float("nan")}))
    # two in a row with max_bad_steps=3 is survivable
    m = train_worker(spec_for(cfg, shards, tmp_path / "p",
                              inject_loss_scale={1: float("nan"), 2: float("nan")}))
    assert m["skipped_steps"] == 2 and np.isfinite(m["final_loss"])
