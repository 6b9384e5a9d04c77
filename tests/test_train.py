"""Pretraining and continual pretraining on the single-process path (``num_workers: 0``):
exact resume, gradient accumulation, re-warm + replay, outputs that load in transformers.
The Ray Train path is in tests/test_train_ray.py."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from pipeline.stage import StageContext
from pipeline.tokenize.reader import open_shards
from pipeline.train.config import (ContinualConfig, ModelConfig, PhaseConfig, ScheduleConfig,
                                   TrainConfig)
from pipeline.train.loop import train_worker, val_windows
from pipeline.train.model import build_model, count_params, flops_per_token
from pipeline.train.schedules import lr_at
from pipeline.train.stage import (blend_mixture, loop_spec, read_log, resolve_mixture,
                                  run_continual, run_pretrain)
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


def tiny(**kw) -> TrainConfig:
    base = dict(model=ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64),
                steps=6, batch_size=4, seq_len=32, num_workers=0, log_every=1,
                eval_every=3, checkpoint_every=2, val_tokens_per_source=256,
                mixture={"shakespeare": 3, "web": 1},
                schedule=ScheduleConfig(max_lr=3e-3, warmup_steps=2))
    base.update(kw)
    return TrainConfig(**base)


def weights(out_dir) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "hf" / "model.safetensors"))


def test_pretrain_outputs_and_exact_resume(shards, tmp_path):
    cfg = tiny()
    full = StageContext.for_testing(tmp_path / "full", show_progress=False)
    m_full = run_pretrain(cfg, shards, full)

    # A run killed after step 3: the last checkpoint is step 2, step 3 is lost.
    killed = StageContext.for_testing(tmp_path / "killed", show_progress=False)
    mixture = resolve_mixture(cfg.mixture, open_shards(shards))
    spec = loop_spec(cfg, shards, killed.out_dir, name="killed", mixture=mixture,
                     schedule=cfg.schedule, steps=cfg.steps, show_progress=False)
    assert train_worker({**spec, "halt_after_step": 3}) is None
    assert json.loads((killed.out_dir / "checkpoint" / "meta.json").read_text())["step"] == 2
    assert not (killed.out_dir / "hf").exists()
    # The runner starts the stage again on the same out_dir: it resumes at step 2.
    m_resumed = run_pretrain(cfg, shards, killed)
    assert m_resumed["resumed_from_step"] == 2

    a, b = weights(full.out_dir), weights(killed.out_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert m_resumed["final_loss"] == m_full["final_loss"]
    # the log has every step exactly once, and the same losses
    log_full, log_res = read_log(full.out_dir), read_log(killed.out_dir)
    assert [r["step"] for r in log_res] == list(range(1, 7))
    assert [r["loss"] for r in log_res] == [r["loss"] for r in log_full]
    assert [r["lr"] for r in log_full] == [lr_at(s, 6, cfg.schedule) for s in range(6)]

    # outputs
    out = full.out_dir
    for f in ("checkpoint/step-00000006/state.pt", "train_log.jsonl", "mixture.json", "summary.json",
              "plots/loss.png", "plots/lr.png", "hf/config.json", "hf/tokenizer.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "mixture.json").read_text()) == {"shakespeare": 0.75, "web": 0.25}
    assert m_full["tokens_seen"] == 6 * 4 * 32
    assert m_full["params"] > 0 and m_full["tokens_per_s"] > 0
    assert set(k for k in m_full if k.startswith("final_val_loss.")) == {
        "final_val_loss.shakespeare", "final_val_loss.web", "final_val_loss.german"}
    assert "val_loss.web" in log_full[2] and "val_loss.web" not in log_full[1]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out / "hf"))
    tok = AutoTokenizer.from_pretrained(str(out / "hf"))
    ids = tok("To be, or not to be", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert type(model).__name__ == "LlamaForCausalLM"


def test_resume_refuses_a_different_config(shards, tmp_path):
    ctx = StageContext.for_testing(tmp_path / "o", show_progress=False)
    run_pretrain(tiny(steps=2), shards, ctx)
    with pytest.raises(ValueError, match="different training config"):
        run_pretrain(tiny(steps=2, seed=7), shards, ctx)


def test_loss_decreases_and_micro_batches_match_full_batch(shards, tmp_path):
    """Gradient accumulation over micro-batches computes the same update as one batch."""
    cfg = tiny(steps=12, batch_size=8, checkpoint_every=0, eval_every=0,
               schedule=ScheduleConfig(max_lr=5e-3, warmup_steps=2))
    a = StageContext.for_testing(tmp_path / "a", show_progress=False)
    b = StageContext.for_testing(tmp_path / "b", show_progress=False)
    run_pretrain(cfg, shards, a)
    run_pretrain(cfg.model_copy(update={"micro_batch_size": 2}), shards, b)
    la, lb = read_log(a.out_dir), read_log(b.out_dir)
    assert np.mean([r["loss"] for r in la[-3:]]) < la[0]["loss"] - 0.3
    np.testing.assert_allclose([r["loss"] for r in la], [r["loss"] for r in lb], rtol=1e-4)
    wa, wb = weights(a.out_dir), weights(b.out_dir)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)


def test_continual_rewarm_replay_and_init(shards, tmp_path):
    pre = StageContext.for_testing(tmp_path / "pre", show_progress=False)
    cfg = tiny(steps=16, checkpoint_every=0)
    run_pretrain(cfg, shards, pre)
    prev_mix = json.loads((pre.out_dir / "mixture.json").read_text())

    phase = PhaseConfig(name="german", steps=20, mixture={"german": 1.0}, replay=0.1,
                        schedule=ScheduleConfig(kind="rewarm_cosine", max_lr=2e-3,
                                                warmup_fraction=0.1),
                        load_optimizer=True)
    ctx = StageContext.for_testing(tmp_path / "cont", name="continual.german",
                                   show_progress=False)
    m = run_continual(phase, cfg, shards, pre.out_dir, ctx, prev_mix)

    mix = json.loads((ctx.out_dir / "mixture.json").read_text())
    assert mix == pytest.approx({"german": 0.9, "shakespeare": 0.075, "web": 0.025})
    log = read_log(ctx.out_dir)
    lrs = [r["lr"] for r in log]
    # re-warm starts where pretraining ended (its cosine floor, 0.1 * 3e-3), not at the
    # phase's own floor (Gupta et al. 2023)
    assert lrs[0] == pytest.approx(3e-4)
    assert lrs[2] == pytest.approx(2e-3)            # peak at the new max after 10% of 20
    assert max(lrs) == pytest.approx(2e-3)
    assert lrs[-1] > 2e-4 and lr_at(20, 20, phase.schedule) == pytest.approx(2e-4)
    # it started from the pretrained weights, not from scratch (a fresh model is ~uniform)
    first_fresh = read_log(pre.out_dir)[0]["loss"]
    assert first_fresh == pytest.approx(math.log(512), abs=0.1)
    assert log[0]["loss"] < first_fresh - 0.15
    # and it adapted to German
    assert m["final_val_loss.german"] < json.loads(
        (pre.out_dir / "summary.json").read_text())["final_val_loss.german"]
    assert (ctx.out_dir / "hf" / "model.safetensors").is_file()
    assert (ctx.out_dir / "plots" / "lr.png").is_file()
    assert m["steps"] == 20


def test_mixture_resolution_and_blending(shards):
    sets = open_shards(shards)
    by_tokens = resolve_mixture({}, sets)
    total = sum(s["train"].n_tokens for s in sets.values())
    assert by_tokens["web"] == pytest.approx(sets["web"]["train"].n_tokens / total)
    with pytest.raises(ValueError, match="unknown source"):
        resolve_mixture({"klingon": 1.0}, sets)
    assert blend_mixture({"a": 1}, {"b": 3, "a": 1}, 0.2) == pytest.approx(
        {"a": 0.8 + 0.05, "b": 0.15})
    assert blend_mixture({"a": 2}, {"b": 1}, 0.0) == {"a": 1.0}


def test_gpt2_family_trains_and_loads(shards, tmp_path):
    ctx = StageContext.for_testing(tmp_path / "g", show_progress=False)
    cfg = tiny(steps=2, model=ModelConfig(family="gpt2", d_model=64, n_layers=1, n_heads=2,
                                          seq_len=64, tie_embeddings=False))
    run_pretrain(cfg, shards, ctx)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ctx.out_dir / "hf"))
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.n_positions == 64


def test_flops_per_token_formula():
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=128, tie_embeddings=True)
    m = build_model(cfg, vocab_size=1000)
    n = count_params(m)
    # tied: every parameter but the embedding look-up, plus the tied output matmul
    assert flops_per_token(m, cfg, 128) == 6 * n + 12 * 2 * 64 * 128
    cfg_u = cfg.model_copy(update={"tie_embeddings": False})
    mu = build_model(cfg_u, vocab_size=1000)
    assert flops_per_token(mu, cfg_u, 128) == 6 * (count_params(mu) - 1000 * 64) + 12 * 2 * 64 * 128


def test_val_windows_are_fixed_and_in_range():
    w = val_windows(1000, 32, 256)
    assert len(w) == 8 and w[0][0] == 0 and w[-1][0] + w[-1][1] == 1000
    assert val_windows(1000, 32, 256) == w
    assert val_windows(10, 32, 256) == [(0, 10)]
    assert val_windows(1, 32, 256) == []


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValidationError, match="exceeds"):
        TrainConfig(model=ModelConfig(seq_len=64), seq_len=128)
    with pytest.raises(ValidationError, match="no phases"):
        ContinualConfig(enabled=True)
    with pytest.raises(ValidationError, match="negative"):
        TrainConfig(mixture={"a": -1.0})
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(stepz=3)
    # resources are not identity
    assert tiny().identity_dict() == tiny(num_workers=4, micro_batch_size=2).identity_dict()
    assert tiny().identity_dict() != tiny(seed=1).identity_dict()


def test_continual_without_previous_mixture_replays_the_recorded_one(shards, tmp_path):
    pre = StageContext.for_testing(tmp_path / "pre", show_progress=False)
    cfg = tiny(steps=1, mixture={}, checkpoint_every=0, eval_every=0)   # weighted by tokens
    run_pretrain(cfg, shards, pre)
    recorded = json.loads((pre.out_dir / "mixture.json").read_text())
    assert set(recorded) == {"shakespeare", "web", "german"}
    phase = PhaseConfig(name="g", steps=1, mixture={"german": 1.0}, replay=0.2)
    ctx = StageContext.for_testing(tmp_path / "c", show_progress=False)
    run_continual(phase, cfg, shards, pre.out_dir, ctx, {})
    mix = json.loads((ctx.out_dir / "mixture.json").read_text())
    assert mix["german"] == pytest.approx(0.8 + 0.2 * recorded["german"])
    assert mix["web"] == pytest.approx(0.2 * recorded["web"])


def test_killed_after_final_checkpoint_still_delivers(shards, tmp_path):
    """A kill between the final checkpoint and hf/: the restart only writes the outputs."""
    ctx = StageContext.for_testing(tmp_path / "o", show_progress=False)
    first = run_pretrain(tiny(steps=2), shards, ctx)
    before = weights(ctx.out_dir)
    shutil.rmtree(ctx.out_dir / "hf")
    (ctx.out_dir / "summary.json").unlink()
    again = run_pretrain(tiny(steps=2), shards, ctx)
    assert again["resumed_from_step"] == 2
    assert again["final_loss"] == first["final_loss"]
    assert again["final_val_loss.web"] == pytest.approx(first["final_val_loss.web"])
    after = weights(ctx.out_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(read_log(ctx.out_dir)) == 2
