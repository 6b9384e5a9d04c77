"""The real thing: Ray Train ``TorchTrainer`` with 2 CPU workers (DDP over Gloo), metrics
into a real MLflow store (SQLite), and the same numbers as a single process — the data
order is a function of (seed, step), not of the world size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.stage import StageContext
from pipeline.train.config import ModelConfig, ScheduleConfig, TrainConfig
from pipeline.train.loop import train_worker
from pipeline.train.stage import loop_spec, read_log, resolve_mixture, run_pretrain
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def cfg_for(workers: int, **kw) -> TrainConfig:
    base = dict(model=ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64),
                steps=8, batch_size=8, seq_len=32, num_workers=workers, log_every=2,
                eval_every=4, checkpoint_every=4,
                val_tokens_per_source=96,   # 3 windows: uneven across 2 ranks
                mixture={"shakespeare": 1, "web": 1, "german": 1},
                schedule=ScheduleConfig(max_lr=5e-3, warmup_steps=2))
    base.update(kw)
    return TrainConfig(**base)


def mlflow_ctx(tmp_path, name="pretrain"):
    from pipeline.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "train-test")
    parent = tracker.start_parent("test", {}, {})
    run = tracker.start_stage(parent, name, "pretrain", "id")
    ctx = StageContext.for_testing(tmp_path / name, name=name, tracker=run, show_progress=False)
    return ctx, tracker.client, run.run_id


def test_ray_train_two_workers_matches_one_process(shards, tmp_path, ray_local):
    ctx, client, run_id = mlflow_ctx(tmp_path)
    metrics = run_pretrain(cfg_for(2), shards, ctx)
    assert metrics["world_size"] == 2

    # per-step metrics logged from rank 0 to the MLflow run, by explicit id
    loss_hist = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(loss_hist, key=lambda m: m.step)] == list(range(1, 9))
    for key in ("lr", "grad_norm", "tokens_per_s", "val_loss.german"):
        assert client.get_metric_history(run_id, key), key
    run = client.get_run(run_id)
    assert run.data.params["mix.german"] == str(round(1 / 3, 6))
    assert run.data.metrics["final_loss"] == pytest.approx(metrics["final_loss"])

    log = read_log(ctx.out_dir)
    losses = [r["loss"] for r in log]
    assert losses[-1] < losses[0] - 0.3

    # the same run in one process reads the same rows per step: same losses and weights
    solo = StageContext.for_testing(tmp_path / "solo", show_progress=False)
    run_pretrain(cfg_for(0), shards, solo)
    np.testing.assert_allclose(losses, [r["loss"] for r in read_log(solo.out_dir)], rtol=1e-4)
    a = load_file(str(ctx.out_dir / "hf" / "model.safetensors"))
    b = load_file(str(solo.out_dir / "hf" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ctx.out_dir / "hf"))
    assert model.config.num_hidden_layers == 2


@pytest.mark.slow
def test_resume_on_a_different_worker_count(shards, tmp_path, ray_local):
    """Killed after step 5 on one process (checkpoint at 4), resumed on 2 Ray workers:
    ends where an uninterrupted single-process run ends."""
    from pipeline.tokenize.reader import open_shards

    ref = StageContext.for_testing(tmp_path / "ref", show_progress=False)
    run_pretrain(cfg_for(0), shards, ref)

    out = StageContext.for_testing(tmp_path / "resumed", show_progress=False)
    cfg1 = cfg_for(0)
    mixture = resolve_mixture(cfg1.mixture, open_shards(shards))
    spec = loop_spec(cfg1, shards, out.out_dir, name="pretrain", mixture=mixture,
                     schedule=cfg1.schedule, steps=cfg1.steps, show_progress=False)
    train_worker({**spec, "halt_after_step": 5})
    m = run_pretrain(cfg_for(2), shards, out)
    assert m["resumed_from_step"] == 4 and m["world_size"] == 2
    assert json.loads((out.out_dir / "checkpoint" / "meta.json").read_text())["world_size"] == 2
    np.testing.assert_allclose([r["loss"] for r in read_log(out.out_dir)],
                               [r["loss"] for r in read_log(ref.out_dir)], rtol=1e-4)


def test_one_worker_runs_in_process_with_the_ray_losses(shards, tmp_path, ray_local):
    """``num_workers: 1`` on a local Ray runs the loop in this process (no worker group to
    start) and gives bit-for-bit the losses and weights of the same run on Ray Train."""
    import torch.distributed as dist
    from pipeline.tokenize.reader import open_shards
    from pipeline.train import stage as train_stage

    cfg = cfg_for(1)
    assert train_stage.in_process(cfg) and not train_stage.in_process(cfg_for(2))
    threads = torch.get_num_threads()
    local = StageContext.for_testing(tmp_path / "local", show_progress=False)
    m = run_pretrain(cfg, shards, local)
    assert m["world_size"] == 1 and not dist.is_initialized()
    assert torch.get_num_threads() == threads           # the process keeps its thread count

    out = tmp_path / "ray"
    mixture = resolve_mixture(cfg.mixture, open_shards(shards))
    spec = loop_spec(cfg, shards, out, name="pretrain", mixture=mixture, schedule=cfg.schedule,
                     steps=cfg.steps, show_progress=False)
    train_stage._fit_ray(spec, cfg, 2)                  # the same run on a Ray Train worker
    ray_log, local_log = read_log(out), read_log(local.out_dir)
    assert [r["loss"] for r in ray_log] == [r["loss"] for r in local_log]
    assert [r["grad_norm"] for r in ray_log] == [r["grad_norm"] for r in local_log]
    a = load_file(str(out / "hf" / "model.safetensors"))
    b = load_file(str(local.out_dir / "hf" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
