"""The replay reproduction (configs/papers/replay.yaml) shrunk to the test shards, without
Prefect or Ray: for a loaded machine where the full pipeline cannot start.

Pretrain a tiny Llama on English (shakespeare 0.75, web 0.25), then three branches on
German (a new language, where Ibrahim et al. 2024 recommend ~25% replay) with 0%, 5% and
25% replay of the pretraining mixture; print BPB change against pretraining per source
and whether forgetting on the old sources decreases with replay. Nothing is tuned.

    PYTHONPATH=. python bench/replay_small.py [--pretrain-steps 200 --phase-steps 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--phase-steps", type=int, default=120)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from pipeline.evaluate.config import EvaluateConfig
    from pipeline.evaluate.stage import run_evaluate
    from pipeline.stage import StageContext
    from pipeline.train.config import ModelConfig, PhaseConfig, ScheduleConfig, TrainConfig
    from pipeline.train.stage import read_lineage, run_continual, run_pretrain
    from test_train_data import make_shards

    out = Path(args.out or tempfile.mkdtemp(prefix="forgeflow-replay-"))
    shards = make_shards(out / "tok")
    cfg = TrainConfig(model=ModelConfig(d_model=64, n_layers=2, n_heads=4, seq_len=64),
                      steps=args.pretrain_steps, batch_size=8, seq_len=64, num_workers=0,
                      eval_every=10, checkpoint_every=0, log_every=50, val_tokens_per_source=1024,
                      mixture={"shakespeare": 3, "web": 1},
                      schedule=ScheduleConfig(kind="cosine", max_lr=3e-3, warmup_steps=10))
    t0 = time.time()

    def ctx(name):
        return StageContext.for_testing(out / name, name=name, show_progress=False)

    pre = ctx("pretrain")
    run_pretrain(cfg, shards, pre)
    models, parents = {"pretrain": pre.out_dir}, {}
    for r in (0.0, 0.05, 0.25):
        name = f"replay_{int(r * 100)}"
        phase = PhaseConfig(name=name, init_from="pretrain", steps=args.phase_steps,
                            mixture={"german": 1.0}, replay=r,
                            schedule=ScheduleConfig(kind="rewarm_cosine", max_lr=3e-3,
                                                    warmup_fraction=0.05, min_lr=3e-4))
        c = ctx(name)
        run_continual(phase, cfg, shards, pre.out_dir, c)
        models[f"continual.{name}"], parents[f"continual.{name}"] = c.out_dir, "pretrain"
        print(f"{name}: realised replay {read_lineage(c.out_dir)['replay_fraction_realised']:.4f}",
              flush=True)
    ev = ctx("evaluate")
    m = run_evaluate(EvaluateConfig(max_tokens_per_source=20000), models, shards, ev,
                     parents=parents)
    print(f"\nBPB change against pretraining (pretrain: " + ", ".join(
        f"{s} {m[f'bpb.pretrain.{s}']:.3f}" for s in ("shakespeare", "web", "german")) + ")")
    print(f"{'branch':<12} {'shakespeare':>12} {'web':>8} {'german':>8} {'old mean':>9}")
    old = []
    for lab in parents:
        v = {s: m[f"vs_pretrain.{lab}.{s}"] for s in ("shakespeare", "web", "german")}
        old.append((v["shakespeare"] + v["web"]) / 2)
        print(f"{lab.split('.')[1]:<12} {v['shakespeare']:>+12.4f} {v['web']:>+8.4f} "
              f"{v['german']:>+8.4f} {old[-1]:>+9.4f}")
    ok = all(a >= b for a, b in zip(old, old[1:]))
    print(f"\n{'reproduced' if ok else 'NOT reproduced'}: forgetting on old data decreases "
          f"with replay ({', '.join(f'{x:+.4f}' for x in old)}); {time.time() - t0:.0f}s; "
          f"plots in {ev.out_dir / 'plots'}")
    (out / "findings.json").write_text(json.dumps({k: v for k, v in m.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
