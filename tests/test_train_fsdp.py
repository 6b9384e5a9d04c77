"""FSDP2 (``fully_shard`` per block + root) on CPU with Gloo and 2 Ray Train workers: the
same loss curve as DDP, sharded checkpoints written by every rank (torch.distributed
.checkpoint), a sharded resume that ends on the same weights, and an HF export gathered
from the shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.stage import StageContext
from pipeline.tokenize.reader import open_shards
from pipeline.train.config import ModelConfig, ScheduleConfig, TrainConfig
from pipeline.train.loop import latest_checkpoint, load_checkpoint
from pipeline.train.stage import _fit_ray, loop_spec, read_log, resolve_mixture, run_pretrain
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory, ray_local):
    """One unkilled DDP run, shared by the tests that compare against it (each Ray Train
    worker group start costs tens of seconds on 2 cores)."""
    ctx = StageContext.for_testing(tmp_path_factory.mktemp("ddp") / "out", show_progress=False)
    run_pretrain(cfg_for("ddp"), shards, ctx)
    return ctx.out_dir


@pytest.fixture(scope="module")
def fsdp_run(shards, tmp_path_factory, ray_local):
    """One unkilled FSDP run, shared like ``ddp_run``; returns (out_dir, metrics)."""
    ctx = StageContext.for_testing(tmp_path_factory.mktemp("fsdp") / "out", show_progress=False)
    return ctx.out_dir, run_pretrain(cfg_for("fsdp"), shards, ctx)


def cfg_for(parallelism: str, **kw) -> TrainConfig:
    base = dict(model=ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64),
                steps=6, batch_size=8, seq_len=32, num_workers=2, log_every=2,
                eval_every=3, checkpoint_every=3, val_tokens_per_source=96,
                mixture={"shakespeare": 1, "web": 1}, parallelism=parallelism,
                schedule=ScheduleConfig(max_lr=5e-3, warmup_steps=1))
    base.update(kw)
    return TrainConfig(**base)


def test_fsdp_matches_ddp_on_cpu_gloo(ddp_run, fsdp_run):
    fsdp_dir, m = fsdp_run
    assert m["world_size"] == 2
    la, lb = read_log(ddp_run), read_log(fsdp_dir)
    np.testing.assert_allclose([r["loss"] for r in lb], [r["loss"] for r in la], rtol=1e-4)
    np.testing.assert_allclose([r["val_loss.web"] for r in lb if "val_loss.web" in r],
                               [r["val_loss.web"] for r in la if "val_loss.web" in r], rtol=1e-4)
    assert la[-1]["loss"] < la[0]["loss"]
    # the sharded checkpoint: every rank wrote its shard files, no full state in state.pt
    ck = latest_checkpoint(fsdp_dir)
    assert {p.name for p in (ck / "sharded").iterdir()} >= {"__0_0.distcp", "__1_0.distcp",
                                                            ".metadata"}
    state = load_checkpoint(ck)
    assert state["sharded"] and "model" not in state and state["step"] == 6
    assert {p.name for p in ck.iterdir()} >= {"rng-rank0.pt", "rng-rank1.pt"}
    # the final HF export is gathered from the shards: the same weights as DDP's
    a = load_file(str(ddp_run / "hf" / "model.safetensors"))
    b = load_file(str(fsdp_dir / "hf" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_fsdp_sharded_resume_ends_on_the_same_weights(shards, fsdp_run, tmp_path):
    out = StageContext.for_testing(tmp_path / "killed", show_progress=False)
    cfg = cfg_for("fsdp")
    mixture = resolve_mixture(cfg.mixture, open_shards(shards))
    spec = loop_spec(cfg, shards, out.out_dir, name="pretrain", mixture=mixture,
                     schedule=cfg.schedule, steps=cfg.steps, show_progress=False)
    _fit_ray({**spec, "halt_after_step": 4}, cfg, None)       # dies after step 4, ckpt at 3
    assert json.loads((out.out_dir / "checkpoint" / "meta.json").read_text())["step"] == 3
    m = run_pretrain(cfg, shards, out)
    assert m["resumed_from_step"] == 3
    a = load_file(str(fsdp_run[0] / "hf" / "model.safetensors"))
    b = load_file(str(out.out_dir / "hf" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(Exception, match=r"holds sharded \(FSDP\) state"):
        run_pretrain(cfg_for("ddp"), shards, out)     # DDP cannot read the shards


@pytest.mark.slow
def test_killed_worker_is_restarted_by_ray_from_the_last_checkpoint(shards, ddp_run, tmp_path):
    """train.max_failures: one worker process is SIGKILLed after step 4 (checkpoint at 3);
    Ray Train restarts the worker group, which resumes from step 3 and ends on exactly the
    weights of an unkilled run."""
    cfg = cfg_for("ddp", max_failures=1)
    out = tmp_path / "killed"
    mixture = resolve_mixture(cfg.mixture, open_shards(shards))
    spec = loop_spec(cfg, shards, out, name="pretrain", mixture=mixture,
                     schedule=cfg.schedule, steps=cfg.steps, show_progress=False)
    _fit_ray({**spec, "kill_rank_after_step": 4, "kill_rank": 1}, cfg, None)
    assert (out / ".killed").is_file()                       # the kill really happened
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 3
    a = load_file(str(ddp_run / "hf" / "model.safetensors"))
    b = load_file(str(out / "hf" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in read_log(out)] == list(range(1, 7))
