"""GPU check (NOT YET RUN: this task had no GPU; nothing in CI depends on it).

A GPT-2 124M-sized model (d=768, L=12, 12 heads, T=1024, vocab 50304) for ~200 steps
through forgeflow's own loop on one GPU: bf16 autocast, SDPA (flash) attention,
torch.compile per block, fused AdamW, chunked cross-entropy; then the same with Ray Train
(1 worker, NCCL). Prints tokens/s and MFU (6N + 12LdT FLOPs/token over the GPU's dense
bf16 peak). Data: random tokens in Megatron shards (throughput does not depend on them).

    python bench/train_gpu.py [steps] [micro_batch]
"""
import json, sys, tempfile, time
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import numpy as np
import torch
from pipeline.stage import StageContext
from pipeline.tokenize.config import TokenizerConfig
from pipeline.tokenize.megatron import RollingShardWriter, token_dtype
from pipeline.tokenize.tokenizer import save_hf, train_bpe
from pipeline.train.config import ModelConfig, ScheduleConfig, TrainConfig
from pipeline.train.stage import run_pretrain

assert torch.cuda.is_available(), "bench/train_gpu.py needs a CUDA GPU"
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
MICRO = int(sys.argv[2]) if len(sys.argv) > 2 else 16
VOCAB, T = 50304, 1024
root = Path(tempfile.mkdtemp(prefix="ff-gpu-"))
d = root / "shards"
# a tokenizer with VOCAB entries is only needed for its size and EOS: pad a tiny BPE
tcfg = TokenizerConfig(vocab_size=300, special_tokens=["<|endoftext|>"] +
                       [f"<|pad{i}|>" for i in range(VOCAB - 300)])
save_hf(train_bpe(["hello world"] * 10, tcfg), d / "tokenizer", tcfg)
rng = np.random.default_rng(0)
for split, n in (("train", 50_000_000), ("val", 200_000)):
    w = RollingShardWriter(d / "synthetic" / split, f"synthetic_{split}", token_dtype(VOCAB), 1 << 30)
    for i in range(0, n, 1_000_000):
        w.add_document(rng.integers(0, VOCAB, 1_000_000), 4_000_000)
    w.close()
(d / "stats.json").write_text("{}")

def cfg(workers, **kw):
    return TrainConfig(model=ModelConfig(family="gpt2", d_model=768, n_layers=12, n_heads=12,
                                         seq_len=T, tie_embeddings=True),
                       steps=STEPS, batch_size=MICRO * 2, micro_batch_size=MICRO, seq_len=T,
                       precision="bf16", use_gpu=True, compile=True, num_workers=workers,
                       log_every=20, eval_every=0, checkpoint_every=0, val_tokens_per_source=0,
                       log_model=False, schedule=ScheduleConfig(max_lr=6e-4, warmup_steps=20), **kw)

for workers in (0, 1):
    out = root / f"out{workers}"
    t = time.time()
    m = run_pretrain(cfg(workers), d, StageContext.for_testing(out, show_progress=True))
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()][20:]
    med = sorted(r["tokens_per_s"] for r in log)[len(log) // 2]
    mfu = sorted(r.get("mfu", 0) for r in log)[len(log) // 2]
    print(f"workers={workers}: {m['params']/1e6:.1f}M params, median {med:,.0f} tok/s, MFU {mfu:.1%}, "
          f"peak mem {m['peak_mem_mb']:,.0f} MiB, wall {time.time() - t:.0f}s, loss {m['final_loss']:.3f}")
