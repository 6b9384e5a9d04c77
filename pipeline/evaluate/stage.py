"""Stage entry point ``run_evaluate``: every trained model on every source and task.

For each model (an artifact dir with ``hf/``, in pipeline order: pretrain, then the
continual phases) it computes

* ``bpb.<label>.<source>``: bits per byte on the source's val split (``bpb.py``);
* ``delta_bpb.<label>.<source>``: change against the previous model (positive = worse);
* ``forgetting.<source>``: last model's BPB minus the best earlier BPB on that source
  (positive = the continual phases forgot some of it);
* ``acc.<label>.<task>`` / ``acc_norm.<label>.<task>`` for multiple-choice tasks.

Outputs under ``ctx.out_dir``: ``bpb.json`` (all numbers), ``tasks/<label>.<task>.jsonl``
(per-item predictions), ``tables/bpb.json``, ``tables/tasks.json``, ``plots/bpb.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.evaluate.bpb import bits_per_byte
from pipeline.evaluate.config import EvaluateConfig
from pipeline.evaluate.tasks import evaluate_items, load_task
from pipeline.stage import StageContext

log = logging.getLogger("forgeflow")


def _same_vocab(hf_dir: Path, tok_dir: Path) -> bool:
    from tokenizers import Tokenizer

    a = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    b = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    return a.get_vocab(with_added_tokens=True) == b.get_vocab(with_added_tokens=True)


def _load(hf_dir: Path, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                 attn_implementation="sdpa").to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    return model, tok


def max_positions(model) -> int:
    c = model.config
    return int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions"))


def forgetting(bpb: dict[str, dict[str, float]]) -> dict[str, float]:
    """``delta_bpb.<label>.<source>`` for consecutive models and ``forgetting.<source>``
    (last minus best earlier), from ``{label: {source: bpb}}`` in pipeline order."""
    labels = list(bpb)
    out = {}
    for prev, cur in zip(labels, labels[1:]):
        for src in bpb[cur]:
            if src in bpb[prev]:
                out[f"delta_bpb.{cur}.{src}"] = bpb[cur][src] - bpb[prev][src]
    if len(labels) > 1:
        last = labels[-1]
        for src, v in bpb[last].items():
            earlier = [bpb[lab][src] for lab in labels[:-1] if src in bpb[lab]]
            if earlier:
                out[f"forgetting.{src}"] = v - min(earlier)
    return out


def _plot(ctx: StageContext, bpb: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sources = sorted({s for v in bpb.values() for s in v})
    labels = list(bpb)
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(sources) * max(1, len(labels)) / 2), 3.5))
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(sources))
    for i, lab in enumerate(labels):
        ax.bar(x + i * width, [bpb[lab].get(s, np.nan) for s in sources], width, label=lab)
    ax.set_xticks(x + width * (len(labels) - 1) / 2, sources)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("held-out bits per byte per source")
    ax.legend(fontsize=7)
    ctx.figure(fig, "bpb.png")


def run_evaluate(cfg: EvaluateConfig, models: dict[str, Path], shards_dir: Path,
                 ctx: StageContext) -> dict:
    """Evaluate ``models`` (label -> artifact dir with ``hf/``, in pipeline order)."""
    from pipeline.tokenize.reader import open_shards
    from pipeline.tokenize.tokenizer import resolve_tokenizer_dir

    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    shards_dir = Path(shards_dir)
    shards = open_shards(shards_dir) if cfg.bpb else {}
    tok_dir = resolve_tokenizer_dir(shards_dir)
    tasks = {t.name: (t, load_task(t)) for t in cfg.tasks}
    metrics: dict[str, float] = {}
    for name, (_, data) in tasks.items():
        metrics[f"items.{name}"] = len(data.items)
        metrics[f"bad_records.{name}"] = len(data.bad)
        if data.bad:
            ctx.note(f"- {name}: skipped {len(data.bad)} bad records, e.g. `{data.bad[0]}`")

    bpb: dict[str, dict[str, float]] = {}
    bpb_rows, task_rows, details = [], [], {}
    progress = ctx.progress(total=len(models), unit="models", desc=f"{ctx.name} evaluate")
    for label, art in models.items():
        hf_dir = Path(art) / "hf"
        if not hf_dir.is_dir():
            raise FileNotFoundError(f"model {label!r}: {hf_dir} does not exist")
        model, tok = _load(hf_dir, device)
        eos_id = tok.eos_token_id
        seq_len = min(cfg.seq_len or max_positions(model), max_positions(model))
        if cfg.bpb:
            if not _same_vocab(hf_dir, tok_dir):
                ctx.note(f"- {label}: tokenizer differs from the shards' tokenizer; BPB skipped")
                log.warning("%s: tokenizer of %s differs from %s; BPB skipped", ctx.name,
                            hf_dir, tok_dir)
            else:
                bpb[label] = {}
                for src in sorted(shards):
                    val = shards[src]["val"]
                    if len(val) == 0:
                        continue
                    r = bits_per_byte(model, val, eos_id, seq_len, cfg.stride,
                                      cfg.max_tokens_per_source, cfg.batch_size, device)
                    bpb[label][src] = r.bpb
                    metrics[f"bpb.{label}.{src}"] = r.bpb
                    details[f"{label}.{src}"] = {"bpb": r.bpb, "nll_per_token": r.nll_per_token,
                                                 "tokens": r.tokens, "bytes": r.bytes,
                                                 "documents": r.documents}
                    bpb_rows.append({"model": label, "source": src, "bpb": round(r.bpb, 4),
                                     "nll_per_token": round(r.nll_per_token, 4),
                                     "tokens": r.tokens, "bytes": r.bytes,
                                     "documents": r.documents})
        for name, (tcfg, data) in tasks.items():
            summary, rows = evaluate_items(model, tok, data.items, eos_id, seq_len,
                                           cfg.batch_size, device)
            out = ctx.out_dir / "tasks" / f"{label}.{name}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))
            metrics[f"acc.{label}.{name}"] = summary["acc"]
            metrics[f"acc_norm.{label}.{name}"] = summary["acc_norm"]
            task_rows.append({"model": label, "task": name, "items": summary["items"],
                              "acc": round(summary["acc"], 4),
                              "acc_norm": round(summary["acc_norm"], 4)})
        del model
        progress.update(1, model=label)
    progress.close()

    metrics.update(forgetting(bpb))
    (ctx.out_dir / "bpb.json").write_text(json.dumps(
        {"bpb": bpb, "details": details,
         "forgetting": {k: v for k, v in metrics.items()
                        if k.startswith(("forgetting.", "delta_bpb."))}}, indent=1))
    if bpb_rows:
        ctx.table(bpb_rows, "bpb.json")
        _plot(ctx, bpb)
    if task_rows:
        ctx.table(task_rows, "tasks.json")
    ctx.metrics(metrics)
    for label, per_src in bpb.items():
        ctx.note(f"**{label}** BPB: " + ", ".join(f"{s} {v:.3f}" for s, v in per_src.items()))
    for k in sorted(k for k in metrics if k.startswith("forgetting.")):
        ctx.note(f"- {k}: {metrics[k]:+.3f} bits/byte")
    for row in task_rows:
        ctx.note(f"- {row['model']} {row['task']}: acc {row['acc']:.3f}, "
                 f"acc_norm {row['acc_norm']:.3f} ({row['items']} items)")
    return metrics
