"""Throughput, same config, same machine, same run (ratios, not absolute numbers):

1. forgeflow's loop in one process vs a bare PyTorch loop of the same model, data,
   batch and optimizer (target >= 0.9x): what the loop's bookkeeping costs
   (chunked loss, guards, logging, checkpoints off);
2. forgeflow with the full-logit loss (loss_chunk_tokens: 0) vs the chunked one;
3. Ray Train with 2 workers vs one process: what Ray adds (start-up, DDP all-reduce);
4. evaluation BPB batched vs one window at a time.

    .venv/bin/python bench/train.py [steps]     # reads real text from ../shared/data
"""
import sys, time, json, shutil, tempfile
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests")); sys.path.insert(0, str(REPO))
import numpy as np
import torch
import torch.nn.functional as F
from test_train_data import make_shards
from pipeline.stage import StageContext
from pipeline.tokenize.mixture import MixtureSampler
from pipeline.tokenize.reader import open_shards
from pipeline.tokenize.tokenizer import load_tokenizer
from pipeline.train.config import TrainConfig, ModelConfig, ScheduleConfig
from pipeline.train.loop import make_optimizer
from pipeline.train.model import build_model
from pipeline.train.schedules import lr_at
from pipeline.train.stage import resolve_mixture, run_pretrain
from pipeline.engine import ensure_ray
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
root = Path(tempfile.mkdtemp(prefix="ff-bench-train-")); d = make_shards(root / "tok")
def cfg(w, **kw): return TrainConfig(model=ModelConfig(d_model=128, n_layers=4, n_heads=4, seq_len=128),
    steps=STEPS, batch_size=16, num_workers=w, log_every=10, eval_every=0, checkpoint_every=0,
    val_tokens_per_source=512, schedule=ScheduleConfig(max_lr=2e-3, warmup_steps=3), log_model=False, **kw)
def median(xs): xs = sorted(xs); return xs[len(xs) // 2]

def bare(c: TrainConfig) -> tuple[float, float]:
    """The same model, rows, AdamW and schedule in a plain PyTorch loop (full logits)."""
    torch.set_num_threads(c.cpus_per_worker)
    shards = open_shards(d)
    mix = resolve_mixture(c.mixture, shards)
    sampler = MixtureSampler({s: shards[s]["train"] for s in mix}, mix, c.context, c.seed)
    _, eos, vocab = load_tokenizer(d / "tokenizer")
    model = build_model(c.model, vocab, eos, seed=c.seed); model.train()
    opt = make_optimizer(model, c, torch.device("cpu"))
    rates, loss = [], None
    for step in range(c.steps):
        t0 = time.perf_counter()
        for g in opt.param_groups: g["lr"] = lr_at(step, c.steps, c.schedule)
        rows = torch.from_numpy(sampler.rank_batch(step, c.batch_size, 0, 1))
        logits = model(input_ids=rows[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1))
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        rates.append(c.batch_size * c.context / (time.perf_counter() - t0))
    return median(rates[5:]), float(loss)

def forgeflow(w, tag, **kw):
    out = root / f"out-{tag}"; shutil.rmtree(out, ignore_errors=True)
    ctx = StageContext.for_testing(out, show_progress=False)
    t = time.time(); m = run_pretrain(cfg(w, **kw), d, ctx); wall = time.time() - t
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    return median(r["tokens_per_s"] for r in log[5:]), wall, m["final_loss"]

ensure_ray(num_cpus=2)
b_tok, b_loss = bare(cfg(0))
f_tok, f_wall, f_loss = forgeflow(0, "solo")
full_tok, _, _ = forgeflow(0, "full-logits", loss_chunk_tokens=0)
r_tok, r_wall, r_loss = forgeflow(2, "ray2")
print(f"bare PyTorch loop:            {b_tok:,.0f} tok/s (median step), final loss {b_loss:.4f}")
print(f"forgeflow, 1 process:         {f_tok:,.0f} tok/s, wall {f_wall:.1f}s, final loss {f_loss:.4f}"
      f"  -> {f_tok / b_tok:.2f}x the bare loop")
print(f"forgeflow, full-logit loss:   {full_tok:,.0f} tok/s  -> chunked/full {f_tok / full_tok:.2f}x")
print(f"forgeflow, Ray Train 2 CPU workers (DDP/Gloo): {r_tok:,.0f} tok/s, wall {r_wall:.1f}s, "
      f"final loss {r_loss:.4f}  -> {r_tok / f_tok:.2f}x step throughput, {r_wall / f_wall:.2f}x wall of 1 process")
res = {0: (f_wall, f_tok, f_loss)}
# eval batching
from pipeline.evaluate.bpb import bits_per_byte
from pipeline.tokenize.reader import open_shards
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(str(root / "out-solo" / "hf")); m.eval()
val = open_shards(d)["shakespeare"]["val"]
for bs in (1, 16):
    t = time.time(); r = bits_per_byte(m, val, 0, seq_len=128, max_tokens=8000, batch_size=bs); dt = time.time() - t
    print(f"bpb batch_size={bs}: {r.tokens / dt:,.0f} tok/s, bpb {r.bpb:.4f}")
