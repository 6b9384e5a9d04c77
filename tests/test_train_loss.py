"""The chunked cross-entropy equals the full one (loss and every gradient) and never keeps
``[N, V]`` logits for backward; the global batch in tokens sets the batch and gradient
accumulation; activation checkpointing computes the same run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.stage import StageContext
from pipeline.train.config import ModelConfig, ScheduleConfig, TrainConfig
from pipeline.train.model import CausalLMLoss, build_model, chunked_cross_entropy
from pipeline.train.stage import read_log, run_pretrain
from test_train_data import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("chunk,bias", [(7, False), (64, True), (1000, False)])
def test_chunked_cross_entropy_equals_full(chunk, bias):
    torch.manual_seed(0)
    n, d, v = 50, 16, 97
    h = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(v, dtype=torch.float64, requires_grad=True) if bias else None
    y = torch.randint(0, v, (n,))
    y[3] = -100                                    # ignored position
    full = F.cross_entropy(F.linear(h, w, b), y, ignore_index=-100)
    g_full = torch.autograd.grad(full * 3.0, [t for t in (h, w, b) if t is not None])
    mine = chunked_cross_entropy(h, w, b, y, chunk=chunk)
    g_mine = torch.autograd.grad(mine * 3.0, [t for t in (h, w, b) if t is not None])
    torch.testing.assert_close(mine, full, rtol=1e-10, atol=1e-12)
    for a, e in zip(g_mine, g_full):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)
    assert g_mine[0][3].abs().sum() == 0           # the ignored token gets no gradient
    with torch.no_grad():                          # eval: no gradients are computed
        assert float(chunked_cross_entropy(h, w, b, y, chunk=chunk)) == pytest.approx(float(full))


def _saved_numels(fn) -> list[int]:
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().backward()
    return sizes


@pytest.mark.parametrize("family,tied", [("llama", True), ("gpt2", False)])
def test_loss_module_matches_hf_loss_and_keeps_no_full_logits(family, tied):
    cfg = ModelConfig(family=family, d_model=32, n_layers=1, n_heads=2, seq_len=64,
                      tie_embeddings=tied)
    vocab, rows = 1000, torch.randint(0, 1000, (4, 65))
    model = build_model(cfg, vocab, seed=0, attention="eager")
    chunked, full = CausalLMLoss(model, chunk=16), CausalLMLoss(model, chunk=0)
    assert chunked.chunked and not full.chunked
    ref = model(input_ids=rows[:, :-1], labels=rows[:, :-1]).loss   # HF shifts internally
    expect = F.cross_entropy(model(input_ids=rows[:, :-1]).logits.reshape(-1, vocab),
                             rows[:, 1:].reshape(-1))
    torch.testing.assert_close(full(rows), expect)
    torch.testing.assert_close(chunked(rows), expect, rtol=1e-5, atol=1e-6)
    assert ref.shape == ()

    grads = {}
    for name, mod in (("chunked", chunked), ("full", full)):
        model.zero_grad()
        mod(rows).backward()
        grads[name] = {k: p.grad.clone() for k, p in model.named_parameters()}
    for k in grads["full"]:
        torch.testing.assert_close(grads["chunked"][k], grads["full"][k], rtol=1e-4, atol=1e-6)

    n_tokens = 4 * 64
    assert max(_saved_numels(lambda: full(rows))) >= n_tokens * vocab      # full logits kept
    assert max(_saved_numels(lambda: chunked(rows))) < n_tokens * vocab // 4


def test_activation_checkpointing_keeps_fewer_activations():
    from pipeline.train.model import enable_activation_checkpointing

    cfg = ModelConfig(d_model=32, n_layers=3, n_heads=2, seq_len=64)
    rows = torch.randint(0, 300, (2, 65))
    plain = CausalLMLoss(build_model(cfg, 300, seed=0, attention="eager"), chunk=16).train()
    ckpt = CausalLMLoss(build_model(cfg, 300, seed=0, attention="eager"), chunk=16).train()
    enable_activation_checkpointing(ckpt.lm)
    n_plain, n_ckpt = sum(_saved_numels(lambda: plain(rows))), sum(_saved_numels(lambda: ckpt(rows)))
    assert n_ckpt < 0.6 * n_plain, (n_ckpt, n_plain)
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def tiny(**kw) -> TrainConfig:
    base = dict(model=ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64),
                steps=4, batch_size=8, seq_len=32, num_workers=0, log_every=1,
                eval_every=0, checkpoint_every=0, val_tokens_per_source=128,
                mixture={"shakespeare": 1, "web": 1},
                schedule=ScheduleConfig(max_lr=3e-3, warmup_steps=1))
    base.update(kw)
    return TrainConfig(**base)


def test_batch_tokens_accumulation_and_activation_checkpointing(shards, tmp_path):
    a = StageContext.for_testing(tmp_path / "a", show_progress=False)
    b = StageContext.for_testing(tmp_path / "b", show_progress=False)
    ma = run_pretrain(tiny(), shards, a)
    # 256 tokens / context 32 = the same 8 sequences, in 4 micro-batches of 2, recomputed
    mb = run_pretrain(tiny(batch_size=1, batch_tokens=256, micro_batch_size=2,
                           activation_checkpointing=True), shards, b)
    assert (ma["batch_size"], ma["grad_accum_steps"]) == (8, 1)
    assert (mb["batch_size"], mb["grad_accum_steps"]) == (8, 4)
    assert mb["tokens_seen"] == ma["tokens_seen"] == 4 * 256
    la, lb = [r["loss"] for r in read_log(a.out_dir)], [r["loss"] for r in read_log(b.out_dir)]
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="batch_tokens=100 is not a multiple of the context 32"):
        run_pretrain(tiny(batch_tokens=100), shards,
                     StageContext.for_testing(tmp_path / "c", show_progress=False))
