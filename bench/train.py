"""Throughput: single-process vs Ray Train 2 workers (same config, same machine, same run);
evaluation BPB batched vs one window at a time.

    .venv/bin/python bench/train.py        # reads real text from ../shared/data
"""
import sys, time, json, shutil, tempfile
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests")); sys.path.insert(0, str(REPO))
from test_train_data import make_shards
from pipeline.stage import StageContext
from pipeline.train.config import TrainConfig, ModelConfig, ScheduleConfig
from pipeline.train.stage import run_pretrain
from pipeline.engine import ensure_ray
root = Path(tempfile.mkdtemp(prefix="ff-bench-train-")); d = make_shards(root / "tok")
def cfg(w): return TrainConfig(model=ModelConfig(d_model=128, n_layers=4, n_heads=4, seq_len=128),
    steps=30, batch_size=16, num_workers=w, log_every=10, eval_every=0, checkpoint_every=0,
    val_tokens_per_source=512, schedule=ScheduleConfig(max_lr=2e-3, warmup_steps=3))
res = {}
ensure_ray(num_cpus=2)
for w in (0, 2):
    out = root / f"out{w}"; shutil.rmtree(out, ignore_errors=True)
    ctx = StageContext.for_testing(out, show_progress=False)
    t = time.time(); m = run_pretrain(cfg(w), d, ctx); wall = time.time() - t
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    steady = sorted(r["tokens_per_s"] for r in log[5:])[len(log[5:]) // 2]
    res[w] = (wall, steady, m["final_loss"])
    print(f"workers={w}: wall {wall:.1f}s, median step throughput {steady:,.0f} tok/s, final loss {m['final_loss']:.4f}")
print(f"ratio Ray-2-workers / single-process step throughput: {res[2][1] / res[0][1]:.2f}x; wall ratio {res[2][0] / res[0][0]:.2f}x")
# eval batching
from pipeline.evaluate.bpb import bits_per_byte
from pipeline.tokenize.reader import open_shards
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(str(root / "out0" / "hf")); m.eval()
val = open_shards(d)["shakespeare"]["val"]
for bs in (1, 16):
    t = time.time(); r = bits_per_byte(m, val, 0, seq_len=128, max_tokens=8000, batch_size=bs); dt = time.time() - t
    print(f"bpb batch_size={bs}: {r.tokens / dt:,.0f} tok/s, bpb {r.bpb:.4f}")
